"""LangChain's ChatOpenAI, unchanged, against warden: tools bound and forced (named and
`any`), and `with_structured_output` in each of its methods (function calling, JSON
schema, JSON mode), twenty times each at the default temperature, every answer well
formed.

Usage: langchain_chat.py BASE_URL API_KEY. Exits non-zero (with the reason) on any
mismatch, so the Rust test that runs it fails.
"""

import sys

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is 18 degrees and sunny in {city}."


class Place(BaseModel):
    """Where something is."""

    city: str


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    llm = ChatOpenAI(model="auto", base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    for choice in ["get_weather", "any"]:
        bound = llm.bind_tools([get_weather], tool_choice=choice)
        for _ in range(20):
            message = bound.invoke("What is the weather in Paris?")
            assert len(message.tool_calls) == 1, message
            call = message.tool_calls[0]
            assert call["name"] == "get_weather", call
            assert list(call["args"]) == ["city"] and isinstance(call["args"]["city"], str), call

    question = "Where is the Eiffel Tower? Reply in JSON with the key `city`."
    for method in ["function_calling", "json_schema", "json_mode"]:
        structured = llm.with_structured_output(Place, method=method)
        for _ in range(20):
            place = structured.invoke(question)
            assert isinstance(place, Place), (method, place)


if __name__ == "__main__":
    main()
