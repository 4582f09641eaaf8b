"""The SGLang release this plugin is written against, and checks that our hooks are really installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SUPPORTED_SGLANG_VERSION = "0.5.23"

# SGLang's own switch between FlashInfer's two plans for extend batches. Each FlashInferAttnBackend reads it once,
# when it is built (`self.use_paged`, flashinfer_backend.py): unset or false attends a batch's own rows as ragged k/v
# merged with paged attention over the cached prefix; true reads every key from the paged KV cache. FOCUS's row
# batches are scattered subsets of their blocks, so a FOCUS server plans paged (`select_paged_attention`).
FLASHINFER_PAGED_ENV = "SGLANG_FLASHINFER_USE_PAGED"


class IncompatibleSGLangError(RuntimeError):
    pass


def installed_sglang_version() -> str | None:
    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def check_sglang_version() -> None:
    """Raise unless the pinned SGLang release is installed: every patch targets its internals."""
    found = installed_sglang_version()
    if found != SUPPORTED_SGLANG_VERSION:
        raise IncompatibleSGLangError(
            f"sglang-focus needs sglang=={SUPPORTED_SGLANG_VERSION}, found {found or 'no sglang'}; "
            f"install it with: pip install sglang=={SUPPORTED_SGLANG_VERSION}"
        )


def assert_hooks_active() -> None:
    """Raise if any manifest hook failed to install. SGLang's loader only logs such failures."""
    from sglang_focus.patches import missing_hooks

    missing = missing_hooks()
    if missing:
        raise IncompatibleSGLangError(
            "sglang-focus hooks are not installed on: " + ", ".join(missing)
            + ". Was the plugin disabled by SGLANG_PLUGINS, or did a hook target move?"
        )


def attention_path_env() -> dict[str, str]:
    """The environment under which a server plans attention as every FOCUS server does (FlashInfer extend batches
    paged). FOCUS servers export it themselves at launch; start a stock server that is compared with FOCUS with it
    too, so that both arms run one attention path. torch_native ignores it."""
    return {FLASHINFER_PAGED_ENV: "1"}


def paged_attention_switch() -> bool | None:
    """SGLang's paged-planning switch as SGLang reads it, or None when it is unset."""
    from sglang.srt.environ import envs

    switch = envs.SGLANG_FLASHINFER_USE_PAGED
    return switch.get() if switch.is_set() else None


def select_paged_attention() -> None:
    """Turn SGLang's paged-planning switch on in the launching process, before SGLang starts the scheduler: every
    process it starts inherits the environment, so each FlashInfer backend of the server plans every batch paged
    from the start. Nothing changes it afterwards (a later server started from the same Python process inherits
    it too)."""
    from sglang_focus.envs import export

    export(attention_path_env())
