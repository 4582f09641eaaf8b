"""Shared fixtures: tiny checkpoints built offline, and real SGLang servers on 127.0.0.1."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when kernels are decorated, i.e. at first import: set it before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from sglang_focus.local_server import LocalServer  # noqa: E402
from sglang_focus import tiny_models  # noqa: E402

# Both arms of every comparison decode at this threshold.
THRESHOLD = 0.8
MAX_RUNNING = 8


@pytest.fixture(scope="session")
def tiny_sdar(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_sdar(tmp_path_factory.mktemp("tiny_sdar"))


@pytest.fixture(scope="session")
def tiny_llada2(tmp_path_factory) -> Path:
    return tiny_models.build_tiny_llada2(tmp_path_factory.mktemp("tiny_llada2"))


def write_yaml(path: Path, mapping: dict) -> str:
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def start_server(tmp_path_factory, model: Path, name: str, args: list[str]) -> LocalServer:
    logs = tmp_path_factory.mktemp(f"server_{name}")
    return LocalServer(model, [*args, "--max-running-requests", str(MAX_RUNNING)],
                       log_path=logs / "server.log").start()


def stock_args(tmp_path_factory) -> list[str]:
    cfg = write_yaml(tmp_path_factory.mktemp("stock_cfg") / "stock.yaml", {"threshold": THRESHOLD})
    return ["--dllm-algorithm", "LowConfidence", "--dllm-algorithm-config", cfg]


def focus_args(tmp_path_factory) -> list[str]:
    cfg = write_yaml(tmp_path_factory.mktemp("focus_cfg") / "focus.yaml", {"threshold": THRESHOLD})
    return ["--focus", "--focus-config", cfg]


@pytest.fixture(scope="session")
def sdar_stock_server(tmp_path_factory, tiny_sdar):
    server = start_server(tmp_path_factory, tiny_sdar, "sdar_stock", stock_args(tmp_path_factory))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sdar_focus_server(tmp_path_factory, tiny_sdar):
    server = start_server(tmp_path_factory, tiny_sdar, "sdar_focus", focus_args(tmp_path_factory))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llada2_stock_server(tmp_path_factory, tiny_llada2):
    server = start_server(tmp_path_factory, tiny_llada2, "llada2_stock", stock_args(tmp_path_factory))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llada2_focus_server(tmp_path_factory, tiny_llada2):
    server = start_server(tmp_path_factory, tiny_llada2, "llada2_focus", focus_args(tmp_path_factory))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["sdar", "llada2"])
def server_pair(request):
    """(stock, focus) servers on the same tiny checkpoint, for each architecture."""
    name = request.param
    return name, request.getfixturevalue(f"{name}_stock_server"), request.getfixturevalue(f"{name}_focus_server")
