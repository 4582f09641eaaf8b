"""The eviction audit (`audit_every`) on real servers.

- `audit_every: 1` audits every evicting step: such a step runs the model's own forward over every processing row,
  so FOCUS then decodes token for token what the delayed-cache-only arm (alpha = inf, same options) decodes, on
  both tiny architectures, while reporting what it would have evicted.
- The counters add up per request, and `/metrics` grows by their sum over the requests.
- A server that does not audit reports and exports no audit counts, and one whose audit is never due decodes and
  counts exactly as it (the audit's bookkeeping changes nothing between audited steps).
- On the bundled model the reported counts equal the offline selection replay's (`analysis.selection`) on the same
  trajectory: see `test_audited_counts_equal_the_selection_replay_on_the_same_trajectory`.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import MAX_RUNNING, THRESHOLD, focus_args, start_server  # tests/conftest.py
from prompts import PROMPTS  # tests/e2e/prompts.py
from sglang_focus.analysis import decodability, selection
from sglang_focus.bench.local_server import LocalServer
from sglang_focus.stats import AUDIT_FIELDS
from sglang_focus.training import tasks
from sglang_focus.training.tokenizer import EOS_TOKEN
from sglang_focus.training.train import block_diffusion_generate, load_checkpoint

pytestmark = pytest.mark.e2e

ARCHS = ("sdar", "llada2")
SAMPLING = {"max_new_tokens": 48, "ignore_eos": True}
AUDIT_METRICS = {"steps": "sglang:focus_audited_steps_total",
                 "decodable": "sglang:focus_audit_decodable_tokens_total",
                 "evicted_decodable": "sglang:focus_audit_evicted_decodable_tokens_total"}


def _start_side_by_side(request, servers: list[LocalServer]) -> None:
    request.addfinalizer(lambda: [server.stop() for server in servers])
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        for started in [pool.submit(server.start) for server in servers]:
            started.result()


def _unstarted(tmp_path_factory, model: Path, name: str, args: list[str]) -> LocalServer:
    logs = tmp_path_factory.mktemp(f"server_{name}")
    return LocalServer(model, [*args, "--max-running-requests", str(MAX_RUNNING)], log_path=logs / "server.log")


@pytest.fixture(scope="module", params=ARCHS)
def audited_and_delayed(request, tmp_path_factory) -> tuple[LocalServer, LocalServer]:
    """(FOCUS auditing every evicting step, with metrics on; the delayed-cache-only arm) on a tiny checkpoint, with
    the suite's FOCUS options otherwise (evicting at any batch size, budget reset per block)."""
    arch = request.param
    model = request.getfixturevalue(f"tiny_{arch}")
    servers = [_unstarted(tmp_path_factory, model, f"{arch}_audited",
                          [*focus_args(tmp_path_factory, audit_every=1), "--enable-metrics"]),
               _unstarted(tmp_path_factory, model, f"{arch}_delayed", focus_args(tmp_path_factory, alpha="inf"))]
    _start_side_by_side(request, servers)
    return servers[0], servers[1]


def generate(server: LocalServer, prompts, sampling=SAMPLING) -> list[dict]:
    resp = server.generate({"text": prompts, "sampling_params": sampling})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body if isinstance(body, list) else [body]


def generate_one_by_one(server: LocalServer, prompts, sampling=SAMPLING) -> list[dict]:
    """Each prompt alone, in order: a batch of one request on both servers compared. On the CPU a row's float path
    can change with the batch's row count, and two servers receiving one multi-prompt request may form different
    batches (arrival timing), which flips near-ties; requests sent one at a time are batched alike everywhere."""
    return [generate(server, prompt, sampling)[0] for prompt in prompts]


def audits(items) -> list[dict]:
    return [item["meta_info"]["focus_stats"]["audit"] for item in items]


def test_auditing_every_evicting_step_decodes_as_the_delayed_only_arm(audited_and_delayed):
    """Same output ids, forwards, processed rows and decoded tokens for every prompt (each sent alone, see
    `generate_one_by_one`); the audited server evicted nothing itself but saw steps where FOCUS would have evicted
    tokens it decoded. Prompts repeat, so the second round also decodes over prefixes the first one cached."""
    audited, delayed = audited_and_delayed
    prompts = PROMPTS * 2
    got, expected = generate_one_by_one(audited, prompts), generate_one_by_one(delayed, prompts)
    assert [i["output_ids"] for i in got] == [i["output_ids"] for i in expected]
    for mine, theirs in zip(got, expected):
        stats, reference = mine["meta_info"]["focus_stats"], theirs["meta_info"]["focus_stats"]
        assert stats["evicted"] == 0, "every evicting step was audited: nothing was evicted"
        assert {k: stats[k] for k in reference} == reference
    seen = {field: sum(a[field] for a in audits(got)) for field in AUDIT_FIELDS}
    assert seen["steps"] > 0 and seen["evicted_decodable"] > 0, seen


def check_audit(audit: dict, stats: dict) -> None:
    assert set(audit) == {*AUDIT_FIELDS, "recall"}
    assert 0 <= audit["steps"] <= stats["forwards"]
    assert stats["unmasked"] >= audit["decodable"] >= audit["evicted_decodable"] >= 0
    if audit["decodable"]:
        assert 0.0 <= audit["recall"] <= 1.0
        assert audit["recall"] == pytest.approx(1 - audit["evicted_decodable"] / audit["decodable"])
    else:
        assert audit["recall"] is None


def scrape(server: LocalServer) -> dict[str, float]:
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    return {field: sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+]+)$", text,
                                                      re.MULTILINE))
            for field, name in AUDIT_METRICS.items()}


def test_counters_add_up_per_request_and_metrics_grow_by_their_sum(audited_and_delayed):
    audited, _ = audited_and_delayed
    before = scrape(audited)
    items = generate(audited, PROMPTS, {**SAMPLING, "max_new_tokens": 64})
    after = scrape(audited)
    for item in items:
        check_audit(item["meta_info"]["focus_stats"]["audit"], item["meta_info"]["focus_stats"])
    summed = {field: sum(a[field] for a in audits(items)) for field in AUDIT_FIELDS}
    assert {field: after[field] - before[field] for field in AUDIT_FIELDS} == summed
    assert summed["steps"] > 0


@pytest.fixture(scope="module")
def never_due(request, tmp_path_factory, tiny_sdar) -> LocalServer:
    """sdar_focus_server's configuration with an audit that is never due (one step in 10^9)."""
    server = start_server(tmp_path_factory, tiny_sdar, "sdar_never_audited",
                          [*focus_args(tmp_path_factory, audit_every=10**9), "--enable-metrics"])
    request.addfinalizer(server.stop)
    return server


def test_without_an_audit_due_decoding_and_stats_are_those_of_a_server_that_does_not_audit(sdar_focus_server,
                                                                                          never_due):
    """The server without `audit_every` reports no audit and exports no audit counter; the one whose audit never
    comes due decodes the same ids with the same counts, plus all-zero audit counts. `sdar_focus_server` is shared
    with other modules: its radix cache is flushed first (KV that FOCUS wrote for earlier requests is reused and
    changes what a prompt decodes), and each prompt is sent alone (`generate_one_by_one`)."""
    for server in (sdar_focus_server, never_due):
        deadline = time.monotonic() + 60
        while requests.post(f"{server.base_url}/flush_cache", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the shared server never became idle enough to flush its cache"
            time.sleep(1)
    plain, counting = generate_one_by_one(sdar_focus_server, PROMPTS), generate_one_by_one(never_due, PROMPTS)
    assert [i["output_ids"] for i in plain] == [i["output_ids"] for i in counting]
    for mine, theirs in zip(counting, plain):
        stats, reference = mine["meta_info"]["focus_stats"], theirs["meta_info"]["focus_stats"]
        assert "audit" not in reference
        assert {k: v for k, v in stats.items() if k != "audit"} == reference
        assert stats["audit"] == {"steps": 0, "decodable": 0, "evicted_decodable": 0, "recall": None}
    assert sum(i["meta_info"]["focus_stats"]["evicted"] for i in plain) > 0, "the comparison must evict"
    assert "focus_audit" not in requests.get(f"{sdar_focus_server.base_url}/metrics", timeout=30).text


MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def bundled_audited(request, tmp_path_factory, bundled_model) -> LocalServer:
    """FOCUS on the bundled checkpoint (float32) processing the whole block at every step (`delayed_cache: false`)
    and auditing every evicting step: its trajectory is stock LowConfidence's."""
    args = focus_args(tmp_path_factory, alpha=1.5, delayed_cache=False, audit_every=1)
    server = start_server(tmp_path_factory, bundled_model, "bundled_audited", [*args, "--dtype", "float32"])
    request.addfinalizer(server.stop)
    return server


@pytest.mark.parametrize("budget_reset", ["block", "request"])
def test_audited_counts_equal_the_selection_replay_on_the_same_trajectory(bundled_audited, bundled_model,
                                                                          budget_reset):
    """What is compared: per request, the audit's (steps, decodable, evicted_decodable) against
    `analysis.selection.replay` run on the plain-PyTorch stock trajectory that `analysis.decodability` records.

    The trajectories coincide by construction: with `delayed_cache: false` and every evicting step audited, no step
    of the server evicts, so it decodes as stock LowConfidence (checked here token for token against the plain
    decoder), and its candidates are stock's (every masked position of the block). The replay gets the same budget
    (alpha, budget_reset, the request's S and N along that trajectory) and the progress of that trajectory
    (`progress_of="trajectory"`: -1 on a block's first step, B - 1 after, as the server's own state holds), and
    scores the keep sets of its FOCUS selector at the steps where FOCUS evicts. Deltas come from two
    implementations (the server's kernels on SGLang's q/k, the kernels' reference on the plain model's), so the
    equality also requires them to select alike.
    """
    model, tokenizer = load_checkpoint(bundled_model)
    model.eval()
    eos = tokenizer.token_to_id(EOS_TOKEN)
    problems = tasks.generate("heldout", 10, seed="audit", tasks=tasks.suite_of(bundled_model))
    sampling = {"max_new_tokens": MAX_NEW_TOKENS, "custom_params": {"focus": {"budget_reset": budget_reset}}}
    block_size = model.cfg["block_size"]
    evicted_decodable = 0
    for index, problem in enumerate(problems):
        prompt, _ = tasks.encode_problem(tokenizer, problem)
        resp = bundled_audited.generate({"input_ids": prompt, "sampling_params": sampling})
        assert resp.status_code == 200, resp.text
        item = resp.json()
        stock = block_diffusion_generate(model, prompt, threshold=THRESHOLD, max_new_tokens=MAX_NEW_TOKENS,
                                         eos_id=eos)
        assert item["output_ids"] == stock.ids, f"{problem.prompt}: the server left the stock trajectory"
        rows, _ = decodability.record_problem(model, tokenizer, problem, index, threshold=THRESHOLD,
                                              max_new_tokens=MAX_NEW_TOKENS)
        replayed = selection.replay(selection.group_steps(rows), alpha=1.5, budget_reset=budget_reset,
                                    progress_of="trajectory", block_size=block_size)
        expected = selection.audit_counts(replayed)[index]
        audit = item["meta_info"]["focus_stats"]["audit"]
        assert {field: audit[field] for field in AUDIT_FIELDS} == expected, problem.prompt
        evicted_decodable += expected["evicted_decodable"]
    assert evicted_decodable > 0, "the comparison must include decodable tokens FOCUS would evict"
