"""The OpenAI-compatible HTTP API (FastAPI): routes, request schemas, errors.

Imported only when a server starts: FastAPI and pydantic are not light.
What the stack does is left to it: request parsing and validation (pydantic),
the body size limit (FastAPI ``max_body_size``), Bearer parsing (``HTTPBearer``),
server-sent events (``EventSourceResponse``, ``format_sse_event``) and noticing a
client that leaves mid-stream (Starlette's ``StreamingResponse`` cancels the stream).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmk.api import SlmkError, UsageError, __version__

from .structured import ResponseFormat, check_can_constrain, guidance_of
from .tools import MessageToolCall, ToolChoice, ToolDefinition, ToolPlan, conversation, plan_tools
from .workers import Job, ModelWorker, Refused

log = logging.getLogger("slmk.serve")

#: Per OpenAI's API: what each status code's error is called.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


# --------------------------------------------------------------------------- schemas
class _Lenient(BaseModel):
    # Clients send fields this server does not use (user, metadata, store ...): ignore them.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # tool calling (tools.py): an assistant turn's calls, a tool result's call
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Sampling(_Lenient):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)  # one answer per request
    presence_penalty: float | None = Field(default=None, ge=0, le=0)  # not applied: only 0 is honest
    frequency_penalty: float | None = Field(default=None, ge=0, le=0)
    # Extensions other local servers (vLLM) accept too: the runtime has these knobs.
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] | None = None
    # structured outputs and tools: structured.py, tools.py
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Literal[False] = False
    suffix: None = None
    logprobs: None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    response_format: ResponseFormat | None = None  # structured.py


# --------------------------------------------------------------------------- errors
def error_response(status: int, message: str, *, code=None, param=None, headers=None) -> JSONResponse:
    body = {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _refusal_of(exc: BaseException) -> Refused:
    """The HTTP answer to an error a runtime raised before the first token."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, SlmkError):
        text = exc.one_line()
        if "context" in exc.message and "prompt" in exc.message:
            # the runtime's hint (truncate=True) is for Python callers, not HTTP clients
            return Refused(400, exc.message, code="context_length_exceeded", param="messages")
        if isinstance(exc, UsageError):
            return Refused(400, text, code="invalid_request")
        return Refused(500, text, code="runtime_error")
    log.exception("unexpected error before the first token", exc_info=exc)
    return Refused(500, f"internal error: {type(exc).__name__}", code="internal_error")


class _ClientGone(Exception):
    pass


async def _until_disconnect(request: Request, work):
    """Run ``work`` (a coroutine) unless the client leaves first; then cancel it."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        with suppress(BaseException):
            await task
        raise _ClientGone()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


# --------------------------------------------------------------------------- the app
def create_app(workers: dict[str, ModelWorker], *, api_key: str | None, max_body_bytes: int, max_tokens_limit: int):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        for worker in workers.values():
            worker.attach(loop)
        yield

    app = FastAPI(
        title="slmk serve",
        version=__version__,
        lifespan=lifespan,
        max_body_size=max_body_bytes,
        docs_url=None,  # a model endpoint, not a website
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False)

    # A default, not Annotated[...]: with postponed annotations FastAPI cannot see the local `bearer`.
    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise Refused(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error')}")
        if tuple(first.get("loc", ())) == ("body",):
            return error_response(400, "the request body must be a JSON object, sent as Content-Type: application/json")
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(where) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request"))
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = {413: "the request body is too large", 404: f"no route {request.url.path}"}.get(
            exc.status_code, str(exc.detail)
        )
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    def worker_for(name: str) -> ModelWorker:
        worker = workers.get(name)
        if worker is None:
            raise Refused(
                404,
                f"the model {name!r} does not exist here; served: {', '.join(sorted(workers))}",
                code="model_not_found",
                param="model",
            )
        return worker

    def model_card(worker: ModelWorker) -> dict[str, Any]:
        return {
            "id": worker.name,
            "object": "model",
            "created": worker.created,
            "owned_by": "slmk",
            # not in OpenAI's schema: what a client may want to size its requests
            "context_length": worker.context_length or None,
            "runtime": worker.runtime,
            "generation_defaults": worker.defaults,  # the build's genai_config.json search section
        }

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: w.snapshot() for name, w in workers.items()}}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models():
        return {"object": "list", "data": [model_card(w) for w in workers.values()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def get_model(name: str):
        return model_card(worker_for(name))

    def search_of(body: _Sampling, max_tokens: int | None) -> dict[str, Any]:
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise Refused(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}",
                code="invalid_value",
                param="max_tokens",
            )
        search: dict[str, Any] = {"max_new_tokens": max_tokens or max_tokens_limit}
        if body.min_tokens and body.min_tokens > search["max_new_tokens"]:
            raise Refused(
                400,
                f"min_tokens ({body.min_tokens}) is more than max_tokens ({search['max_new_tokens']})",
                code="invalid_value",
                param="min_tokens",
            )
        if body.temperature is not None:
            search["temperature"] = body.temperature
            # OpenAI's temperature samples; 0 is greedy (the runtimes read 0 so too).
            search["do_sample"] = body.temperature > 0
        for ours, theirs in (("top_p", "top_p"), ("top_k", "top_k"), ("repetition_penalty", "repetition_penalty")):
            value = getattr(body, theirs)
            if value is not None:
                search[ours] = value
        if body.seed is not None:
            search["random_seed"] = body.seed
        return search

    def stops_of(body: _Sampling) -> list[str]:
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise Refused(400, "stop holds at most 4 strings", code="invalid_value", param="stop")
        return stops

    def finish_reason(job: Job, worker: ModelWorker) -> str:
        if job.outcome == "stop" or job.last_token_is_end:
            return "stop"
        stats = job.stats
        if stats is None:
            return "stop"
        if job.last_token_is_end is False:
            return "length"
        wanted = job.search.get("max_new_tokens") or 0
        full = worker.context_length and stats.prompt_tokens + stats.generated_tokens >= worker.context_length
        return "length" if stats.generated_tokens >= wanted or full else "stop"

    def usage(job: Job) -> dict[str, int]:
        prompt = job.stats.prompt_tokens if job.stats else 0
        completion = job.stats.generated_tokens if job.stats else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def constrain(worker: ModelWorker, job: Job, response_format: ResponseFormat | None, plan: ToolPlan | None):
        """Carry response_format and tools to the runtime as generation options (structured.py, tools.py)."""
        guidance = guidance_of(response_format)
        if guidance and plan is not None:
            raise Refused(
                400,
                "response_format and tools cannot be used together: a tool call is not the response format",
                code="invalid_value",
                param="response_format",
            )
        if guidance:
            check_can_constrain(worker)
            job.search["guidance"] = guidance
        if plan is not None:
            if "guidance" in plan.search:
                check_can_constrain(worker, "tool_choice")
            job.search.update(plan.search)

    async def run(
        request: Request,
        worker: ModelWorker,
        job: Job,
        *,
        chat: bool,
        include_usage: bool,
        tool_plan: ToolPlan | None = None,
    ):
        try:
            await _until_disconnect(request, worker.start(job))
        except _ClientGone:
            return Response(status_code=499)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _refusal_of(exc) from exc
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def envelope(choice: dict[str, Any], *, stream: bool) -> dict[str, Any]:
            out = {
                "id": ident,
                "object": f"{kind}.chunk" if stream and chat else kind,
                "created": created,
                "model": worker.name,
                "choices": [choice],
                "system_fingerprint": None,
            }
            if stream and include_usage:
                out["usage"] = None
            return out

        if not request.state.stream:
            try:
                text = await _until_disconnect(request, _collect(job))
            except _ClientGone:
                return Response(status_code=499)
            if job.outcome == "error":
                raise Refused(500, f"generation failed: {job.error}", code="runtime_error")
            reason = finish_reason(job, worker)
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
                if tool_plan is not None:
                    reader = tool_plan.reader()
                    content = reader.feed(text)
                    tail, calls = reader.finish()
                    if calls:
                        message = {**message, "content": (content + tail) or None, "tool_calls": calls}
                        reason = "tool_calls"
                choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            return JSONResponse({**envelope(choice, stream=False), "usage": usage(job)})

        async def events() -> AsyncIterator[bytes]:
            try:
                if chat:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield _sse(envelope(first, stream=True))
                reader = tool_plan.reader() if tool_plan is not None else None
                async for text in job.pieces():
                    if reader is not None:
                        text = reader.feed(text)
                        if not text:
                            continue
                    if chat:
                        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": None, "logprobs": None}
                    yield _sse(envelope(choice, stream=True))
                if job.outcome == "error":
                    # Headers are sent: the error travels as an event, the way OpenAI's stream reports one.
                    yield _sse({"error": {"message": f"generation failed: {job.error}", "type": "server_error"}})
                    return
                reason = finish_reason(job, worker)
                if reader is not None:
                    tail, calls = reader.finish()
                    if tail:
                        yield _sse(
                            envelope({"index": 0, "delta": {"content": tail}, "finish_reason": None}, stream=True)
                        )
                    for number, call in enumerate(calls):
                        delta = {"tool_calls": [{"index": number, **call}]}
                        yield _sse(envelope({"index": 0, "delta": delta, "finish_reason": None}, stream=True))
                    if calls:
                        reason = "tool_calls"
                if chat:
                    last = {"index": 0, "delta": {}, "finish_reason": reason}
                else:
                    last = {"index": 0, "text": "", "finish_reason": reason, "logprobs": None}
                yield _sse(envelope(last, stream=True))
                if include_usage:
                    yield _sse({**envelope(last, stream=True), "choices": [], "usage": usage(job)})
                yield format_sse_event(data_str="[DONE]")
            finally:
                job.stop()  # the client left (or the stream ended): stop generating now

        return EventSourceResponse(events())

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatRequest, request: Request):
        worker = worker_for(body.model)
        plan = plan_tools(worker, body.tools, body.tool_choice, body.parallel_tool_calls)
        messages = conversation([_message(i, m) for i, m in enumerate(body.messages)], body.messages, plan)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        job = Job(messages, search_of(body, max_tokens), stops_of(body), body.min_tokens)
        constrain(worker, job, body.response_format, plan)
        request.state.stream = body.stream
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run(request, worker, job, chat=True, include_usage=include_usage, tool_plan=plan)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        worker = worker_for(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise Refused(400, "prompt must be one string", code="invalid_value", param="prompt")
        # The runtime hook generates from conversations: the prompt is one user turn, in the model's template.
        messages = [{"role": "user", "content": prompts[0]}]
        job = Job(messages, search_of(body, body.max_tokens), stops_of(body), body.min_tokens)
        constrain(worker, job, body.response_format, None)
        request.state.stream = body.stream
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run(request, worker, job, chat=False, include_usage=include_usage)

    return _DeclaredSizeLimit(app, max_body_bytes)


class _DeclaredSizeLimit:
    """Answers 413 in OpenAI's error format when Content-Length is over the limit.

    FastAPI's ``max_body_size`` enforces the limit on every body (chunked ones too), but
    for a declared length it answers in plain text; this check runs first so clients get
    the JSON error they parse.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                response = error_response(
                    413, f"the request body is {int(declared)} bytes; this server takes at most {self.max_body_bytes}"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _collect(job: Job) -> str:
    return "".join([text async for text in job.pieces()])


def _sse(data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _message(index: int, message: ChatMessage) -> dict[str, str]:
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
    return {"role": role, "content": content or ""}
