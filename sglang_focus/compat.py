"""The SGLang release this plugin is written against, and checks that our hooks are really installed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

SUPPORTED_SGLANG_VERSION = "0.5.23"


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
