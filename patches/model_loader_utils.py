"""Patches for sglang.srt.model_loader.utils (see MANIFEST)."""

from __future__ import annotations


def register_focus_models(model_config):
    """BEFORE `get_model_architecture`: with FOCUS selected, SGLang loads our subclasses of its model classes."""
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.runtime_context import get_exec

    from sglang_focus.adapters import focus_model_classes
    from sglang_focus.config import ALGORITHM_NAME

    if get_exec().dllm.dllm_algorithm != ALGORITHM_NAME:
        return None
    ModelRegistry.models.update(focus_model_classes())
    return None
