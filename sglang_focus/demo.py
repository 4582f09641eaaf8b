"""`make demo`: serve a block-diffusion model with `--focus` and ask it a few questions.

Starts `python -m sglang.launch_server --model-path M --focus` on 127.0.0.1, sends one SGLang frontend program
(`sgl.gen()`) and one OpenAI chat request, prints the answers and stops the server. Without --model-path it builds
the tiny random-weight SDAR checkpoint once (under .cache/), so the answers are real server output, not meaningful text.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sglang_focus.local_server import LocalServer

DEFAULT_MODEL_DIR = Path(".cache/demo-models/tiny-sdar")
QUESTIONS = ("What is the capital of France?", "Count from one to ten.")


def ensure_demo_model(path: Path) -> Path:
    if not (path / "model.safetensors").exists():
        from sglang_focus.tiny_models import build_tiny_sdar

        print(f"Building the tiny SDAR checkpoint in {path} ...", flush=True)
        build_tiny_sdar(path)
    return path


def ask_with_frontend_program(base_url: str, question: str) -> str:
    import sglang as sgl

    @sgl.function
    def answer(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=48))

    return answer.run(question=question, backend=sgl.RuntimeEndpoint(base_url))["answer"]


def ask_with_openai_chat(base_url: str, question: str) -> str:
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(model="default", max_tokens=48,
                                           messages=[{"role": "user", "content": question}])
    return reply.choices[0].message.content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path(".cache/demo-server.log"))
    args = parser.parse_args()
    model = args.model_path or ensure_demo_model(DEFAULT_MODEL_DIR)
    args.log.parent.mkdir(parents=True, exist_ok=True)

    print(f"Starting: python -m sglang.launch_server --model-path {model} --focus  (log: {args.log})", flush=True)
    started = time.monotonic()
    with LocalServer(model, ["--focus"], log_path=args.log) as server:
        print(f"Server ready at {server.base_url} after {time.monotonic() - started:.0f}s\n", flush=True)
        for label, ask, question in (("sgl.gen() program", ask_with_frontend_program, QUESTIONS[0]),
                                     ("OpenAI chat API", ask_with_openai_chat, QUESTIONS[1])):
            print(f"[{label}] Q: {question}\n[{label}] A: {ask(server.base_url, question)!r}\n", flush=True)
    print("Server stopped.")


if __name__ == "__main__":
    main()
