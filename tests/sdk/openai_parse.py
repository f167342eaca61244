"""Structured output through the official OpenAI Python SDK: `.parse()` with a Pydantic
model, whose strict JSON schema the local model's grammar holds its answer to, at the
default temperature, twenty times.

Usage: openai_parse.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import sys

from openai import OpenAI
from pydantic import BaseModel


class Place(BaseModel):
    city: str


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    for _ in range(20):
        completion = client.chat.completions.parse(
            model="auto",
            messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
            response_format=Place,
            max_tokens=60,
        )
        place = completion.choices[0].message.parsed
        assert isinstance(place, Place), completion


if __name__ == "__main__":
    main()
