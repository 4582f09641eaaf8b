"""Patches for sglang.srt.managers.scheduler_components.output_streamer (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.stats import STATS_KEY


def focus_stats_are_request_level(original, streamer, key):
    """AROUND `SchedulerOutputStreamer.is_request_level_customized_info_key`: "focus_stats" is sent whole.

    SGLang slices other customized_info keys per token; a request-level key goes out at finish (non-streamed
    requests) or with the first chunk (streams; later chunks: see `refresh_streamed_focus_stats`).
    """
    return key == STATS_KEY or original(streamer, key)


def refresh_streamed_focus_stats(result, accumulator, *args, req, **kwargs):
    """AFTER `_GenerationStreamAccumulator.accept`: every chunk of a stream carries the latest FOCUS totals.

    SGLang sends a request-level key to a stream only with its first chunk. When `req` was just added to the
    chunk, is streamed and has FOCUS stats, this sets its entry of `accumulator.customized_info[STATS_KEY]` (creating
    the key with empty entries for the requests before it). Returns None.
    """
    values = (req.customized_info or {}).get(STATS_KEY)
    if not (values and req.stream and accumulator.output_reqs and accumulator.output_reqs[-1] is req):
        return
    per_request = accumulator.customized_info.setdefault(STATS_KEY, [[] for _ in accumulator.output_reqs])
    per_request[-1] = values
