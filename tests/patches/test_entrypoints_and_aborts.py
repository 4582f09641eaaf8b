"""patches/managers_scheduler.py (aborted dLLM requests end through the output stream) and the entrypoint patches
(grammar response formats refused by their own name, validation errors without internals), against fakes of the
scheduler and serving objects they read. The end-to-end checks are in tests/e2e/test_hardening.py."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from types import SimpleNamespace

import pytest

from sglang_focus.patches.entrypoints_http_server import clean_validation_errors
from sglang_focus.patches.entrypoints_openai_serving_chat import refuse_grammar_constrained_output as chat_hook
from sglang_focus.patches.entrypoints_openai_serving_completions import refuse_grammar_constrained_output
from sglang_focus.patches.managers_scheduler import finish_aborted_dllm_requests
from sglang_focus.request_params import validation_message


class FakeDllmManager:
    def __init__(self, reqs):
        self.reqs = list(reqs)

    def pop_aborted_reqs(self, abort_all, rid):
        popped = [r for r in self.reqs if abort_all or r.rid.startswith(rid)]
        self.reqs = [r for r in self.reqs if r not in popped]
        return popped


def fake_req(rid):
    return SimpleNamespace(rid=rid, finished_reason=None, return_logprob=False,
                           kv=SimpleNamespace(holds_kv=False, holds_mamba=False),
                           time_stats=SimpleNamespace(set_completion_time=lambda: None))


def fake_scheduler(reqs, dllm=True):
    events = []
    scheduler = SimpleNamespace(
        dllm_config=object() if dllm else None, dllm_manager=FakeDllmManager(reqs), events=events,
        _release_aborted_request=lambda req: events.append(("released", req.rid)),
        output_streamer=SimpleNamespace(stream_output=lambda reqs, logprob: events.append(
            ("streamed", [r.rid for r in reqs], [r.finished_reason for r in reqs]))))
    return scheduler


def original_abort(scheduler, recv_req):
    scheduler.events.append(("original", [r.rid for r in scheduler.dllm_manager.reqs]))
    return "result"


def test_aborted_dllm_requests_are_finished_through_the_stream_before_sglangs_abort_runs():
    scheduler = fake_scheduler([fake_req("a-1"), fake_req("b-1")])
    recv = SimpleNamespace(abort_all=False, rid="a", abort_message=None)
    assert finish_aborted_dllm_requests(original_abort, scheduler, recv) == "result"
    (released, streamed, original) = scheduler.events
    assert released == ("released", "a-1") and streamed[1] == ["a-1"]
    assert type(streamed[2][0]).__name__ == "FINISH_ABORT" and streamed[2][0].status_code is None
    assert original == ("original", ["b-1"]), "SGLang's abort finds only the requests left"


def test_a_timeout_abort_keeps_its_message_and_503():
    scheduler = fake_scheduler([fake_req("a")])
    finish_aborted_dllm_requests(original_abort, scheduler,
                                 SimpleNamespace(abort_all=True, rid="", abort_message="deadline exceeded"))
    reason = scheduler.events[1][2][0]
    assert reason.message == "deadline exceeded" and reason.status_code == HTTPStatus.SERVICE_UNAVAILABLE


def test_servers_without_a_dllm_algorithm_abort_as_sglang_does():
    scheduler = fake_scheduler([fake_req("a")], dllm=False)
    finish_aborted_dllm_requests(original_abort, scheduler, SimpleNamespace(abort_all=True, rid="", abort_message=None))
    assert scheduler.events == [("original", ["a"])]


def fake_serving(algorithm):
    return SimpleNamespace(tokenizer_manager=SimpleNamespace(server_args=SimpleNamespace(dllm_algorithm=algorithm)))


@pytest.mark.parametrize("hook", [chat_hook, refuse_grammar_constrained_output])
@pytest.mark.parametrize("kind", ["json_object", "json_schema", "structural_tag"])
def test_grammar_response_formats_are_refused_by_their_name_on_dllm_servers(hook, kind):
    request = SimpleNamespace(response_format=SimpleNamespace(type=kind))
    accept = lambda serving, request: None  # noqa: E731
    focus = hook(accept, fake_serving("Focus"), request)
    stock = hook(accept, fake_serving("LowConfidence"), request)
    assert f"'response_format' of type {kind!r}" in focus and focus.startswith("FOCUS")
    assert f"'response_format' of type {kind!r}" in stock and stock.startswith("Block-diffusion (dLLM)")
    assert hook(accept, fake_serving(None), request) is None, "autoregressive servers are untouched"
    assert hook(lambda s, r: "Messages cannot be empty.", fake_serving("Focus"), request) == "Messages cannot be empty."


@pytest.mark.parametrize("response_format", [None, SimpleNamespace(type="text")])
@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
def test_plain_text_formats_and_unforced_tool_choices_pass(response_format, tool_choice):
    request = SimpleNamespace(response_format=response_format, tool_choice=tool_choice)
    assert refuse_grammar_constrained_output(lambda s, r: None, fake_serving("Focus"), request) is None


@pytest.mark.parametrize("hook", [chat_hook, refuse_grammar_constrained_output])
@pytest.mark.parametrize("tool_choice, shown", [
    ("required", "'required'"),
    (SimpleNamespace(type="function", function=SimpleNamespace(name="get_weather")), "function 'get_weather'"),
])
def test_forced_tool_calls_are_refused_by_their_name_on_dllm_servers(hook, tool_choice, shown):
    request = SimpleNamespace(response_format=None, tool_choice=tool_choice)
    accept = lambda serving, request: None  # noqa: E731
    message = hook(accept, fake_serving("LowConfidence"), request)
    assert message.startswith("Block-diffusion (dLLM)") and f"forced tool calls ('tool_choice' {shown})" in message
    assert hook(accept, fake_serving(None), request) is None, "autoregressive servers are untouched"


@pytest.mark.parametrize("errors, expected", [
    ([{"type": "json_invalid", "loc": ("body", 70), "msg": "JSON decode error",
       "ctx": {"error": "unexpected character, expected a JSON value"}}],
     "Invalid request: the body is not valid JSON at character 70 (unexpected character, expected a JSON value); "
     "NaN and Infinity are not JSON numbers"),
    ([{"type": "json_invalid", "loc": ("body", 13), "msg": "JSON decode error", "ctx": {"error": "unexpected end of data"}}],
     "Invalid request: the body is not valid JSON at character 13 (unexpected end of data)"),
    ([{"type": "list_type", "loc": ("body", "messages"), "msg": "Input should be a valid list", "input": "hi"},
      {"type": "int_parsing", "loc": ("body", "max_tokens"), "msg": "Input should be a valid integer"}],
     "Invalid request: 'messages': Input should be a valid list; 'max_tokens': Input should be a valid integer"),
    ([], "Invalid request: invalid request"),
])
def test_validation_messages_name_the_field_or_the_json_position(errors, expected):
    assert validation_message(errors) == expected


def test_dllm_servers_render_validation_errors_without_internals(monkeypatch):
    from fastapi.exceptions import RequestValidationError
    from sglang.srt.entrypoints import http_server

    handlers = http_server.app.exception_handlers
    monkeypatch.setitem(handlers, RequestValidationError, handlers[RequestValidationError])
    sglangs = handlers[RequestValidationError]
    clean_validation_errors(SimpleNamespace(dllm_algorithm=None))
    assert handlers[RequestValidationError] is sglangs, "servers without a dLLM algorithm keep SGLang's handler"
    clean_validation_errors(SimpleNamespace(dllm_algorithm="LowConfidence"))
    clean_validation_errors(SimpleNamespace(dllm_algorithm="LowConfidence"))  # idempotent
    handler = handlers[RequestValidationError]
    assert handler is not sglangs and handler.renders_clean_messages

    errors = [{"type": "int_parsing", "loc": ("body", "max_tokens"), "msg": "Input should be a valid integer"}]
    exc = RequestValidationError(errors, endpoint_ctx={"file": "/srv/sglang/http_server.py", "line": 1870,
                                                      "function": "openai_v1_chat_completions"})
    for path, envelope in (("/v1/chat/completions", lambda body: body), ("/v1/responses", lambda body: body["error"])):
        request = SimpleNamespace(url=SimpleNamespace(path=path), scope={})
        response = asyncio.run(handler(request, exc))
        body = json.loads(response.body)
        assert response.status_code == 400 and "http_server.py" not in response.body.decode()
        assert envelope(body)["message"] == "Invalid request: 'max_tokens': Input should be a valid integer"
