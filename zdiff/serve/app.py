"""The FastAPI application: OpenAI routes, auth, errors, streaming, on one EngineWorker."""

from __future__ import annotations

import asyncio
import hmac
import re
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ZdiffError
from ..generation.engine import Engine
from ..train.data import Tokenizer
from .chat_template import ChatTemplate, ChatTemplateError
from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_format import DONE, ResponseFormat, Usage, error_object, sse
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FieldError,
    SamplerDefaults,
    SamplingRequest,
    engine_params,
)
from .text_stream import TextStream
from .worker import EngineFailed, EngineWorker, QueueFull, Submission, Update

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context
RETRY_AFTER_SECONDS = 1
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
# engine field names in its one-line errors -> the request field a client sets
ENGINE_FIELDS = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "mix_weight": "mix_weight",
    "seed": "seed",
    "mode": "mode",
    "sampler": "sampler",
    "prompt": "prompt",
}


@dataclass(frozen=True)
class ServedModel:
    """What the HTTP layer knows about the checkpoint behind the engine."""

    name: str
    tokenizer: Tokenizer
    defaults: SamplerDefaults
    stop_tokens: tuple[int, ...]
    max_len: int
    chat_template: ChatTemplate | None = None


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code, self.headers = (
            status,
            message,
            param,
            kind,
            code,
            headers,
        )

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_object(self.message, param=self.param, kind=self.kind, code=self.code),
            status_code=self.status,
            headers=self.headers,
        )


def _validation_error(exc: RequestValidationError) -> APIError:
    """Pydantic's first complaint as one line naming the field (e.g. `temperature: ... got -1`)."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
    if not loc and first.get("type") in ("model_attributes_type", "dict_type"):
        return APIError(400, f"the request body must be a JSON object, got {_json_kind(first.get('input'))}")
    message = re.sub(r"^Value error, ", "", first["msg"])
    if first.get("type") == "missing":
        return APIError(400, f"{'.'.join(loc)}: field required", param=".".join(loc) or None)
    if re.match(r"^\w+: ", message):  # our validators already name the field
        return APIError(400, message, param=message.split(":")[0])
    # union types report every branch (`prompt.str`, `prompt.list[int].0`): keep the field path only
    param = ".".join(part for part in loc if not re.search(r"[\[\]]|^(str|int|float|bool)$", part)) or None
    got = f", got {first['input']!r}" if "input" in first and not isinstance(first["input"], dict) else ""
    return APIError(400, f"{param}: {message}{got}", param=param)


def _json_kind(value) -> str:
    kinds = {list: "a JSON array", str: "a JSON string", bool: "true or false", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def encode_text(tokenizer: Tokenizer, text: str, param: str) -> list[int]:
    """Token ids of request text; text that is not valid Unicode (a lone UTF-16 surrogate, which JSON's
    \\ud800 escapes can carry) is the client's error, a 400 naming the field."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise APIError(400, f"{param}: not valid Unicode text ({err.reason} at character {err.start}: "
                            f"{text[err.start:err.end]!r})", param=param) from None
    return tokenizer.encode(text).tolist()


def _engine_error(err: ZdiffError, prompt_param: str) -> APIError:
    message = str(err)
    field = re.match(r"^(\w+):", message)  # the engine's errors start with the field they are about
    param = ENGINE_FIELDS.get(field.group(1)) if field else None
    for engine_name, api_name in ENGINE_FIELDS.items():  # speak the client's field names
        message = re.sub(rf"\b{engine_name}\b", api_name, message)
    return APIError(400, message, param=prompt_param if param == "prompt" else param)


class _CountRequests:
    """ASGI middleware: zdiff_requests_total{endpoint, status} (pure ASGI, so streams pass untouched)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                path = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)


def build_app(served: ServedModel, engine: Engine, *, max_queue: int = 64, api_key: str | None = None,
              on_engine_death=None) -> FastAPI:
    """on_engine_death(message): called from the engine thread when it ends for good (`zdiff serve`
    stops the server then, and exits non-zero, rather than answer 503 forever)."""
    metrics = ServerMetrics()
    worker = EngineWorker(engine, max_queue=max_queue, on_step=metrics.on_step, on_death=on_engine_death)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)  # uvicorn has waited for open requests: this drains the rest

    app = FastAPI(title="zdiff serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker, app.state.metrics = worker, metrics
    app.add_middleware(_CountRequests, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send `Authorization: Bearer KEY`)", code="invalid_api_key")

    @app.get("/health")
    async def health():
        if worker.dead is not None:
            raise APIError(503, worker.dead, kind="server_error")
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": served.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "zdiff",
                    "max_model_len": served.max_len,
                }
            ],
        }

    def served_model(body: SamplingRequest) -> None:
        if body.model != served.name:
            raise APIError(
                404,
                f"model: this server serves {served.name!r}, got {body.model!r}",
                param="model",
                code="model_not_found",
            )

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        served_model(body)
        if isinstance(body.prompt, str):
            prompt = encode_text(served.tokenizer, body.prompt, "prompt")
        else:
            prompt = list(body.prompt)
        return await _generate(request, body, prompt, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        served_model(body)
        if served.chat_template is None:
            raise APIError(
                400,
                f"model {served.name} has no chat template (no chat_template in its "
                "tokenizer_config.json); use /v1/completions",
                param="messages",
            )
        try:
            text = served.chat_template.render([m.for_template() for m in body.messages])
        except ChatTemplateError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        return await _generate(request, body, encode_text(served.tokenizer, text, "messages"), chat=True)

    async def _generate(request: Request, body: SamplingRequest, prompt: list[int], chat: bool):
        prompt_param = "messages" if chat else "prompt"
        max_tokens = body.requested_max_tokens
        if max_tokens is None:
            max_tokens = max(served.max_len - len(prompt), 1) if chat else COMPLETION_DEFAULT_MAX_TOKENS
        try:
            params = engine_params(body, served.defaults, max_tokens, served.stop_tokens)
        except FieldError as err:
            raise APIError(400, str(err), param=err.param) from None
        try:
            submission = worker.submit(prompt, params)
        except QueueFull as err:
            raise APIError(
                503,
                f"the server is at capacity ({err}); retry later",
                kind="server_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except EngineFailed as err:
            raise APIError(503, str(err), kind="server_error") from None
        try:
            await submission.accepted()  # before any byte is sent, so a refusal is still a 400
        except ZdiffError as err:
            raise _engine_error(err, prompt_param) from None
        except EngineFailed as err:
            raise APIError(500, str(err), kind="server_error") from None
        metrics.prompt_tokens.inc(len(prompt))
        run = _Run(served, body, submission, len(prompt), ResponseFormat(chat, served.name), worker, metrics, request)
        if body.stream:
            return StreamingResponse(
                run.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return await run.collect()

    return app


class _ClientGone(Exception):
    """The client closed the connection before its request finished."""


class _Run:
    """One accepted request: updates from the worker -> text (stop strings) -> response or SSE chunks.

    Every wait for the engine races the client's disconnect, so a client that leaves (mid-stream,
    while still queued, or while waiting for a non-streamed answer) gets its slot back at the
    next engine step, whether or not anything was being sent to it."""

    def __init__(
        self,
        served: ServedModel,
        body: SamplingRequest,
        submission: Submission,
        prompt_tokens: int,
        fmt: ResponseFormat,
        worker: EngineWorker,
        metrics: ServerMetrics,
        request: Request,
    ):
        self.body, self.submission, self.prompt_tokens = body, submission, prompt_tokens
        self.fmt, self.worker, self.metrics, self.request = fmt, worker, metrics, request
        self.text = TextStream(served.tokenizer.decode, body.stop_strings)
        self.finished: Update | None = None

    async def _next_update(self, gone: asyncio.Future) -> Update:
        update = asyncio.ensure_future(self.submission.next())
        await asyncio.wait([update, gone], return_when=asyncio.FIRST_COMPLETED)
        if not update.done():
            update.cancel()
            raise _ClientGone
        return update.result()

    async def _deltas(self):
        """(text, token ids) per update until the engine reports the request finished; the
        request is cancelled in the engine if this ends any other way."""
        gone = asyncio.ensure_future(_disconnected(self.request))
        try:
            while True:
                update = await self._next_update(gone)
                if update.finish_reason == "error":  # a failed engine step ended it: an error, not an answer
                    self.finished = update
                    raise EngineFailed(update.error or "the engine failed during a step")
                before = len(self.text.tokens)
                text = self.text.push(update.tokens, update.finished)
                fresh = self.text.tokens[before:]
                if self.text.stopped and not update.finished:
                    self.worker.cancel(self.submission)  # the stop string ended it; usage waits for the result
                yield text, fresh
                if update.finished:
                    self.finished = update
                    return
        finally:
            gone.cancel()
            if self.finished is None:
                self.worker.cancel(self.submission)  # the worker ignores a request that already finished

    def _finish_reason(self) -> str:
        return "stop" if self.text.stopped or self.finished.finish_reason == "stop" else self.finished.finish_reason

    def _final_usage(self) -> Usage:
        """Usage of the finished request (counted once into the metrics)."""
        completion = len(self.text.tokens)
        self.metrics.completion_tokens.inc(completion)
        result = self.finished.result
        return Usage(self.prompt_tokens, completion, result.forward_passes, result.prefill_passes)

    async def collect(self):
        try:
            async with aclosing(self._deltas()) as deltas:
                text = "".join([t async for t, _ in deltas])
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; the slot is already given back
        except EngineFailed as err:
            raise APIError(500, str(err), kind="server_error") from None
        ids = self.text.tokens if self.body.return_token_ids else None
        return self.fmt.response(text, self._finish_reason(), self._final_usage(), ids)

    async def events(self):
        if self.fmt.chat:
            yield sse(self.fmt.role_chunk())
        try:
            async with aclosing(self._deltas()) as deltas:  # closed (slot freed) when Starlette drops the stream
                async for text, ids in deltas:
                    if text or (self.body.return_token_ids and ids):
                        yield sse(self.fmt.chunk(text, token_ids=ids if self.body.return_token_ids else None))
        except _ClientGone:
            return
        except EngineFailed as err:  # the status line has gone out: report it in the stream, as vLLM does
            yield sse(error_object(str(err), kind="server_error"))
            return
        yield sse(self.fmt.chunk("", finish_reason=self._finish_reason()))
        usage = self._final_usage()
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            yield sse(self.fmt.usage_chunk(usage))
        yield sse(DONE)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
