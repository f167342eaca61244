"""Drives warden with the official OpenAI Python SDK: the model list, one model, a
plain and a streamed chat, forced tool calls (required and named) at the default
temperature, twenty of each, every one well formed, and a text completion, plain and
streamed.

Usage: openai_chat.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import json
import sys

from openai import OpenAI

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]

    models = [m.id for m in client.models.list()]
    assert "auto" in models, models
    assert client.models.retrieve("auto").id == "auto"

    plain = client.chat.completions.create(model="auto", messages=question, temperature=0, seed=7)
    answer = plain.choices[0].message.content
    assert "Paris" in answer, answer
    assert plain.usage.completion_tokens > 0, plain.usage
    assert plain.choices[0].finish_reason == "stop", plain.choices[0].finish_reason

    stream = client.chat.completions.create(
        model="auto",
        messages=question,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    streamed = "".join(pieces)
    assert streamed == answer, (streamed, answer)
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage

    try:
        client.chat.completions.create(model="no-such-model", messages=question)
        raise AssertionError("an unknown model was accepted")
    except Exception as error:  # the SDK raises NotFoundError
        assert getattr(error, "status_code", None) == 404, error

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ["required", {"type": "function", "function": {"name": "get_weather"}}]:
        for _ in range(20):
            reply = client.chat.completions.create(
                model="auto", messages=weather, tools=[WEATHER], tool_choice=choice, max_tokens=40
            )
            assert reply.choices[0].finish_reason == "tool_calls", reply
            call = reply.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather", call
            arguments = json.loads(call.function.arguments)
            assert list(arguments) == ["city"] and isinstance(arguments["city"], str), arguments

    counting = "1, 2, 3, 4, 5,"
    completion = client.completions.create(
        model="auto", prompt=counting, max_tokens=4, temperature=0, logprobs=1
    )
    text = completion.choices[0].text
    assert text.strip().startswith("6"), text
    assert completion.choices[0].logprobs.tokens, completion
    assert "".join(completion.choices[0].logprobs.tokens) == text, completion
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="auto", prompt=counting, max_tokens=4, temperature=0, stream=True
        )
        if chunk.choices
    )
    assert streamed == text, (streamed, text)

    # The SDK asks for base64 unless told otherwise, and decodes it.
    for encoding in [None, "float"]:
        options = {"encoding_format": encoding} if encoding else {}
        vectors = client.embeddings.create(
            model="smollm2-135m-instruct", input=["a cat", "a dog"], **options
        )
        assert [item.index for item in vectors.data] == [0, 1], vectors
        for item in vectors.data:
            assert len(item.embedding) == 576, len(item.embedding)
            norm = sum(value * value for value in item.embedding) ** 0.5
            assert abs(norm - 1) < 1e-3, norm
        assert vectors.usage.prompt_tokens > 0, vectors.usage

    print("ok", answer)


if __name__ == "__main__":
    main()
