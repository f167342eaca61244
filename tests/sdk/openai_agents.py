"""openai-agents, unchanged, against warden alone: an agent with one function tool runs
to a final answer through the Responses API, twenty times at the default temperature.
The first turn must call the tool (`tool_choice: required`); the SDK then lets the
model answer from the tool's output.

Usage: openai_agents.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import asyncio
import sys

from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

CITIES = []


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    CITIES.append(city)
    return f"It is 18 degrees and sunny in {city}."


async def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    set_default_openai_client(AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0))
    # Traces would be sent to OpenAI, which warden's callers need not reach.
    set_tracing_disabled(True)
    agent = Agent(
        name="Weather",
        instructions="You answer questions about the weather. Use the get_weather tool.",
        model="auto",
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required"),
    )
    for run in range(20):
        before = len(CITIES)
        result = await Runner.run(agent, "What is the weather in Paris?", max_turns=6)
        assert len(CITIES) > before, f"run {run}: the tool was never called"
        assert isinstance(result.final_output, str) and result.final_output.strip(), result
    print(len(CITIES))


if __name__ == "__main__":
    asyncio.run(main())
