"""Bounded load on a block-diffusion server: N requests at concurrency C, then the server must be idle again.

    python examples/load_test.py                          # the embedded default with --focus: 512 requests at 64, 2 rounds
    python examples/load_test.py --arm stock              # stock LowConfidence at the same threshold instead
    python examples/load_test.py --base-url http://127.0.0.1:30000 --server-pid PID   # a server already running

The requests mix task-suite prompts in the model's chat format: single prompts, prompts repeated verbatim, and
lookup tables shared by several requests that ask for different keys (prefixes the radix cache can share);
`max_new_tokens` from 8 to 256, some with `ignore_eos`, one in four streamed. A round passes when every request
returns HTTP 200 with output and, afterwards, `GET /v1/loads` reports no running or waiting request and as many KV
tokens in use as before the round (the radix cache's evictable tokens are not "in use"). The RSS of the server's
process tree (psutil) is printed before the first round and after each one. Exit status 1 if a round fails.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import psutil
import requests

from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT

OUTPUT_LENGTHS = (8, 16, 32, 64, 128, 256)
SHARED_TABLE_QUERIES = 4  # requests per shared lookup table
REQUEST_TIMEOUT_S = 600.0


class Outcome(NamedTuple):
    ok: bool
    error: Optional[str]  # why the request failed; None if ok
    latency_s: float
    output_tokens: int


class ServerLoad(NamedTuple):
    running: int  # requests being decoded (for dLLM servers, counted by the plugin's managers_scheduler patch)
    waiting: int  # requests queued beyond --max-running-requests
    used_tokens: int  # KV slots held by requests (capacity - free - evictable radix cache)


class RoundReport(NamedTuple):
    requests: int
    failures: list[str]  # one line per failed request
    elapsed_s: float
    output_tokens: int
    latencies_s: list[float]
    load_before: ServerLoad
    load_after: ServerLoad
    rss_mib_after: Optional[float]  # None without a server pid

    @property
    def back_to_idle(self) -> bool:
        after, before = self.load_after, self.load_before
        return after.running == 0 and after.waiting == 0 and after.used_tokens == before.used_tokens

    @property
    def passed(self) -> bool:
        return not self.failures and self.back_to_idle


def build_payloads(n: int, seed: int = 0, output_lengths: Sequence[int] = OUTPUT_LENGTHS) -> list[dict]:
    """`n` /generate payloads, deterministic in `seed`: mixed prompts, shared prefixes, `max_new_tokens` drawn from
    `output_lengths`, a quarter with `ignore_eos`, one in four streamed."""
    rng = random.Random(f"load-test:{seed}")
    problems = iter(tasks.iter_problems("heldout", seed=f"load-test:{seed}"))
    prompts: list[str] = []
    while len(prompts) < n:
        kind = rng.random()
        if kind < 0.2 and prompts:
            prompts.append(rng.choice(prompts))  # the same prompt again: the whole prompt is cached
        elif kind < 0.4:
            prompts.extend(_shared_table_prompts(rng))
        else:
            prompts.append(tasks.chat_prompt(next(problems).prompt))
    return [_payload(text, rng.choice(output_lengths), rng.random() < 0.25, streamed=index % 4 == 3)
            for index, text in enumerate(prompts[:n])]


def _shared_table_prompts(rng: random.Random) -> list[str]:
    """Lookup prompts over one table with different queries: a prefix of several blocks in common."""
    table = [[item, rng.randint(10, 99)] for item in rng.sample(tasks.ITEMS, 7)]
    keys = [item for item, _ in table]
    return [tasks.chat_prompt(tasks.make_problem("lookup", [table, rng.sample(keys, 4)]).prompt)
            for _ in range(SHARED_TABLE_QUERIES)]


def _payload(text: str, max_new_tokens: int, ignore_eos: bool, streamed: bool) -> dict:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": ignore_eos}
    return {"text": text, "sampling_params": sampling, "stream": streamed}


def send(base_url: str, payload: dict, timeout: float = REQUEST_TIMEOUT_S) -> Outcome:
    """POST one payload to /generate (streamed or not) and judge the reply; never raises for HTTP or I/O errors."""
    start = time.monotonic()
    try:
        with requests.post(f"{base_url}/generate", json=payload, timeout=timeout,
                           stream=payload.get("stream", False)) as resp:
            if resp.status_code != 200:
                return Outcome(False, f"HTTP {resp.status_code}: {resp.text[:200]}", time.monotonic() - start, 0)
            final = _last_chunk(resp) if payload.get("stream") else resp.json()
    except (requests.RequestException, ValueError) as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}", time.monotonic() - start, 0)
    latency = time.monotonic() - start
    error = _reply_error(final, payload)
    return Outcome(error is None, error, latency, len(final.get("output_ids") or []) if final else 0)


def _last_chunk(resp: requests.Response) -> Optional[dict]:
    final = None
    for line in resp.iter_lines():
        if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
            final = json.loads(line[5:])
    return final


def _reply_error(reply: Optional[dict], payload: dict) -> Optional[str]:
    """Why a 200 reply is still a failure (no output, aborted, wrong length), or None."""
    if not reply:
        return "empty reply"
    meta = reply.get("meta_info", {})
    finish = (meta.get("finish_reason") or {}).get("type")
    tokens = meta.get("completion_tokens", 0)
    limit = payload["sampling_params"]["max_new_tokens"]
    if finish not in ("stop", "length"):
        return f"finish_reason {meta.get('finish_reason')!r}"
    if tokens == 0 or tokens > limit or (payload["sampling_params"]["ignore_eos"] and tokens != limit):
        return f"{tokens} completion tokens for max_new_tokens={limit}"
    return None


def server_load(base_url: str) -> ServerLoad:
    """Running/waiting requests and KV tokens in use, from `GET /v1/loads` (summed over DP ranks)."""
    resp = requests.get(f"{base_url}/v1/loads", params={"include": "core"}, timeout=30)
    resp.raise_for_status()
    loads = resp.json()["loads"]
    return ServerLoad(sum(x["num_running_reqs"] for x in loads), sum(x["num_waiting_reqs"] for x in loads),
                      sum(x["num_used_tokens"] for x in loads))


def wait_until_idle(base_url: str, timeout: float = 60.0, used_tokens: Optional[int] = None) -> ServerLoad:
    """Poll `/v1/loads` until no request runs or waits (and, if given, `used_tokens` KV tokens are in use).

    Returns the last load seen, which is still busy if `timeout` ran out: callers compare it.
    """
    deadline = time.monotonic() + timeout
    while True:
        load = server_load(base_url)
        idle = load.running == 0 and load.waiting == 0 and used_tokens in (None, load.used_tokens)
        if idle or time.monotonic() > deadline:
            return load
        time.sleep(0.2)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of process `pid` and all its descendants, in MiB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def run_round(base_url: str, payloads: Sequence[dict], concurrency: int, server_pid: Optional[int] = None,
              idle_timeout: float = 60.0) -> RoundReport:
    """Send `payloads` with up to `concurrency` in flight, wait for the server to settle, and report."""
    before = wait_until_idle(base_url, idle_timeout)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = list(pool.map(lambda p: send(base_url, p), payloads))
    elapsed = time.monotonic() - start
    after = wait_until_idle(base_url, idle_timeout, used_tokens=before.used_tokens)
    failures = [f"request {i}: {o.error}" for i, o in enumerate(outcomes) if not o.ok]
    return RoundReport(len(payloads), failures, elapsed, sum(o.output_tokens for o in outcomes),
                       [o.latency_s for o in outcomes], before, after,
                       tree_rss_mib(server_pid) if server_pid else None)


def format_round(index: int, report: RoundReport) -> str:
    lat = sorted(report.latencies_s)
    p50, p95 = statistics.median(lat), lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    lines = [f"round {index}: {report.requests - len(report.failures)}/{report.requests} ok in "
             f"{report.elapsed_s:.1f}s, {report.output_tokens / report.elapsed_s:.1f} output tok/s, "
             f"latency p50 {p50:.2f}s p95 {p95:.2f}s",
             f"  server before: {report.load_before._asdict()}  after: {report.load_after._asdict()}  "
             f"{'back to idle' if report.back_to_idle else 'NOT back to idle'}"]
    if report.rss_mib_after is not None:
        lines.append(f"  server RSS after: {report.rss_mib_after:.0f} MiB")
    lines += [f"  FAILED {line}" for line in report.failures[:10]]
    return "\n".join(lines)


def run_load_test(base_url: str, *, requests_per_round: int, concurrency: int, rounds: int = 2, seed: int = 0,
                  server_pid: Optional[int] = None) -> list[RoundReport]:
    """`rounds` rounds of the same payloads; prints the RSS before the first and a summary after each round."""
    payloads = build_payloads(requests_per_round, seed)
    if server_pid:
        print(f"server RSS before: {tree_rss_mib(server_pid):.0f} MiB")
    reports = []
    for index in range(1, rounds + 1):
        reports.append(run_round(base_url, payloads, concurrency, server_pid))
        print(format_round(index, reports[-1]), flush=True)
    return reports


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="an already running server (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --base-url: the server's PID, for the RSS report")
    parser.add_argument("--model-path", default=str(EMBEDDED_DEFAULT))
    parser.add_argument("--arm", choices=("focus", "stock"), default="focus")
    parser.add_argument("--requests", type=int, default=512, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-running-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="server log file (when the script starts the server)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    run = dict(requests_per_round=args.requests, concurrency=args.concurrency, rounds=args.rounds, seed=args.seed)
    if args.base_url:
        reports = run_load_test(args.base_url, server_pid=args.server_pid, **run)
    else:
        from sglang_focus.bench.arms import DEFAULT_ALPHA, DEFAULT_THRESHOLD, arm_server_args, arm_server_env, config_dir
        from sglang_focus.bench.local_server import LocalServer

        server_args = arm_server_args(args.arm, threshold=DEFAULT_THRESHOLD, alpha=DEFAULT_ALPHA,
                                      config_dir=config_dir(), max_running=args.max_running_requests)
        dtype = server_args[server_args.index("--dtype") + 1]
        print(f"starting {args.arm} server on {args.model_path} (--dtype {dtype}) ...", flush=True)
        with LocalServer(args.model_path, server_args, env=arm_server_env(args.arm), log_path=args.log) as server:
            reports = run_load_test(server.base_url, server_pid=server.process.pid, **run)
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
