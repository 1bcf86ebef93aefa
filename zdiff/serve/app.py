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

from ..checkpoint.tokenizer import Tokenizer
from ..errors import ZdiffError
from ..eval.scoring import score_sequences
from ..generation.engine import Engine
from .chat_template import ChatTemplate, ChatTemplateError
from .metrics import CONTENT_TYPE, ServerMetrics
from .openai_format import DONE, ResponseFormat, Usage, completion_logprobs, error_object, sse
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
    "stop_tokens": "stop_token_ids",
    "verify_length": "verify_length",
    "expert_budget": "expert_budget",
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
    app.exception_handler(APIError)(_api_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(StarletteHTTPException)(_http_error)
    endpoints = _Endpoints(served, engine, worker, metrics, api_key)
    authorized = [Depends(endpoints.authorized)]
    app.get("/health")(endpoints.health)
    app.get("/metrics")(endpoints.prometheus)
    app.get("/v1/models", dependencies=authorized)(endpoints.models)
    app.post("/v1/completions", dependencies=authorized)(endpoints.completions)
    app.post("/v1/chat/completions", dependencies=authorized)(endpoints.chat_completions)
    return app


async def _api_error(request, exc: APIError):
    return exc.response()


async def _invalid(request, exc: RequestValidationError):
    return _validation_error(exc).response()


async def _http_error(request, exc: StarletteHTTPException):
    return APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()


class _Endpoints:
    """One method per endpoint over the served model, its engine worker and the metrics."""

    def __init__(self, served: ServedModel, engine: Engine, worker: EngineWorker, metrics: ServerMetrics,
                 api_key: str | None):
        self.served, self.engine, self.worker, self.metrics, self.api_key = served, engine, worker, metrics, api_key

    def authorized(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send `Authorization: Bearer KEY`)", code="invalid_api_key")

    async def health(self):
        if self.worker.dead is not None:
            raise APIError(503, self.worker.dead, kind="server_error")
        return {"status": "ok"}

    async def prometheus(self):
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def models(self):
        return {
            "object": "list",
            "data": [
                {
                    "id": self.served.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "zdiff",
                    "max_model_len": self.served.max_len,
                }
            ],
        }

    def served_model(self, body: SamplingRequest) -> None:
        if body.model != self.served.name:
            raise APIError(
                404,
                f"model: this server serves {self.served.name!r}, got {body.model!r}",
                param="model",
                code="model_not_found",
            )

    async def completions(self, body: CompletionRequest, request: Request):
        self.served_model(body)
        tokenizer = self.served.tokenizer
        prompts = [encode_text(tokenizer, p, "prompt") if isinstance(p, str) else list(p) for p in body.prompts]
        return await self.generate(request, body, prompts, chat=False)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request):
        self.served_model(body)
        if self.served.chat_template is None:
            raise APIError(
                400,
                f"model {self.served.name} has no chat template (no chat_template in its "
                "tokenizer_config.json); use /v1/completions",
                param="messages",
            )
        try:
            text = self.served.chat_template.render([m.for_template() for m in body.messages])
        except ChatTemplateError as err:
            raise APIError(400, f"messages: {err}", param="messages") from None
        return await self.generate(request, body, [encode_text(self.served.tokenizer, text, "messages")], chat=True)

    async def generate(self, request: Request, body: SamplingRequest, prompts: list[list[int]], chat: bool):
        """n choices for each prompt, all in the engine at once; one response (or one stream) with them all."""
        fmt = ResponseFormat(chat, self.served.name)
        gone = asyncio.ensure_future(_disconnected(request))  # one watcher: the runs share the disconnect
        runs: list[_Run] = []
        try:
            for prompt in prompts:
                for choice in range(body.n):
                    runs.append(await self.start(body, prompt, chat, choice, len(runs), fmt, gone))
        except BaseException:
            gone.cancel()
            for run in runs:
                run.cancel()
            raise
        if body.stream:
            stream = _stream(runs, fmt, body, gone)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            outcomes = await asyncio.gather(*(run.outcome() for run in runs))
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; the slots are already given back
        except EngineFailed as err:
            raise APIError(500, str(err), kind="server_error") from None
        finally:
            gone.cancel()
            for run in runs:
                run.cancel()
        choices = []
        for run, (text, reason, ids) in zip(runs, outcomes):
            logprobs = None
            if getattr(body, "echo", False) or getattr(body, "logprobs", None) is not None:
                text, logprobs = await self.scored(run, text, body)
            choices.append(fmt.choice(run.index, text, reason, ids if body.return_token_ids else None, logprobs))
        usage = Usage.total([run.usage() for run in runs], prompt_tokens=sum(len(p) for p in prompts))
        return fmt.response_of(choices, usage)

    async def start(self, body, prompt, chat, choice, index, fmt, gone) -> _Run:
        prompt_param = "messages" if chat else "prompt"
        max_tokens = body.requested_max_tokens
        if max_tokens is None:
            max_tokens = max(self.served.max_len - len(prompt), 1) if chat else COMPLETION_DEFAULT_MAX_TOKENS
        try:
            params = engine_params(body, self.served.defaults, max(max_tokens, 1), self.served.stop_tokens, choice)
        except FieldError as err:
            raise APIError(400, str(err), param=err.param) from None
        if max_tokens == 0:  # echo-only scoring: nothing for the engine to do, but the same checks
            try:
                self.engine.validate(prompt, params)
            except ZdiffError as err:
                raise _engine_error(err, prompt_param) from None
            self.metrics.prompt_tokens.inc(len(prompt))
            return _Run(self.served, body, None, prompt, fmt, self.worker, self.metrics, index, gone)
        try:
            submission = self.worker.submit(prompt, params)
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
        run = _Run(self.served, body, submission, prompt, fmt, self.worker, self.metrics, index, gone)
        try:
            await submission.accepted()  # before any byte is sent, so a refusal is still a 400
        except ZdiffError as err:
            raise _engine_error(err, prompt_param) from None
        except EngineFailed as err:
            raise APIError(500, str(err), kind="server_error") from None
        self.metrics.prompt_tokens.inc(len(prompt))
        return run

    async def scored(self, run: _Run, text: str, body: SamplingRequest) -> tuple[str, dict | None]:
        """echo (the prompt in front of the text) and logprobs: the exact AR distribution of every listed token,
        from one scoring forward over prompt + completion after generation (the decode step is untouched)."""
        tokens = run.prompt + run.text.tokens
        if body.echo:
            text = self.served.tokenizer.decode(run.prompt) + text
        if body.logprobs is None:
            return text, None
        (scores,) = await asyncio.to_thread(score_sequences, self.engine.model, [tokens], top_n=body.logprobs)
        first = 0 if body.echo else len(run.prompt)
        offset = 0 if body.echo else len(self.served.tokenizer.decode(run.prompt))
        return text, completion_logprobs(self.served.tokenizer.decode, tokens, scores, first, offset)


class _ClientGone(Exception):
    """The client closed the connection before its request finished."""


class _Run:
    """One choice of an accepted request: updates from the worker -> text (stop strings) -> its choice / chunks.

    Every wait for the engine races the client's disconnect (`gone`, shared by the choices of a request), so
    a client that leaves (mid-stream, while still queued, or while waiting for a non-streamed answer) gets its
    slots back at the next engine step, whether or not anything was being sent to it. `submission` None: an
    echo-only request (max_tokens 0) that the engine never sees."""

    def __init__(
        self,
        served: ServedModel,
        body: SamplingRequest,
        submission: Submission | None,
        prompt: list[int],
        fmt: ResponseFormat,
        worker: EngineWorker,
        metrics: ServerMetrics,
        index: int,
        gone: asyncio.Future,
    ):
        self.body, self.submission, self.prompt, self.index = body, submission, prompt, index
        self.fmt, self.worker, self.metrics, self.gone = fmt, worker, metrics, gone
        self.text = TextStream(served.tokenizer.decode, body.stop_strings)
        self.finished: Update | None = None
        self._usage: Usage | None = None

    def cancel(self) -> None:
        if self.submission is not None and self.finished is None:
            self.worker.cancel(self.submission)  # the worker ignores a request that already finished

    async def _next_update(self) -> Update:
        update = asyncio.ensure_future(self.submission.next())
        await asyncio.wait([update, self.gone], return_when=asyncio.FIRST_COMPLETED)
        if not update.done():
            update.cancel()
            raise _ClientGone
        return update.result()

    async def _deltas(self):
        """(text, token ids) per update until the engine reports the request finished; the
        request is cancelled in the engine if this ends any other way."""
        try:
            while True:
                update = await self._next_update()
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
            self.cancel()

    def _finish_reason(self) -> str:
        if self.submission is None:
            return "length"
        return "stop" if self.text.stopped or self.finished.finish_reason == "stop" else self.finished.finish_reason

    def usage(self) -> Usage:
        """Usage of the finished choice (counted once into the metrics)."""
        if self._usage is None:
            completion = len(self.text.tokens)
            self.metrics.completion_tokens.inc(completion)
            result = self.finished.result if self.finished is not None else None
            passes = (result.forward_passes, result.prefill_passes) if result is not None else (0, 0)
            self._usage = Usage(len(self.prompt), completion, *passes)
        return self._usage

    async def outcome(self) -> tuple[str, str, list[int]]:
        """(text, finish reason, token ids) once the choice has finished."""
        if self.submission is not None:
            async with aclosing(self._deltas()) as deltas:
                text = "".join([t async for t, _ in deltas])
        else:
            text = ""
        return text, self._finish_reason(), self.text.tokens

    async def chunks(self):
        """The choice's stream chunks: (chat) the role, then the deltas, then the finish reason."""
        if self.fmt.chat:
            yield self.fmt.role_chunk(self.index)
        async with aclosing(self._deltas()) as deltas:  # closed (slot freed) when Starlette drops the stream
            async for text, ids in deltas:
                if text or (self.body.return_token_ids and ids):
                    yield self.fmt.chunk(text, token_ids=ids if self.body.return_token_ids else None, index=self.index)
        yield self.fmt.chunk("", finish_reason=self._finish_reason(), index=self.index)


async def _merged(runs: list[_Run]):
    """The chunks of all choices, in the order they arrive (exceptions of any choice reach the caller)."""
    if len(runs) == 1:
        async for chunk in runs[0].chunks():
            yield chunk
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(run: _Run):
        try:
            async for chunk in run.chunks():
                await queue.put(chunk)
        except Exception as exc:  # _ClientGone, EngineFailed: handed to the consumer
            await queue.put(exc)
        await queue.put(done)

    tasks = [asyncio.ensure_future(pump(run)) for run in runs]
    try:
        remaining = len(runs)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()


async def _stream(runs: list[_Run], fmt: ResponseFormat, body: SamplingRequest, gone: asyncio.Future):
    try:
        async with aclosing(_merged(runs)) as chunks:
            async for chunk in chunks:
                yield sse(chunk)
    except _ClientGone:
        return
    except EngineFailed as err:  # the status line has gone out: report it in the stream, as vLLM does
        yield sse(error_object(str(err), kind="server_error"))
        return
    finally:
        gone.cancel()
        for run in runs:
            run.cancel()
    prompts = {run.index // body.n: len(run.prompt) for run in runs}
    usage = Usage.total([run.usage() for run in runs], prompt_tokens=sum(prompts.values()))
    if body.stream_options is not None and body.stream_options.include_usage:
        yield sse(fmt.usage_chunk(usage))
    yield sse(DONE)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
