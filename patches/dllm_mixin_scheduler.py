"""Patches for sglang.srt.dllm.mixin.scheduler (see MANIFEST)."""

from __future__ import annotations

from sglang_focus import stats
from sglang_focus.structs import FocusReqState


def record_focus_stats(scheduler, batch, result, *args, **kwargs):
    """BEFORE `SchedulerDllmMixin.process_batch_result_dllm`: add this forward's FOCUS stats to each request.

    Runs before the method streams the batch, so every chunk carries the totals up to this forward. Mutates
    `req.customized_info` of the batch's requests (see `stats.record_step`) and, when this scheduler reports
    metrics, increments the FOCUS counters. Inert when the result carries no FOCUS step stats. Returns None.
    """
    deltas = stats.step_deltas(result)
    if deltas is None:
        return
    batch_delta = stats.record_step(batch.reqs, deltas)
    reporter = scheduler.metrics_reporter
    if reporter.current_scheduler_metrics_enabled:
        collector = reporter.metrics_collector
        stats.focus_metrics(collector.labels if collector is not None else {}).observe(batch_delta)


def keep_carried_budget(returned, scheduler, batch, result, *args, **kwargs):
    """AFTER `SchedulerDllmMixin.process_batch_result_dllm`: a request whose block was just decoded starts its next
    block with the state FOCUS handed back for it, not SGLang's None.

    SGLang clears `req.dllm_algo_state` when a block resolves. For such a request FOCUS's result holds None (the
    spec's per-block budget reset: nothing to keep) or, with `budget_reset: request`, a fresh FocusReqState whose
    `earlier_*` counters carry the request's budget (`unmasking.delayed_cache.next_block_state`). Sets
    `req.dllm_algo_state` to that state for every unfinished request of `batch` whose state SGLang cleared; requests
    still in their block, finished requests and results of other algorithms are left alone. Returns None (the
    method's own return value stands).
    """
    states = getattr(result, "dllm_algo_state", None)
    if not states:
        return None
    for req, state in zip(batch.reqs, states):
        if isinstance(state, FocusReqState) and req.dllm_algo_state is None and not req.finished():
            req.dllm_algo_state = state
    return None
