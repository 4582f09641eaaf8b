"""`--focus` serves every SGLang front door; without eviction it decodes exactly like stock LowConfidence."""

from __future__ import annotations

import json

import pytest
import requests

from prompts import PROMPTS  # tests/e2e/prompts.py

pytestmark = pytest.mark.e2e

MASK_ID = 3  # the tiny tokenizer's <|mask|>


def generate_ids(server, prompts, max_new_tokens=40):
    resp = server.generate({"text": prompts, "sampling_params": {"max_new_tokens": max_new_tokens,
                                                                 "ignore_eos": True}})
    assert resp.status_code == 200, resp.text
    return [item["output_ids"] for item in resp.json()]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_focus_with_alpha_at_block_size_equals_stock_low_confidence(stock_and_no_eviction, batch_size):
    stock, focus = stock_and_no_eviction
    prompts = PROMPTS[:batch_size]
    stock_ids, focus_ids = generate_ids(stock, prompts), generate_ids(focus, prompts)
    assert focus_ids == stock_ids
    assert all(len(ids) == 40 for ids in focus_ids)


def test_mask_token_is_never_emitted(stock_and_no_eviction, focus_server):
    for server in (*stock_and_no_eviction, focus_server):
        assert all(MASK_ID not in ids for ids in generate_ids(server, PROMPTS, max_new_tokens=48))


def test_generate_returns_text_and_meta(focus_server):
    focus = focus_server
    resp = focus.generate({"text": "Hello there", "sampling_params": {"max_new_tokens": 16}})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["text"], str)
    assert 0 < body["meta_info"]["completion_tokens"] <= 16


def test_openai_chat_completions(focus_server):
    focus = focus_server
    resp = requests.post(f"{focus.base_url}/v1/chat/completions", timeout=120, json={
        "model": "default", "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert resp.json()["usage"]["completion_tokens"] > 0


def test_streaming_concatenates_to_the_full_answer(focus_server):
    focus = focus_server
    payload = {"text": "Count from one to ten: 1 2 3", "stream": True,
               "sampling_params": {"max_new_tokens": 40, "ignore_eos": True}}
    chunks = []
    with requests.post(f"{focus.base_url}/generate", json=payload, stream=True, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith(b"data:") and line != b"data: [DONE]":
                chunks.append(json.loads(line[5:]))
    assert len(chunks) >= 2, "a 40-token answer spans several blocks, so it streams in several chunks"
    full = focus.generate({"text": payload["text"], "sampling_params": payload["sampling_params"]}).json()
    assert chunks[-1]["text"] == full["text"]
    assert chunks[-1]["output_ids"] == full["output_ids"]


def test_frontend_program_with_sgl_gen(focus_server):
    import sglang as sgl

    from sglang_focus.bench.frontend import programs_collected_safely

    focus = focus_server

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=24))

    backend = sgl.RuntimeEndpoint(focus.base_url)
    with programs_collected_safely():
        state = qa.run(question="What is the capital of France?", backend=backend)
    assert isinstance(state["answer"], str)
    assert state.get_meta_info("answer")["completion_tokens"] > 0
