"""Patches for sglang.srt.arg_groups.overrides (see MANIFEST)."""

from __future__ import annotations

from sglang_focus import envs


def keep_torch_native_on_cpu(original, view):
    """AROUND `_dllm_attention_backend`: on the CPU engine, keep an already chosen torch_native backend."""
    if envs.is_cpu_engine() and view.attention_backend == "torch_native":
        return {}
    return original(view)
