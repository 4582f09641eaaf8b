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


def finish_aborted_dllm_requests(original, scheduler, recv_req, *args, **kwargs):
    """AROUND `Scheduler.abort_request`: a dLLM request aborted between denoising rounds ends through the output
    stream, as an aborted autoregressive request does, so its reply holds every token decoded before the abort.

    SGLang pops such requests from the dLLM manager and answers them with a bare AbortReq: the tokenizer then
    replies with only the tokens already delivered (a non-streamed request gets one chunk per 50 tokens), and the
    detokenizer keeps the rid's decode state, which garbles the text of the next request reusing the rid. Here, on
    a dLLM server, each matching request of the dLLM manager (where SGLang keeps them between rounds; dLLM requests
    never become the scheduler's chunked request) is finished with `FINISH_ABORT` (the message and 503 of a timeout abort, as SGLang's running-request path sets),
    streamed (output ids, text and `customized_info` such as `focus_stats`, through the detokenizer) and its KV
    released; then the original handles everything else. Returns the original's result.
    """
    if getattr(scheduler, "dllm_config", None) is not None:
        for req in scheduler.dllm_manager.pop_aborted_reqs(recv_req.abort_all, recv_req.rid):
            _finish_through_the_stream(scheduler, req, recv_req)
    return original(scheduler, recv_req, *args, **kwargs)


def _finish_through_the_stream(scheduler, req, recv_req) -> None:
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT
    from sglang.srt.mem_cache.common import release_kv_cache

    scheduler._release_aborted_request(req)
    req.finished_reason = (FINISH_ABORT(recv_req.abort_message, HTTPStatus.SERVICE_UNAVAILABLE)
                           if recv_req.abort_message else FINISH_ABORT())
    req.time_stats.set_completion_time()
    scheduler.output_streamer.stream_output([req], req.return_logprob)
    if req.kv.holds_kv or req.kv.holds_mamba:
        release_kv_cache(req, scheduler.tree_cache, checkpoint=False)
