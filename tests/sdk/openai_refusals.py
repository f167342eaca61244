"""One chat request through the official OpenAI Python SDK, with its default retry
rules (two retries), counting every HTTP attempt it makes.

Usage: openai_refusals.py BASE_URL API_KEY RUN_ID. Prints `STATUS CODE ATTEMPTS` for
the refusal the SDK finally raised; exits non-zero if the request was not refused.
"""

import sys

from openai import APIStatusError, DefaultHttpxClient, OpenAI


def main() -> None:
    base_url, api_key, run_id = sys.argv[1], sys.argv[2], sys.argv[3]
    attempts = 0

    def count(_request: object) -> None:
        nonlocal attempts
        attempts += 1

    client = OpenAI(
        base_url=f"{base_url}/v1",
        api_key=api_key,
        max_retries=2,
        http_client=DefaultHttpxClient(event_hooks={"request": [count]}),
    )
    try:
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=2,
            metadata={"run_id": run_id},
        )
    except APIStatusError as error:
        print(error.status_code, error.code, attempts)
        return
    sys.exit("the request was answered, not refused")


if __name__ == "__main__":
    main()
