"""Pydantic AI, unchanged, against warden: an agent whose `output_type` is a Pydantic
model returns it, twenty times at the default temperature.

Usage: pydantic_ai_output.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import sys

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider


class Place(BaseModel):
    city: str


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    provider = OpenAIProvider(base_url=f"{base_url}/v1", api_key=api_key)
    agent = Agent(OpenAIChatModel("auto", provider=provider), output_type=Place, retries=0)
    for _ in range(20):
        result = agent.run_sync("Where is the Eiffel Tower?")
        assert isinstance(result.output, Place), result


if __name__ == "__main__":
    main()
