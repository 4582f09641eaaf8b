"""Patches for sglang.srt.managers.scheduler (see MANIFEST)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from sglang_focus.request_params import dllm_request_error


def reject_unsupported_dllm_requests(original, scheduler, req, *args, **kwargs):
    """AROUND `Scheduler.validate_dllm_request`: the algorithm's own verdict, then the checks every dLLM run needs.

    Returns the algorithm's error message if it has one; otherwise, on a dLLM server, `dllm_request_error` (grammar
    constraints, `return_logprob`, prompt ids outside the model's vocabulary); None (the request is admitted) on
    servers without a dLLM algorithm. SGLang answers a message with HTTP 400 before the request is queued.
    Mutates nothing.
    """
    error = original(scheduler, req, *args, **kwargs)
    if error is not None or getattr(scheduler, "dllm_config", None) is None:
        return error
    return dllm_request_error(req, vocab_size=scheduler.model_config.vocab_size)


class RunningRequests(NamedTuple):
    """What the load inquirer reads from a running batch: its requests."""

    reqs: list  # Req objects being decoded


def count_dllm_requests_as_running(result, scheduler, *args, **kwargs):
    """AFTER `Scheduler.init_load_inquirer`: on a dLLM server, loads count the requests being decoded as running.

    Replaces `scheduler.load_inquirer` (a frozen dataclass) by a copy whose `get_running_batch` returns the
    running batch's requests plus those held by `scheduler.dllm_manager` between denoising rounds, read at each
    call. Servers without a dLLM algorithm keep the original inquirer. Returns None.
    """
    if getattr(scheduler, "dllm_config", None) is None:
        return None
    scheduler.load_inquirer = dataclasses.replace(scheduler.load_inquirer,
                                                  get_running_batch=lambda: running_requests(scheduler))
    return None


def running_requests(scheduler) -> RunningRequests:
    """The scheduler's running-batch requests and its dLLM manager's requests (each once)."""
    reqs = list(scheduler.running_batch.reqs)
    reqs += [req for req in scheduler.dllm_manager.waiting_queue if all(req is not r for r in reqs)]
    return RunningRequests(reqs)
