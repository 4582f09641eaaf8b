"""FOCUS in-process with `sgl.Engine` (SGLang's canonical --dllm-algorithm form, built by `engine_kwargs`).

    SGLANG_USE_CPU_ENGINE=1 python examples/offline_engine.py --model-path M   # on a CPU add the env var
"""

from __future__ import annotations

import argparse

import sglang as sgl

from sglang_focus import engine_kwargs


def main(model_path: str) -> None:
    engine = sgl.Engine(model_path=model_path, max_total_tokens=8192, max_running_requests=8,
                        **engine_kwargs(alpha=1.5, threshold=0.8))
    try:
        outputs = engine.generate(["Hello there", "Count from one to ten:"], {"max_new_tokens": 32})
        for out in outputs:
            print(repr(out["text"]), out["meta_info"]["focus_stats"])
    finally:
        engine.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    main(parser.parse_args().model_path)
