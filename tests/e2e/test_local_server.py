"""The server helper every tool and test starts SGLang with survives losing its picked port to another process
between the pick and the server's bind (any socket opened in between may draw the same port)."""

from __future__ import annotations

import socket

import pytest

from sglang_focus.bench.local_server import LocalServer

pytestmark = pytest.mark.e2e


def test_a_server_whose_port_was_taken_starts_on_a_new_one(tiny_sdar, tmp_path):
    server = LocalServer(tiny_sdar, ["--dllm-algorithm", "LowConfidence"], log_path=tmp_path / "server.log")
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.port != taken
            assert server.base_url.endswith(f":{server.port}")
            resp = server.generate({"text": "hello", "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["output_ids"]) == 8
