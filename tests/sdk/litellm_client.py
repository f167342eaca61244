"""LiteLLM as a client, unchanged, against warden (`openai/auto`): a plain and a streamed
completion, forced tool calls (required and named) and a JSON-schema answer, twenty
times each at the default temperature, every answer well formed.

Usage: litellm_client.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import json
import os
import sys

# LiteLLM would otherwise fetch its price list from the internet on import; the copy it
# ships is enough here.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402 (after the setting it reads on import)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

PLACE = {
    "type": "json_schema",
    "json_schema": {
        "name": "place",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    common = {"model": "openai/auto", "api_base": f"{base_url}/v1", "api_key": api_key, "num_retries": 0}
    question = [{"role": "user", "content": "What is the capital of France?"}]

    plain = litellm.completion(messages=question, temperature=0, **common)
    answer = plain.choices[0].message.content
    assert "Paris" in answer, answer
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in litellm.completion(messages=question, temperature=0, stream=True, **common)
        if chunk.choices
    ]
    assert "".join(pieces) == answer, (pieces, answer)

    weather = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ["required", {"type": "function", "function": {"name": "get_weather"}}]:
        for _ in range(20):
            reply = litellm.completion(
                messages=weather, tools=[WEATHER], tool_choice=choice, max_tokens=40, **common
            )
            call = reply.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather", call
            arguments = json.loads(call.function.arguments)
            assert list(arguments) == ["city"] and isinstance(arguments["city"], str), arguments

    where = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    for _ in range(20):
        reply = litellm.completion(messages=where, response_format=PLACE, max_tokens=60, **common)
        place = json.loads(reply.choices[0].message.content)
        assert list(place) == ["city"] and isinstance(place["city"], str), place


if __name__ == "__main__":
    main()
