"""The OpenAI-compatible HTTP API (FastAPI): routes, request schemas, errors.

Imported only when a server starts: FastAPI and pydantic are not light.
What the stack does is left to it: request parsing and validation (pydantic),
the body size limit (FastAPI ``max_body_size``), CORS (Starlette), server-sent
events (``EventSourceResponse``, ``format_sse_event``) and noticing a client that
leaves mid-stream (Starlette's ``StreamingResponse`` cancels the stream).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmk.api import SlmkError, UsageError, __version__

from .metrics import Metrics, Observer
from .structured import ResponseFormat, check_can_constrain, guidance_of
from .tools import MessageToolCall, ToolChoice, ToolDefinition, ToolPlan, conversation, plan_tools
from .workers import Job, ModelWorker, Refused

#: OpenAI's limit on alternatives per token (top_logprobs; logprobs of completions).
MAX_TOP_LOGPROBS = 20

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


# --------------------------------------------------------------------------- fields
#: Request fields this server accepts and does not act on: they ask nothing of the answer.
METADATA_FIELDS = frozenset({"user", "metadata", "safety_identifier"})


def _empty(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


#: OpenAI request fields this server does not do, each with why and the values that ask for
#: nothing (those pass). A value that asks for something is a 400 naming the field: never
#: silently ignored. A field in neither this table, METADATA_FIELDS nor the request model is
#: refused as unrecognized, as OpenAI's own API refuses it. A feature that lands moves from
#: here to a typed field of the request model.
UNSUPPORTED_CHAT: dict[str, tuple[str, Any]] = {
    "n": ("one answer per request: send n requests", lambda v: v in (None, 1)),
    "presence_penalty": ("not applied by the runtimes (repetition_penalty is)", lambda v: v in (None, 0)),
    "frequency_penalty": ("not applied by the runtimes (repetition_penalty is)", lambda v: v in (None, 0)),
    "logit_bias": ("the runtimes cannot bias tokens", _empty),
    "functions": ("legacy function calling is not supported", _empty),
    "function_call": ("legacy function calling is not supported", lambda v: v in (None, "none")),
    "service_tier": ("there is one tier", lambda v: v in (None, "auto", "default")),
    "modalities": ("text only", lambda v: v in (None, ["text"])),
    "audio": ("text only", _empty),
    "prediction": ("predicted outputs are not supported", _empty),
    "store": ("answers are not stored", _empty),
    "reasoning_effort": ("the served models do not reason on demand", lambda v: v is None),
    "verbosity": ("not a knob of these models", lambda v: v is None),
    "web_search_options": ("no web search", _empty),
}
UNSUPPORTED_COMPLETIONS: dict[str, tuple[str, Any]] = {
    "n": UNSUPPORTED_CHAT["n"],
    "presence_penalty": UNSUPPORTED_CHAT["presence_penalty"],
    "frequency_penalty": UNSUPPORTED_CHAT["frequency_penalty"],
    "logit_bias": UNSUPPORTED_CHAT["logit_bias"],
    "best_of": ("one answer per request", lambda v: v in (None, 1)),
    "suffix": ("no fill-in-the-middle: the prompt is answered, not continued", _empty),
}


def check_fields(body: BaseModel, unsupported: dict[str, tuple[str, Any]]) -> None:
    """Refuse (400, naming it) a field the request model does not take, unless it asks for nothing."""
    for name, value in (body.model_extra or {}).items():
        if name in METADATA_FIELDS:
            continue
        if name not in unsupported:
            raise Refused(
                400,
                f"unrecognized request argument {name!r}: this server takes OpenAI's fields it acts on "
                "and refuses the others",
                code="unrecognized_parameter",
                param=name,
            )
        why, asks_nothing = unsupported[name]
        if not asks_nothing(value):
            raise Refused(400, f"{name} is not supported here: {why}", code="unsupported_parameter", param=name)


# --------------------------------------------------------------------------- schemas
def _plain_text(text: str) -> str:
    # A lone surrogate cannot be encoded for the tokenizer, and the runtimes take C strings,
    # which end at the first NUL: refuse both rather than fail (or cut the text) later.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    if "\x00" in text:
        raise ValueError("holds a NUL character, which the runtimes cannot take")
    return text


Text = Annotated[str, AfterValidator(_plain_text)]
#: onnxruntime-genai takes seeds as 32-bit integers.
Seed = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    # tool calling (tools.py): an assistant turn's calls, a tool result's call
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(BaseModel):
    # Fields not declared land in model_extra and are checked against the tables above.
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=1e-6, le=1)  # smaller rounds to 0 in the runtimes' floats
    stop: Text | list[Text] | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Extensions other local servers (vLLM) accept too: the runtime has these knobs.
    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # structured outputs and tools: structured.py, tools.py
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)  # 0: with echo, score the prompt only
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None  # structured.py


# --------------------------------------------------------------------------- errors
def error_response(status: int, message: str, *, code=None, param=None, headers=None) -> JSONResponse:
    body = {
        "error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": param, "code": code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def public_message(exc: BaseException, worker: ModelWorker | None = None) -> str:
    """What an HTTP client is told of a runtime's error: its message without the hint (CLI
    advice for a local user) and without the server's file paths."""
    message = exc.message if isinstance(exc, SlmkError) else " ".join(str(exc).split())
    if worker is not None:
        for folder in {str(worker.folder), str(worker.folder.resolve())}:
            message = message.replace(folder, f"model {worker.name}")
    return message


def _refusal_of(exc: BaseException, worker: ModelWorker) -> Refused:
    """The HTTP answer to an error a runtime raised before the first token."""
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, SlmkError):
        text = public_message(exc, worker)
        if "context" in exc.message and "prompt" in exc.message:
            return Refused(400, text, code="context_length_exceeded", param="messages")
        if isinstance(exc, UsageError):
            return Refused(400, text, code="invalid_request")
        return Refused(500, text, code="runtime_error")
    log.exception("unexpected error before the first token", exc_info=exc)
    return Refused(500, f"internal error: {type(exc).__name__}", code="internal_error")


def _generation_failed(exc: BaseException | None, worker: ModelWorker) -> str:
    message = public_message(exc, worker) if exc is not None else "unknown error"
    return message if message.startswith("generation failed") else f"generation failed: {message}"


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
def create_app(
    workers: dict[str, ModelWorker],
    *,
    api_key: str | None,
    max_body_bytes: int,
    max_tokens_limit: int,
    cors_origins: Sequence[str] = (),
    metrics: Metrics | None = None,
):
    metrics = metrics or Metrics()

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
    app.state.metrics = metrics
    # Added first, so CORS wraps it: a browser's preflight (no key) is answered by CORS,
    # and a 401 carries the CORS headers the browser needs to read it.
    app.add_middleware(_KeyCheck, api_key=api_key)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if len(errors) > 1 and first.get("type") != "json_invalid":
            # a union (content: text or parts) fails in each branch: the deepest error says most
            first = max(errors, key=lambda error: len(error.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error')}")
        if tuple(first.get("loc", ())) == ("body",):
            return error_response(400, "the request body must be a JSON object, sent as Content-Type: application/json")
        # a union (prompt: text or token ids) names each branch it tried: the field is what matters
        where = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_branch(part)]
        param = ".".join(where) or None
        if first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument {param!r}"
            return error_response(400, message, param=param, code="unrecognized_parameter")
        reason = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        message = f"{param}: {reason}" if param else reason
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

    def snapshot(name: str, worker: ModelWorker) -> dict[str, Any]:
        return {**worker.snapshot(), "rejected": metrics.rejected_of(name)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: snapshot(name, w) for name, w in workers.items()}}

    @app.get("/metrics")
    async def prometheus_metrics():
        gauges = {name: snapshot(name, w) for name, w in workers.items()}
        return Response(metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(w) for w in workers.values()]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return model_card(worker_for(name))

    def search_of(body: _Sampling, worker: ModelWorker, max_tokens: int | None) -> dict[str, Any]:
        if max_tokens is not None and max_tokens > max_tokens_limit:
            raise Refused(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {max_tokens_limit}",
                code="invalid_value",
                param="max_tokens",
            )
        search: dict[str, Any] = {"max_new_tokens": max_tokens_limit if max_tokens is None else max_tokens}
        if body.min_tokens and body.min_tokens > search["max_new_tokens"]:
            raise Refused(
                400,
                f"min_tokens ({body.min_tokens}) is more than max_tokens ({search['max_new_tokens']})",
                code="invalid_value",
                param="min_tokens",
            )
        if body.top_k and worker.vocab_size and body.top_k > worker.vocab_size:
            raise Refused(
                400,
                f"top_k is {body.top_k}; the model's vocabulary has {worker.vocab_size} tokens",
                code="invalid_value",
                param="top_k",
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

    def require(worker: ModelWorker, capability: str, param: str, what: str) -> None:
        if not callable(getattr(worker.sessions[0], capability, None)):
            raise Refused(
                400,
                f"{param}: the {worker.runtime} runtime of model {worker.name} cannot give {what}",
                code="unsupported_parameter",
                param=param,
            )

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
        generation = {"model": worker.name, "prompt_tokens": 0, "completion_tokens": 0, "first_token_at": None}
        request.state.generation = generation  # for the request's log line and the token counters

        def finished() -> None:
            generation["prompt_tokens"] = usage(job)["prompt_tokens"]
            generation["completion_tokens"] = usage(job)["completion_tokens"]

        def first_piece() -> None:
            if generation["first_token_at"] is None:
                generation["first_token_at"] = time.perf_counter()

        try:
            await _until_disconnect(request, worker.start(job))
        except _ClientGone:
            return Response(status_code=499)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            refusal = _refusal_of(exc, worker)
            if refusal.status == 503:
                metrics.count_rejected(worker.name, refusal.code or "busy")
            raise refusal from exc
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        logprobs_of = _chat_logprobs if chat else _completion_logprobs

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

        def echoed() -> tuple[str, list[dict[str, Any]]]:
            return (job.prompt_text, job.prompt_logprobs) if job.echo else ("", [])

        if not request.state.stream:
            try:
                text = await _until_disconnect(request, _collect(job, first_piece))
            except _ClientGone:
                return Response(status_code=499)
            finished()
            if job.outcome == "error":
                raise Refused(500, _generation_failed(job.error, worker), code="runtime_error")
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
                logprobs = logprobs_of(job.token_logprobs) if job.logprobs is not None else None
                choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": logprobs}
            else:
                prefix, prefix_entries = echoed()
                entries = prefix_entries + job.token_logprobs
                choice = {
                    "index": 0,
                    "text": prefix + text,
                    "finish_reason": reason,
                    "logprobs": logprobs_of(entries) if job.logprobs is not None else None,
                }
            return JSONResponse({**envelope(choice, stream=False), "usage": usage(job)})

        async def events() -> AsyncIterator[bytes]:
            sent = 0  # logprob entries already sent

            def piece_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
                return logprobs_of(entries) if job.logprobs is not None else None

            try:
                if chat:
                    first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield _sse(envelope(first, stream=True))
                else:
                    prefix, prefix_entries = echoed()
                    if prefix or prefix_entries:
                        choice = {"index": 0, "text": prefix, "finish_reason": None}
                        choice["logprobs"] = piece_logprobs(prefix_entries)
                        yield _sse(envelope(choice, stream=True))
                reader = tool_plan.reader() if tool_plan is not None else None
                async for text in job.pieces():
                    first_piece()
                    entries, sent = job.token_logprobs[sent:], len(job.token_logprobs)
                    if reader is not None:
                        text = reader.feed(text)
                        if not text and not entries:
                            continue
                    if chat:
                        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
                    else:
                        choice = {"index": 0, "text": text, "finish_reason": None}
                    choice["logprobs"] = piece_logprobs(entries)
                    yield _sse(envelope(choice, stream=True))
                finished()
                if job.outcome == "error":
                    # Headers are sent: the error travels as an event, the way OpenAI's stream reports one.
                    yield _sse({"error": {"message": _generation_failed(job.error, worker), "type": "server_error"}})
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
                finished()
                job.stop()  # the client left (or the stream ended): stop generating now

        return EventSourceResponse(events())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_fields(body, UNSUPPORTED_CHAT)
        worker = worker_for(body.model)
        plan = plan_tools(worker, body.tools, body.tool_choice, body.parallel_tool_calls)
        messages = conversation([_message(i, m) for i, m in enumerate(body.messages)], body.messages, plan)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        job = Job(messages, search_of(body, worker, max_tokens), stops_of(body), body.min_tokens)
        if body.top_logprobs is not None and not body.logprobs:
            raise Refused(400, "top_logprobs needs logprobs: true", code="invalid_value", param="top_logprobs")
        if body.logprobs:
            require(worker, "take_logprobs", "logprobs", "token log-probabilities")
            job.logprobs = body.top_logprobs or 0
        constrain(worker, job, body.response_format, plan)
        request.state.stream = body.stream
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run(request, worker, job, chat=True, include_usage=include_usage, tool_plan=plan)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_fields(body, UNSUPPORTED_COMPLETIONS)
        worker = worker_for(body.model)
        prompt = _one_prompt(body.prompt)
        if body.max_tokens == 0 and not body.echo:
            raise Refused(
                400, "max_tokens: 0 asks for nothing; it is for echo: true (score the prompt)", param="max_tokens"
            )
        if isinstance(prompt, str):
            # The runtime hook generates from conversations: the prompt is one user turn, in the model's template.
            job = Job([{"role": "user", "content": prompt}], search_of(body, worker, body.max_tokens), stops_of(body))
        else:
            require(worker, "generate_ids", "prompt", "answers to token ids")
            if worker.vocab_size and not all(0 <= t < worker.vocab_size for t in prompt):
                raise Refused(
                    400,
                    f"prompt: token ids must be from 0 to {worker.vocab_size - 1} (the model's vocabulary)",
                    code="invalid_value",
                    param="prompt",
                )
            job = Job([], search_of(body, worker, body.max_tokens), stops_of(body))
            job.prompt_ids = prompt
        job.min_tokens = body.min_tokens
        if body.echo:
            require(worker, "prompt_logprobs", "echo", "the prompt's tokens")
            job.echo = True
        if body.logprobs is not None:
            require(worker, "take_logprobs", "logprobs", "token log-probabilities")
            job.logprobs = body.logprobs
        constrain(worker, job, body.response_format, None)
        request.state.stream = body.stream
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        return await run(request, worker, job, chat=False, include_usage=include_usage)

    return Observer(_DeclaredSizeLimit(app, max_body_bytes), metrics)


class _KeyCheck:
    """Every route but /health needs the key (``Authorization: Bearer KEY``), checked before
    the body is read: an unauthenticated client learns nothing, not even that its JSON was bad.

    Starlette decodes headers as latin-1; the raw bytes are compared with the key's UTF-8
    bytes in constant time, so a non-ASCII key works for a client that sends it as UTF-8.
    """

    OPEN = ("/health",)

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if self.key is None or scope["type"] != "http" or scope.get("path") in self.OPEN:
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        if not hmac.compare_digest(given, self.key):
            response = error_response(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


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


async def _collect(job: Job, on_piece: Callable[[], None]) -> str:
    pieces = []
    async for text in job.pieces():
        on_piece()
        pieces.append(text)
    return "".join(pieces)


def _is_branch(part: Any) -> bool:
    # pydantic names a union's branches (str, list[int], function-after[...]) in an error's location
    return isinstance(part, str) and (part in ("str", "int") or "[" in part)


def _one_prompt(prompt: str | list[str] | list[int] | list[list[int]]) -> str | list[int]:
    """The request's one prompt: text or token ids (a batch of one is taken; more are refused)."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise Refused(
                400,
                f"prompt holds {len(prompt)} prompts; this server answers one per request",
                code="invalid_value",
                param="prompt",
            )
        prompt = prompt[0]
    if not prompt:
        raise Refused(400, "prompt is empty", code="invalid_value", param="prompt")
    return prompt


def _top(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"token": token, "logprob": logprob, "bytes": raw} for _, token, raw, logprob in entry["top"]]


def _chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's chat format: one item per answer token, with its alternatives."""
    content = [
        {"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"], "top_logprobs": _top(e)} for e in entries
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's legacy completions format: parallel lists; offsets count characters of the returned text."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [
            None if e["logprob"] is None else {token: logprob for _, token, _, logprob in e["top"]} for e in entries
        ],
        "text_offset": offsets,
    }


def _sse(data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _message(index: int, message: ChatMessage) -> dict[str, str]:
    content = message.content
    if isinstance(content, list):
        content = "".join(part.text for part in content)
    role = "system" if message.role == "developer" else message.role  # OpenAI's newer name for system
    return {"role": role, "content": content or ""}
