"""Port picking and start-up diagnosis of the server helper (no server started here; tests/e2e/test_local_server.py
starts one whose port was taken)."""

from __future__ import annotations

import socket
import sys

from sglang_focus.bench import local_server
from sglang_focus.bench.local_server import SERVER_PORT_RANGE, LocalServer, free_port


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    port = free_port()
    if SERVER_PORT_RANGE[1] < local_server._ephemeral_low():
        assert SERVER_PORT_RANGE[0] <= port <= SERVER_PORT_RANGE[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_bind_failure_on_its_own_port_is_recognised_in_the_log(tmp_path):
    server = LocalServer("unused", log_path=tmp_path / "server.log")
    server.port = 17001
    log = server.log_path
    log.write_text("INFO:     Application startup complete.\n")
    assert not server._lost_its_port()
    log.write_text("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 170012): "
                   "address already in use\n")
    assert not server._lost_its_port()  # another port
    log.write_text("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 17001): "
                   "address already in use\n")
    assert server._lost_its_port()


def test_a_server_without_a_log_path_makes_its_temporary_log_at_launch_and_deletes_it_at_stop(monkeypatch):
    server = LocalServer("unused")
    assert server.log_path is None  # nothing made for a server that is never started
    launched = []

    def fake_wait(self):  # the launch itself is real: a command that exits at once, its output in the log
        launched.append(self.log_path)
        self.process.wait(timeout=30)

    monkeypatch.setattr(LocalServer, "command", lambda self: [sys.executable, "-c", "print('hello from the server')"])
    monkeypatch.setattr(LocalServer, "_wait_healthy", fake_wait)
    server.start()
    log = launched[0]
    assert log.name.startswith("sglang-server-") and "hello from the server" in log.read_text()
    server.stop()
    assert not log.exists() and server.log_path is None
