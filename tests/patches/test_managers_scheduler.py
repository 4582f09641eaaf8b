"""patches/managers_scheduler.py: every dLLM algorithm refuses what it cannot honour, and loads count dLLM requests.

The admission test runs in a subprocess (HookRegistry cannot unpatch) against SGLang's real
Scheduler.validate_dllm_request, with the unhooked original (`__wrapped__`) as the control showing what stock SGLang
admits. The end-to-end checks are in tests/e2e/test_hardening.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Callable

from sglang_focus.patches.managers_scheduler import count_dllm_requests_as_running

ADMISSION = """
import json
from types import SimpleNamespace
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams

def req(return_logprob=False, input_ids=(5, 6, 7), **sampling):
    return SimpleNamespace(sampling_params=SamplingParams(**sampling), return_logprob=return_logprob,
                           custom_logit_processor=None, origin_input_ids=list(input_ids))

cases = {"plain": req(), "regex": req(regex="[0-9]+"), "json_schema": req(json_schema='{"type": "object"}'),
         "ebnf": req(ebnf='root ::= "a"'), "logprob": req(return_logprob=True), "temperature": req(temperature=0.7),
         "outside_vocabulary": req(input_ids=[5, 10**6, 7])}
def verdicts(fn, algorithm):
    config = None if algorithm is None else DllmConfig(algorithm, {}, block_size=16, mask_id=3, max_running_requests=4)
    scheduler = SimpleNamespace(dllm_config=config, model_config=SimpleNamespace(vocab_size=832))
    return {name: fn(scheduler, r) for name, r in cases.items()}

hooked = Scheduler.validate_dllm_request
print("RESULT " + json.dumps({
    "stock": verdicts(hooked, "LowConfidence"), "focus": verdicts(hooked, "Focus"),
    "not_dllm": verdicts(hooked, None), "unhooked_stock": verdicts(hooked.__wrapped__, "LowConfidence")}))
"""


def admission_verdicts() -> dict:
    out = subprocess.run([sys.executable, "-c", ADMISSION], capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_grammar_logprob_and_out_of_vocabulary_requests_are_refused_by_every_dllm_algorithm():
    verdicts = admission_verdicts()
    assert all(v is None for v in verdicts["unhooked_stock"].values()), "control: stock SGLang admits everything"
    for arm in ("stock", "focus"):
        got = verdicts[arm]
        assert got["plain"] is None
        for name in ("regex", "json_schema", "ebnf"):
            assert f"'{name}'" in got[name] and "does not support" in got[name], (arm, got[name])
        assert "'return_logprob'" in got["logprob"] and "sgl.select()" in got["logprob"]
        assert "1000000" in got["outside_vocabulary"] and "0..831" in got["outside_vocabulary"]
    assert verdicts["stock"]["temperature"] is None, "stock keeps SGLang's sampling behaviour"
    assert "temperature=0.7" in verdicts["focus"]["temperature"], "FOCUS refuses parameters it would ignore"
    assert all(v is None for v in verdicts["not_dllm"].values()), "servers without a dLLM algorithm are untouched"


@dataclasses.dataclass(kw_only=True, slots=True, frozen=True)
class Inquirer:
    """The part of SGLang's frozen SchedulerLoadInquirer the hook replaces."""

    get_running_batch: Callable
    max_running_requests: int = 16


def fake_scheduler(dllm: bool):
    from sglang.srt.dllm.mixin.scheduler import DllmManager

    running = SimpleNamespace(reqs=["ar-request"])
    scheduler = SimpleNamespace(dllm_config=object() if dllm else None, running_batch=running,
                                dllm_manager=DllmManager(), load_inquirer=None)
    scheduler.load_inquirer = Inquirer(get_running_batch=lambda: scheduler.running_batch)
    return scheduler


def test_requests_held_between_dllm_rounds_count_as_running():
    scheduler = fake_scheduler(dllm=True)
    count_dllm_requests_as_running(None, scheduler)
    assert scheduler.load_inquirer.max_running_requests == 16, "the rest of the inquirer is kept"
    assert scheduler.load_inquirer.get_running_batch().reqs == ["ar-request"]
    scheduler.dllm_manager.waiting_queue = ["block-1", "block-2"]  # read at each call, not at hook time
    assert scheduler.load_inquirer.get_running_batch().reqs == ["ar-request", "block-1", "block-2"]


def test_servers_without_a_dllm_algorithm_keep_their_load_inquirer():
    scheduler = fake_scheduler(dllm=False)
    inquirer = scheduler.load_inquirer
    count_dllm_requests_as_running(None, scheduler)
    assert scheduler.load_inquirer is inquirer
