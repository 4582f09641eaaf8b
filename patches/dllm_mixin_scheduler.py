"""Patches for sglang.srt.dllm.mixin.scheduler (see MANIFEST)."""

from __future__ import annotations

from sglang_focus import stats


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
