"""Start, wait for and stop a real `python -m sglang.launch_server` on 127.0.0.1 (demo, tests, benchmarks).

The server is stopped by PID: SIGTERM to the launcher and to the children it had, then SIGKILL to whatever
remains after a grace period. Nothing is ever killed by name.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import psutil
import requests

CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# A small KV pool (SGLang otherwise sizes it from free memory: about 16 GB here), and idle schedulers that sleep
# instead of spinning a core each, which matters when several servers share two cores.
CPU_DEFAULT_ARGS = ("--max-total-tokens", "8192", "--sleep-on-idle")


# Ports for the HTTP server: under the kernel's ephemeral range (where bind(0), outgoing connections and gloo's
# listening sockets take theirs, any of which can grab a port between our pick and the server's bind half a minute
# later) and under the range SGLang picks its own NCCL/gloo rendezvous port from (22000-29999).
SERVER_PORT_RANGE = (15000, 21999)
START_ATTEMPTS = 3  # a start that loses its port to another process is retried on a new one
PORT_TAKEN_MARKER = "address already in use"


class ServerStartError(RuntimeError):
    pass


class PortTakenError(ServerStartError):
    """The server could not bind its HTTP port: another process took it after it was picked."""


def free_port() -> int:
    """A port nothing listens on now, preferably from SERVER_PORT_RANGE (random, so that concurrent pickers rarely
    meet); bind(0) where that range overlaps the ephemeral range or is full."""
    low, high = SERVER_PORT_RANGE
    if high < _ephemeral_low():
        for port in random.sample(range(low, high + 1), 64):
            if _port_is_free(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def serving_dtype() -> str:
    """The `launch_server --dtype` every tool serves with, the same for every arm: `float32` on the CPU, where
    SGLang's `auto` would run a float32 checkpoint in float16 (emulated there: ~7x slower per row on the SmolLM2
    conversion, and not what the plain-PyTorch references compute); the checkpoint's own dtype (`auto`) on a GPU."""
    return "auto" if cuda_available() else "float32"


class LocalServer:
    """One SGLang server process tree; use as a context manager or call start()/stop()."""

    def __init__(self, model_path: str | Path, args: Sequence[str] = (), *, log_path: str | Path | None = None,
                 startup_timeout: float = 300.0, env: dict[str, str] | None = None):
        self.model_path = str(model_path)
        self.args = list(args)
        self.extra_env = dict(env or {})  # added to the server's environment
        self.port = free_port()
        # The server's output always goes to a file: `log_path`, or else a temporary file made by each launch and
        # deleted by stop() (None until then). Start-up errors quote its tail and a lost port is recognised there.
        self._own_log = log_path is None
        self.log_path: Path | None = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cpu_args = [] if cuda_available() else list(CPU_DEFAULT_ARGS)
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", self.model_path,
                "--host", "127.0.0.1", "--port", str(self.port), *cpu_args, *self.args]

    def start(self) -> "LocalServer":
        """Launch and wait until healthy, on a new port if another process took this one in the meantime (at most
        START_ATTEMPTS launches); a no-op if this instance already runs a server."""
        if self.process is not None:
            return self
        for _ in range(START_ATTEMPTS - 1):
            try:
                return self._launch_once()
            except PortTakenError:
                self.port = free_port()
        return self._launch_once()

    def _launch_once(self) -> "LocalServer":
        env = dict(os.environ)
        if not cuda_available():
            env.update(CPU_ENV)
        env.update(self.extra_env)
        if self._own_log:
            self.log_path = _temporary_log_path()
        self._log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command(), env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._lost_its_port():
                raise PortTakenError(f"port {self.port} was taken by another process{self._log_hint()}")
            if self.process.poll() is not None:
                raise ServerStartError(f"server exited with code {self.process.returncode} during start-up"
                                       f"{self._log_hint()}")
            try:
                if requests.get(f"{self.base_url}/health_generate", timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise ServerStartError(f"server not healthy after {self.startup_timeout:.0f}s{self._log_hint()}")

    def _lost_its_port(self) -> bool:
        """Whether the server's log reports that its HTTP port could not be bound (uvicorn then waits on its
        shutdown instead of exiting, so the process alone does not tell)."""
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        port = re.compile(rf"\b{self.port}\b")
        return any(PORT_TAKEN_MARKER in line.lower() and port.search(line) for line in log.splitlines())

    def _log_hint(self) -> str:
        """The last lines of the server's output, to end an error message with."""
        if not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        where = "server output" if self._own_log else f"log {self.log_path}"
        return f"; {where}:\n" + "\n".join(tail)

    def stop(self, grace: float = 20.0) -> None:
        """Stop the launcher and every process it started; idempotent. The launcher alone is asked first: SGLang
        then drains and stops its own children (SIGTERM sent to a scheduler directly reads to SGLang as a crash,
        whose handler sleeps 5 s before it cleans up); whatever is still alive after that is terminated, then
        killed (half of `grace` for each round)."""
        if self.process is None:
            return
        try:
            launcher = psutil.Process(self.process.pid)
            tree = [launcher, *launcher.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        if tree:
            _signal_quietly(tree[0], "terminate")
            _, alive = psutil.wait_procs(tree, timeout=grace / 2)
            for proc in alive:
                _signal_quietly(proc, "terminate")
            _, alive = psutil.wait_procs(alive, timeout=grace / 2)
            for proc in alive:
                _signal_quietly(proc, "kill")
            psutil.wait_procs(alive, timeout=5)
        self.process.wait(timeout=5)
        self.process = None
        self._log_file.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def generate(self, payload: dict, timeout: float = 300.0) -> requests.Response:
        return requests.post(f"{self.base_url}/generate", json=payload, timeout=timeout)


def start_side_by_side(servers: Sequence[LocalServer]) -> None:
    """Start `servers` in parallel threads (start-up is mostly imports and health checks) and wait for all.

    If any fails, every server is stopped and the first error is re-raised once all starts are over."""
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        starts = [pool.submit(server.start) for server in servers]
    errors = [start.exception() for start in starts if start.exception() is not None]
    if errors:
        for server in servers:
            server.stop()
        raise errors[0]


def _temporary_log_path() -> Path:
    handle, name = tempfile.mkstemp(prefix="sglang-server-", suffix=".log")
    os.close(handle)
    return Path(name)


def _signal_quietly(proc: psutil.Process, action: str) -> None:
    try:
        getattr(proc, action)()
    except psutil.NoSuchProcess:
        pass
