"""Patches for sglang.srt.entrypoints.http_server (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.request_params import validation_message

# Routes whose validation errors SGLang already renders without internals (Anthropic and System One envelopes).
OWN_RENDERING = ("/v1/messages", "/v1/systemone")


def clean_validation_errors(server_args, *args, **kwargs):
    """BEFORE `launch_server`: on a dLLM server, a malformed request body gets a 400 that names the field or where
    the JSON breaks, and no file path or code location.

    SGLang's handler for FastAPI's RequestValidationError puts `str(exc)` in the body, which names the endpoint's
    source file and line. Replaces the handler registered on `http_server.app` by one that renders
    `request_params.validation_message(exc.errors())` in SGLang's envelope (nested under "error" for
    /v1/responses), and passes the routes of OWN_RENDERING to SGLang's handler. Idempotent; nothing changes
    on servers without a dLLM algorithm. Returns None.
    """
    if getattr(server_args, "dllm_algorithm", None) is None:
        return
    from fastapi.exceptions import RequestValidationError
    from sglang.srt.entrypoints import http_server

    handlers = http_server.app.exception_handlers
    original = handlers.get(RequestValidationError)
    if original is None or getattr(original, "renders_clean_messages", False):
        return
    handlers[RequestValidationError] = _clean_handler(original)


def _clean_handler(original):
    from http import HTTPStatus

    from fastapi.responses import ORJSONResponse
    from sglang.srt.entrypoints.openai.protocol import ErrorResponse

    async def handler(request, exc):
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if path.startswith(OWN_RENDERING):
            return await original(request, exc)
        error = ErrorResponse(message=validation_message(exc.errors()), type=HTTPStatus.BAD_REQUEST.phrase,
                              code=HTTPStatus.BAD_REQUEST.value).model_dump()
        content = {"error": {k: error[k] for k in ("message", "type", "param", "code")}} \
            if path.startswith("/v1/responses") else error
        return ORJSONResponse(status_code=HTTPStatus.BAD_REQUEST.value, content=content)

    handler.renders_clean_messages = True
    return handler
