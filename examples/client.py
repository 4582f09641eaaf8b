"""Query a running `--focus` server: /generate with per-request FOCUS options, then the OpenAI chat API.

    python -m sglang.launch_server --model-path M --focus --port 30000
    python examples/client.py --base-url http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse

import openai
import requests


def generate_with_focus_options(base_url: str) -> list[dict]:
    """Two prompts in one batch: the first with the server's alpha, the second with eviction turned off."""
    results = []
    for options in ({}, {"enabled": False}):
        resp = requests.post(f"{base_url}/generate", timeout=300, json={
            "text": "Count from one to ten: 1 2 3",
            "sampling_params": {"max_new_tokens": 32, "custom_params": {"focus": options}},
        })
        resp.raise_for_status()
        results.append(resp.json())
    return results


def chat(base_url: str, question: str) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(model="default", max_tokens=32,
                                           messages=[{"role": "user", "content": question}])
    return reply.choices[0].message.content


def main(base_url: str) -> None:
    for label, result in zip(("server alpha", "eviction off"), generate_with_focus_options(base_url)):
        stats = result["meta_info"]["focus_stats"]
        print(f"[{label}] {result['text']!r}\n    forwards={stats['forwards']} evicted={stats['evicted']} "
              f"masked_kept_ratio={stats['masked_kept_ratio']:.2f}")
    print(f"[chat] {chat(base_url, 'What is the capital of France?')!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:30000")
    main(parser.parse_args().base_url)
