"""The Responses API through the official OpenAI Python SDK: a plain and a streamed
response, forced function calls (required and named, plain and streamed) at the
default temperature twenty times each, a call's output sent back through
`previous_response_id`, `.parse()` with a Pydantic model, a stored response read back
and deleted, and a refusal naming the Responses field at fault.

Usage: openai_responses.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import json
import sys

import openai
from openai import OpenAI
from pydantic import BaseModel

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "strict": True,
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


class Place(BaseModel):
    city: str


def assert_weather_call(item) -> None:
    assert item.type == "function_call", item
    assert item.name == "get_weather", item
    arguments = json.loads(item.arguments)
    assert list(arguments) == ["city"] and isinstance(arguments["city"], str), arguments


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    question = "What is the capital of France?"

    plain = client.responses.create(
        model="auto", instructions="Answer in one sentence.", input=question, temperature=0
    )
    assert plain.status == "completed", plain
    assert "Paris" in plain.output_text, plain.output_text
    assert plain.usage.output_tokens > 0, plain.usage

    deltas = []
    with client.responses.stream(
        model="auto", instructions="Answer in one sentence.", input=question, temperature=0
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        streamed = stream.get_final_response()
    assert "".join(deltas) == streamed.output_text == plain.output_text, (deltas, streamed)

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ["required", {"type": "function", "name": "get_weather"}]:
        for _ in range(20):
            reply = client.responses.create(
                model="auto", input=weather, tools=[WEATHER], tool_choice=choice,
                max_output_tokens=40,
            )
            calls = [item for item in reply.output if item.type == "function_call"]
            assert len(calls) == 1, reply.output
            assert_weather_call(calls[0])
        for _ in range(20):
            with client.responses.stream(
                model="auto", input=weather, tools=[WEATHER], tool_choice=choice,
                max_output_tokens=40,
            ) as stream:
                done = [e for e in stream if e.type == "response.function_call_arguments.done"]
                final = stream.get_final_response()
            assert len(done) == 1, done
            assert_weather_call(final.output[0])
            assert final.output[0].arguments == done[0].arguments, (final, done)

    # The agent runs the call and sends its output back on the stored response.
    followed = client.responses.create(
        model="auto",
        previous_response_id=reply.id,
        input=[{
            "type": "function_call_output",
            "call_id": calls[0].call_id,
            "output": json.dumps({"temperature_c": 18, "sky": "clear"}),
        }],
        tools=[WEATHER],
        max_output_tokens=60,
    )
    assert followed.status in ("completed", "incomplete"), followed
    assert followed.previous_response_id == reply.id, followed
    assert followed.output_text or any(i.type == "function_call" for i in followed.output), followed

    for _ in range(20):
        parsed = client.responses.parse(
            model="auto",
            input=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
            text_format=Place,
            max_output_tokens=60,
        )
        assert isinstance(parsed.output_parsed, Place), parsed

    stored = client.responses.retrieve(plain.id)
    assert stored.id == plain.id and stored.output_text == plain.output_text, stored
    client.responses.delete(plain.id)
    try:
        client.responses.retrieve(plain.id)
        raise AssertionError("a deleted response was returned")
    except openai.NotFoundError:
        pass

    try:
        client.responses.create(model="auto", input=question, tools=[{"type": "web_search"}])
        raise AssertionError("a hosted tool was accepted")
    except openai.BadRequestError as error:
        assert error.body["param"] == "tools[0].type", error.body


if __name__ == "__main__":
    main()
