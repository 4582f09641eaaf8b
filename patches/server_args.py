"""Patches for sglang.srt.server_args (see MANIFEST): the `--focus` command-line flags."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from sglang_focus.config import (
    ALGORITHM_NAME,
    SUPPORTED_ARCHITECTURES,
    FocusConfigError,
    load_yaml_mapping,
    parse_focus_config,
)


def add_focus_cli_args(result, parser: argparse.ArgumentParser):
    """AFTER `ServerArgs.add_cli_args`: the FOCUS flags (sugar over --dllm-algorithm/--dllm-algorithm-config)."""
    group = parser.add_argument_group("FOCUS (sglang-focus plugin)")
    group.add_argument("--focus", action="store_true",
                       help=f"Decode with FOCUS; same as --dllm-algorithm {ALGORITHM_NAME}.")
    group.add_argument("--focus-alpha", type=float, default=None,
                       help="FOCUS budget factor alpha (>= 1, default 1.5; inf disables eviction).")
    group.add_argument("--focus-config", type=str, default=None,
                       help="YAML with FOCUS options (alpha, threshold, delayed_cache, min_batch_tokens, "
                            "budget_reset, block_size, mask_id).")
    return None


def resolve_focus_cli_args(original, cls, args: argparse.Namespace):
    """AROUND `ServerArgs.from_cli_args`: turn the FOCUS flags into the canonical dllm fields, or exit with one line."""
    if getattr(args, "focus", False) or getattr(args, "dllm_algorithm", None) == ALGORITHM_NAME:
        try:
            _select_focus(args)
        except FocusConfigError as exc:
            raise SystemExit(_error_line(exc)) from None
        _print_later_refusals_as_one_line()
    return original(cls, args)


def _error_line(exc: FocusConfigError) -> str:
    return f"sglang-focus: error: {exc}"


def _print_later_refusals_as_one_line() -> None:
    """The launch refusals raised while SGLang resolves the arguments (`sglang_focus.launch`, after this hook) end
    a command-line launch with the same one line instead of a traceback; other errors keep Python's report."""
    previous = sys.excepthook

    def excepthook(kind, exc, tb):
        if issubclass(kind, FocusConfigError):
            print(_error_line(exc), file=sys.stderr)
        else:
            previous(kind, exc, tb)

    sys.excepthook = excepthook


def _select_focus(args: argparse.Namespace) -> None:
    if args.dllm_algorithm not in (None, ALGORITHM_NAME):
        raise FocusConfigError(f"--focus selects the {ALGORITHM_NAME} algorithm and cannot be combined with "
                               f"--dllm-algorithm {args.dllm_algorithm}")
    if getattr(args, "dllm_fdfo", True) is False:
        raise FocusConfigError("FOCUS runs in FDFO mode only; remove --no-dllm-fdfo")
    config_file = _config_file(args)
    raw = load_yaml_mapping(config_file) if config_file else {}
    if getattr(args, "focus_alpha", None) is not None:
        raw["alpha"] = args.focus_alpha
    parse_focus_config(raw)
    _check_architecture(args.model_path)
    args.dllm_algorithm = ALGORITHM_NAME
    args.dllm_algorithm_config = config_file if _unchanged(config_file, raw) else _write_merged_yaml(raw)


def _config_file(args: argparse.Namespace) -> str | None:
    focus_file, dllm_file = getattr(args, "focus_config", None), args.dllm_algorithm_config
    if focus_file and dllm_file and Path(focus_file).resolve() != Path(dllm_file).resolve():
        raise FocusConfigError("give the FOCUS options in one file: --focus-config and --dllm-algorithm-config differ")
    return focus_file or dllm_file


def _unchanged(config_file: str | None, raw: dict) -> bool:
    return config_file is not None and load_yaml_mapping(config_file) == raw


def _check_architecture(model_path: str) -> None:
    """Reject local checkpoints that are not a diffusion LLM FOCUS supports (remote ids are checked later)."""
    config_json = Path(model_path) / "config.json"
    if not config_json.is_file():
        if Path(model_path).exists():
            raise FocusConfigError(f"model path {model_path!r} has no config.json")
        return
    architectures = json.loads(config_json.read_text()).get("architectures") or ["<none declared>"]
    if architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise FocusConfigError(
            f"{model_path!r} ({architectures[0]}) is not a block-diffusion LLM that FOCUS supports; "
            f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}")


def _write_merged_yaml(raw: dict) -> str:
    """Write the merged options for every SGLang process to read; the launcher deletes the file when it exits."""
    fd, path = tempfile.mkstemp(prefix="sglang-focus-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(raw, f)
    atexit.register(_remove_quietly, path)
    return path


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
