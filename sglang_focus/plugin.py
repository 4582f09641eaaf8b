"""SGLang plugin entry point (`sglang.srt.plugins` group): registers FOCUS in every SGLang process."""

from __future__ import annotations

_registered = False


def register() -> None:
    """Check the SGLang version, register the `Focus` algorithm, queue the hooks of `sglang_focus.patches`.

    Idempotent: SGLang calls it in the launcher and again in every scheduler and detokenizer process.
    Everything it installs is inert unless FOCUS is selected, apart from the dLLM compatibility fixes listed
    in the patch manifest.
    """
    global _registered
    if _registered:
        return
    from sglang_focus.compat import check_sglang_version

    check_sglang_version()
    _register_algorithm()
    from sglang_focus import patches

    patches.apply_all()
    _registered = True


def _register_algorithm() -> None:
    from sglang.srt.dllm.algorithm import algo_name_to_cls

    from sglang_focus.config import ALGORITHM_NAME
    from sglang_focus.unmasking.algorithm import Focus

    algo_name_to_cls[ALGORITHM_NAME] = Focus
