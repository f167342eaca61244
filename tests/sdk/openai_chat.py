"""Drives warden with the official OpenAI Python SDK: the model list, one model, a
plain and a streamed chat.

Usage: openai_chat.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import sys

from openai import OpenAI


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

    print("ok", answer)


if __name__ == "__main__":
    main()
