"""Shared fixtures: tiny checkpoints built offline, and real SGLang servers on 127.0.0.1."""

from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET when kernels are decorated, i.e. at first import: set it before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from sglang_focus.bench.local_server import LocalServer  # noqa: E402
from sglang_focus.training import tiny_models  # noqa: E402

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "models" / "sdar-tasks"
# Both arms of every comparison decode at this threshold.
THRESHOLD = 0.8
MAX_RUNNING = 16


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


# The suites send single requests and small batches, below FOCUS's memory-bound guard (min_batch_tokens), and
# must exercise eviction there: their servers turn the guard off. The guard itself is tested with the shipped
# default (tests/e2e/test_memory_bound_guard.py). They also reset the budget per block (spec §4.5): the tiny random
# models decode most of a block per step, so with the request-wide budget (the default) their later blocks would
# keep every masked row. The request-wide budget is tested on the bundled model (tests/e2e/test_focus_reference.py,
# tests/e2e/test_bundled_model.py).
ALWAYS_EVICT = {"min_batch_tokens": 0, "budget_reset": "block"}


def focus_args(tmp_path_factory, **options) -> list[str]:
    cfg = write_yaml(tmp_path_factory.mktemp("focus_cfg") / "focus.yaml",
                     {"threshold": THRESHOLD, **ALWAYS_EVICT, **options})
    return ["--focus", "--focus-config", cfg]


# FOCUS with alpha >= the block size (no request ever evicts) and without the delayed cache: the configuration
# that must decode exactly like stock LowConfidence.
NO_EVICTION = {"alpha": 16, "delayed_cache": False}


def _server(request, tmp_path_factory, model_fixture: str, name: str, args: list[str]):
    server = start_server(tmp_path_factory, request.getfixturevalue(model_fixture), name, args)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope="session")
def sdar_stock_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "tiny_sdar", "sdar_stock", stock_args(tmp_path_factory))


@pytest.fixture(scope="session")
def sdar_focus_server(request, tmp_path_factory):
    """FOCUS as shipped (alpha 1.5, delayed cache) but evicting at any batch size, with Prometheus metrics on."""
    return _server(request, tmp_path_factory, "tiny_sdar", "sdar_focus",
                   [*focus_args(tmp_path_factory), "--enable-metrics"])


@pytest.fixture(scope="session")
def sdar_focus_incremental_server(request, tmp_path_factory):
    """sdar_focus_server's FOCUS streaming disjoint segments (`--incremental-streaming-output`), where SGLang slices
    the listed meta_info keys of each chunk by token offset."""
    return _server(request, tmp_path_factory, "tiny_sdar", "sdar_focus_incremental",
                   [*focus_args(tmp_path_factory), "--incremental-streaming-output"])


@pytest.fixture(scope="session")
def sdar_focus_guarded_server(request, tmp_path_factory):
    """FOCUS with the shipped memory-bound guard: the YAML sets only the threshold both arms share."""
    cfg = write_yaml(tmp_path_factory.mktemp("guard_cfg") / "focus.yaml", {"threshold": THRESHOLD})
    return _server(request, tmp_path_factory, "tiny_sdar", "sdar_focus_guarded", ["--focus", "--focus-config", cfg])


@pytest.fixture(scope="session")
def sdar_focus_no_eviction_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "tiny_sdar", "sdar_focus_no_eviction",
                   focus_args(tmp_path_factory, **NO_EVICTION))


@pytest.fixture(scope="session")
def llada2_stock_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "tiny_llada2", "llada2_stock", stock_args(tmp_path_factory))


@pytest.fixture(scope="session")
def llada2_focus_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "tiny_llada2", "llada2_focus", focus_args(tmp_path_factory))


@pytest.fixture(scope="session")
def llada2_focus_no_eviction_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "tiny_llada2", "llada2_focus_no_eviction",
                   focus_args(tmp_path_factory, **NO_EVICTION))


@pytest.fixture(scope="session")
def sdar_focus_metrics_server(sdar_focus_server):
    return sdar_focus_server


@pytest.fixture(scope="session", params=["sdar", "llada2"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def focus_server(request, arch):
    """The evicting FOCUS server of each architecture."""
    return request.getfixturevalue(f"{arch}_focus_server")


@pytest.fixture(scope="session")
def stock_and_no_eviction(request, arch):
    """(stock LowConfidence, FOCUS that never evicts) on the same checkpoint and threshold."""
    return request.getfixturevalue(f"{arch}_stock_server"), request.getfixturevalue(f"{arch}_focus_no_eviction_server")


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The bundled task-suite checkpoint, models/sdar-tasks."""
    if not (BUNDLED_MODEL / "config.json").is_file():
        pytest.fail(f"the bundled checkpoint is missing: no {BUNDLED_MODEL / 'config.json'}")
    return BUNDLED_MODEL


@pytest.fixture(scope="session")
def bundled_servers(request, tmp_path_factory, bundled_model) -> dict[str, LocalServer]:
    """{"stock": LowConfidence, "focus": FOCUS as shipped, evicting at any batch size} on the bundled checkpoint, both with Prometheus metrics
    on, started side by side (start-up is mostly waiting on imports and health checks)."""
    arm_args = {"stock": stock_args(tmp_path_factory), "focus": focus_args(tmp_path_factory)}
    servers = {arm: LocalServer(bundled_model, [*args, "--enable-metrics", "--max-running-requests", str(MAX_RUNNING)],
                                log_path=tmp_path_factory.mktemp(f"server_bundled_{arm}") / "server.log")
               for arm, args in arm_args.items()}
    request.addfinalizer(lambda: _side_by_side(servers.values(), LocalServer.stop))
    _side_by_side(servers.values(), LocalServer.start)
    return servers


def _side_by_side(servers, method) -> None:
    """Call `method` on every server in parallel threads; re-raises the first error once all are done."""
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        for done in [pool.submit(method, server) for server in servers]:
            done.result()


@pytest.fixture(scope="session")
def bundled_stock_server(bundled_servers) -> LocalServer:
    return bundled_servers["stock"]


@pytest.fixture(scope="session")
def bundled_focus_server(bundled_servers) -> LocalServer:
    return bundled_servers["focus"]
