"""The patch manifest is complete and every hook it lists is really installed by SGLang's plugin loader."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

from sglang_focus import patches

HOOK_KINDS = {"BEFORE", "AFTER", "AROUND", "REPLACE"}


def test_every_patch_file_is_in_the_manifest():
    listed = {p.module for p in patches.MANIFEST}
    assert patches.patch_files() == listed, "a file in patches/ is missing from the manifest, or vice versa"


@pytest.mark.parametrize("patch", patches.MANIFEST, ids=lambda p: p.target.rsplit(".", 2)[-2] + "." + p.hook)
def test_manifest_entry_is_documented_and_resolvable(patch):
    assert patch.kind in HOOK_KINDS and patch.scope in {"focus", "dllm", "observe", "speed"}
    assert patch.why and patch.how and patch.removal
    module = importlib.import_module(f"sglang_focus.patches.{patch.module}")
    assert callable(getattr(module, patch.hook))
    owner_path, attr = patch.target.rsplit(".", 1)
    assert hasattr(pkgutil.resolve_name(owner_path), attr), f"{patch.target} does not exist in this SGLang"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_plugin_loader_installs_every_hook_and_registers_focus():
    code = (
        "from sglang.srt.plugins import load_plugins; load_plugins()\n"
        "from sglang_focus.patches import missing_hooks\n"
        "from sglang.srt.dllm.algorithm import get_algorithm_cls\n"
        "print('MISSING', missing_hooks()); print('ALGO', get_algorithm_cls('Focus').__name__)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MISSING []" in out.stdout and "ALGO Focus" in out.stdout


def test_hooks_are_absent_when_the_plugin_is_not_selected():
    code = (
        "from sglang.srt.plugins import load_plugins; load_plugins()\n"
        "from sglang_focus import patches\n"
        "print('MISSING', len(patches.missing_hooks()), len(patches.MANIFEST))\n"
    )
    out = run_python(code, SGLANG_PLUGINS="none")
    assert out.returncode == 0, out.stderr[-3000:]
    n = len(patches.MANIFEST)
    assert f"MISSING {n} {n}" in out.stdout
