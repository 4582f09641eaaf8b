"""Admission of dLLM requests (patches/managers_scheduler.py): every dLLM algorithm refuses what it cannot honour.

Runs in a subprocess (HookRegistry cannot unpatch) against SGLang's real Scheduler.validate_dllm_request, with the
unhooked original (`__wrapped__`) as the control showing what stock SGLang admits.
"""

from __future__ import annotations

import json
import subprocess
import sys

ADMISSION = """
import json
from types import SimpleNamespace
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams

def req(return_logprob=False, **sampling):
    return SimpleNamespace(sampling_params=SamplingParams(**sampling), return_logprob=return_logprob,
                           custom_logit_processor=None)

cases = {"plain": req(), "regex": req(regex="[0-9]+"), "json_schema": req(json_schema='{"type": "object"}'),
         "ebnf": req(ebnf='root ::= "a"'), "logprob": req(return_logprob=True), "temperature": req(temperature=0.7)}
def verdicts(fn, algorithm):
    config = None if algorithm is None else DllmConfig(algorithm, {}, block_size=16, mask_id=3, max_running_requests=4)
    scheduler = SimpleNamespace(dllm_config=config)
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


def test_grammar_and_logprob_requests_are_refused_by_every_dllm_algorithm_with_a_message():
    verdicts = admission_verdicts()
    assert all(v is None for v in verdicts["unhooked_stock"].values()), "control: stock SGLang admits everything"
    for arm in ("stock", "focus"):
        got = verdicts[arm]
        assert got["plain"] is None
        for name in ("regex", "json_schema", "ebnf"):
            assert f"'{name}'" in got[name] and "does not support" in got[name], (arm, got[name])
        assert "'return_logprob'" in got["logprob"] and "sgl.select()" in got["logprob"]
    assert verdicts["stock"]["temperature"] is None, "stock keeps SGLang's sampling behaviour"
    assert "temperature=0.7" in verdicts["focus"]["temperature"], "FOCUS refuses parameters it would ignore"
    assert all(v is None for v in verdicts["not_dllm"].values()), "servers without a dLLM algorithm are untouched"
