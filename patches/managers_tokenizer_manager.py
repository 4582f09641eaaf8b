"""Patches for sglang.srt.managers.tokenizer_manager (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.stats import STATS_KEY


def keep_latest_focus_stats(result, manager, meta_info, state, *args, **kwargs):
    """AFTER `TokenizerManager.update_request_meta_info`: `meta_info["focus_stats"]` is the latest totals, a dict.

    The scheduler sends a FOCUS summary as a one-element list, because SGLang extends a per-request list in
    `state.customized_info_accumulated` with each chunk's customized_info values and, in incremental streaming,
    slices every listed key by token offset. A summary is a running total and every stream chunk brings one
    (patches/managers_scheduler_components_output_streamer.py), so this hook removes the key from that list and
    puts the newest summary itself in `meta_info`; a chunk that brought none leaves `focus_stats` out of `meta_info`.
    Returns None.
    """
    received = state.customized_info_accumulated.pop(STATS_KEY, None)
    if received is None:
        return
    if received:
        meta_info[STATS_KEY] = received[-1]
    else:
        meta_info.pop(STATS_KEY, None)
