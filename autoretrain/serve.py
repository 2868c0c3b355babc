"""An OpenAI-compatible server for the project's models: `autoretrain serve`.

Serves several models side by side, chosen by the request's `model` field, the way vLLM serves
several LoRA adapters: typically `primary`, `canary` and candidate versions. Endpoints:
`POST /v1/chat/completions` (tools, usage, `stream: true` as server-sent events ending in
`data: [DONE]`, `stream_options.include_usage`), `GET /v1/models`, `GET /health`.
It binds 127.0.0.1 unless told otherwise; with an API key configured every `/v1` request needs
`Authorization: Bearer <key>`.

Concurrent requests to one model share forward passes: each model has a worker thread that
takes every request waiting for it and answers them with one `chat_batch`; requests with a large
body go to a second lane of their own, one at a time, so they never hold up the small ones. A
streaming request to a local model is generated on its own, token by token: content goes out as
it is generated, while tool-call text is held back and sent as parsed `tool_calls` deltas at
the end.

What a client sends is checked before a model sees it (`serve_requests`: every client error is
a 4xx with an OpenAI-shaped body naming the field); what one request may cost is bounded
(`serve_limits`, settings' `serve` block): body and message size (413), prompt tokens (400
`context_length_exceeded`), and deadlines for the headers and the body (408). A tool call the
client cannot use (a function it did not offer, arguments that are not a JSON object) comes back
as the text the model wrote, with `finish_reason: stop`. `/v1/models` names models and versions,
never paths.

## serving.json

The served models come from a JSON file (by default `<AUTORETRAIN_HOME>/serving.json`; its format,
reader and writer are in `deploy/serving.py`, and the model registry rewrites it on every slot
change). It is re-read whenever its modification time or size
changes, so a promotion takes effect without a restart:

    {
      "models": {
        "primary":   {"model_dir": "models/base-20260101"},
        "canary":    {"model_dir": "models/base-20260101", "adapter_dir": "models/cand-7/adapter"},
        "cand-7":    {"model_dir": "models/base-20260101", "adapter_dir": "models/cand-7/adapter"}
      }
    }

`model_dir` is a Hugging Face causal-LM directory; `adapter_dir` (optional) a PEFT adapter on top
of it. Relative paths are relative to the file's folder. A file that does not parse keeps the
previous mapping in service; the problem is logged and shown by `/health`. A model is loaded on
its first request and dropped when its entry changes or disappears.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoretrain.deploy.serving import ServingConfigError, ServingEntry, read_serving_config
from autoretrain.providers.base import (
    ChatModel,
    ChatResponse,
    Messages,
    ProviderError,
    Sampling,
    Tools,
)
from autoretrain.serve_limits import MAX_HEADER_BYTES, header_limits_protocol, read_body
from autoretrain.serve_requests import (
    ChatRequest,
    RequestError,
    decode_json,
    offered_names,
    parse_chat_request,
)

if TYPE_CHECKING:
    from starlette.requests import Request

    from autoretrain.settings import ServeSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000


# -- the mapping name -> model --------------------------------------------------------------


def load_local_model(name: str, entry: ServingEntry) -> ChatModel:
    from autoretrain.providers.local import LocalChatModel

    return LocalChatModel(entry.model_dir, entry.adapter_dir, name=name)


# -- batching ---------------------------------------------------------------------------------


class WorkerClosed(RuntimeError):
    """The model was replaced (serving.json changed) between lookup and submit: look it up again."""


class BatchingWorker:
    """One thread per model: answers every request waiting for it with one `chat_batch`."""

    def __init__(self, model: ChatModel, max_batch_size: int = 64):
        self.model = model
        self.max_batch_size = max_batch_size
        self._queue: queue.Queue[Any] = queue.Queue()
        self._state = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batch-{model.name}", daemon=True)
        self._thread.start()

    def submit(self, messages: Messages, tools: Tools | None, sampling: Sampling) -> Future:
        future: Future = Future()
        with self._state:
            if self._closed:
                raise WorkerClosed(self.model.name)
            self._queue.put((messages, tools, sampling, future))
        return future

    def close(self) -> None:
        """Finish what is queued, then stop. The lock puts the stop mark after every accepted
        request, so none is left waiting."""
        with self._state:
            self._closed = True
            self._queue.put(None)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            stop = False
            while len(items) < self.max_batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            # One generate call runs with one sampling setting.
            groups: dict[Sampling, list[Any]] = {}
            for item in items:
                groups.setdefault(item[2], []).append(item)
            for sampling, group in groups.items():
                self._answer(sampling, group)
            if stop:
                return

    def _answer(self, sampling: Sampling, group: list[Any]) -> None:
        try:
            replies = self.model.chat_batch([g[0] for g in group], [g[1] for g in group], sampling)
        except Exception as exc:  # handed to each waiting request, which answers HTTP 500
            for g in group:
                g[3].set_exception(exc)
            return
        for g, reply in zip(group, replies, strict=True):
            g[3].set_result(reply)


class ModelLanes:
    """One model's two queues, each with its own worker thread: small requests are batched
    together; a large one (by body size) is answered alone in its own lane, so it is never
    batched with small ones (a batch lasts as long as its longest prompt) and its preparation
    (rendering, tokenizing: ~2 s per MB on the embedded model) never holds them. A local model
    still generates one batch at a time (its own lock); the prompt-token cap bounds that turn."""

    def __init__(self, model: ChatModel, max_batch_size: int = 64):
        self.model = model
        self.small = BatchingWorker(model, max_batch_size)
        self.large = BatchingWorker(model, 1)

    def submit(
        self, messages: Messages, tools: Tools | None, sampling: Sampling, large: bool = False
    ) -> Future:
        return (self.large if large else self.small).submit(messages, tools, sampling)

    def close(self) -> None:
        self.small.close()
        self.large.close()


class ModelPool:
    """Served models by name: fixed ones (`static`) plus those in a watched serving.json."""

    def __init__(
        self,
        config_path: Path | None = None,
        static: dict[str, ServingEntry | ChatModel] | None = None,
        loader: Callable[[str, ServingEntry], ChatModel] = load_local_model,
        max_batch_size: int = 64,
    ):
        self.config_path = Path(config_path) if config_path else None
        self.static = dict(static or {})
        self.loader = loader
        self.max_batch_size = max_batch_size
        self.config_error: str | None = None
        self._from_file: dict[str, ServingEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._workers: dict[str, tuple[Any, ModelLanes]] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def specs(self) -> dict[str, ServingEntry | ChatModel]:
        self.refresh()
        return {**self._from_file, **self.static}

    def names(self) -> list[str]:
        return sorted(self.specs())

    def default_name(self) -> str | None:
        names = self.names()
        if "primary" in names:
            return "primary"
        return names[0] if len(names) == 1 else None

    def refresh(self) -> None:
        if self.config_path is None:
            return
        try:
            stat = self.config_path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            if stamp is None:
                self._from_file, self.config_error = {}, None
                log.info("%s is gone: serving only fixed models", self.config_path)
                self._drop_stale(dict(self.static))
                return
            try:
                entries = read_serving_config(self.config_path)
            except ServingConfigError as exc:
                self.config_error = str(exc)
                log.error("%s; still serving the previous models", exc)
                return
            self._from_file, self.config_error = entries, None
            log.info("serving %s from %s", sorted(entries), self.config_path)
            self._drop_stale({**entries, **self.static})

    def _drop_stale(self, current: dict[str, ServingEntry | ChatModel]) -> None:
        """Free models whose entry disappeared or now points elsewhere (caller holds the lock)."""
        for name, (spec, worker) in list(self._workers.items()):
            if current.get(name) != spec:
                log.info("unloading %s (%s)", name, spec)
                worker.close()
                del self._workers[name]

    def worker(self, name: str) -> ModelLanes:
        """The named model's lanes, loading the model on first use. KeyError if not served."""
        spec = self.specs()[name]
        with self._lock:
            current = self._workers.get(name)
            if current is not None and current[0] == spec:
                return current[1]
            loading = self._loading.setdefault(name, threading.Lock())
        # Loading a real model takes seconds: hold only this name's lock meanwhile, so requests
        # for other models (and /v1/models) go on.
        with loading:
            with self._lock:
                current = self._workers.get(name)
                if current is not None and current[0] == spec:
                    return current[1]
            model = spec if not isinstance(spec, ServingEntry) else self.loader(name, spec)
            worker = ModelLanes(model, self.max_batch_size)
            with self._lock:
                self._workers[name] = (spec, worker)
        if current is not None:
            log.info("model %s changed: %s replaces the previous version", name, spec)
            current[1].close()
        return worker

    def loaded(self) -> list[str]:
        """Names whose model is in memory now."""
        with self._lock:
            return sorted(self._workers)

    def close(self) -> None:
        with self._lock:
            for _, worker in self._workers.values():
                worker.close()
            self._workers.clear()


# -- HTTP -------------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    close: bool = False,
):
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    # Answered before the whole body was read (`close`, a 408, a 413): what is left of it on
    # the connection is not a next request, so the connection closes.
    headers = {"connection": "close"} if close or status in (408, 413) else None
    return JSONResponse(body, status_code=status, headers=headers)


def _parse(raw: bytes, served: list[str], default: str | None, max_message: int) -> ChatRequest:
    return parse_chat_request(decode_json(raw), served, default, max_message)


def _submit(pool: ModelPool, request: ChatRequest, large: bool) -> Future:
    for _ in range(3):
        try:
            lanes = pool.worker(request.model)
            return lanes.submit(request.messages, request.tools, request.sampling, large)
        except WorkerClosed:
            continue  # replaced by a reload just now: the next lookup finds the new one
    raise RuntimeError(f"model {request.model!r} is being reloaded repeatedly; retry")


# Past the prompt-token cap, a prompt is only tokenized this far (characters per allowed token):
# enough to prove it too long. No tokenizer here makes tokens longer than 32 characters on
# average, and a 4 MB prompt took ~8 s to tokenize whole on the embedded model.
CHARS_PER_TOKEN_BOUND = 32
# A cut can change the last few tokens before it; only a count this far over the cap is proof.
CUT_MARGIN = 16


def check_prompt_tokens(model: Any, request: ChatRequest, cap: int | None) -> int | None:
    """Refuse (400 `context_length_exceeded`, as OpenAI does) a prompt longer than `cap` or the
    model's context, counted in the request's own thread, so an oversized prompt never reaches
    the model's queue. Models with no chat template here (remote, scripted) are not counted."""
    render = getattr(model, "render", None)
    tokenizer = getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
    context = getattr(model, "context_length", None)
    if render is None or tokenizer is None:
        return None
    limit = min(cap or 1 << 62, context - 1 if context else 1 << 62)  # room for one new token
    try:
        prompt = render(request.messages, request.tools)
    except ProviderError as exc:  # the template's own checks: the conversation is the problem
        raise RequestError(400, str(exc), "invalid_conversation", "messages") from None
    window = (limit + CUT_MARGIN) * CHARS_PER_TOKEN_BOUND
    count = len(tokenizer.encode(prompt[:window], add_special_tokens=False).ids)
    cut = len(prompt) > window
    if cut and count <= limit + CUT_MARGIN:  # not proven too long by its start: count it all
        count, cut = len(tokenizer.encode(prompt, add_special_tokens=False).ids), False
    if cut or count > limit:
        size = f"more than {count - CUT_MARGIN}" if cut else str(count)
        raise RequestError(
            400,
            f"this model takes at most {limit} prompt tokens; the messages come to {size}",
            "context_length_exceeded",
            "messages",
        )
    return count


def usable_reply(reply: ChatResponse, tools: Tools | None) -> ChatResponse:
    """The reply as a client can act on it: each tool call names a function the request offered
    and carries a JSON object as its `arguments` string. A call that does not (a function that
    was not offered, arguments that are not a JSON object) goes back as the text the model
    wrote, in the content; with no usable call left, `finish_reason` is `stop` (or `length`)."""
    calls = reply.message.get("tool_calls") or []
    if not calls:
        return reply
    offered = offered_names(tools)
    usable, as_text = [], []
    for call in calls:
        function = call.get("function") or {}
        name, arguments = function.get("name"), _json_object(function.get("arguments"))
        if name in offered and arguments is not None:
            args = json.dumps(arguments, ensure_ascii=False)
            usable.append({**call, "function": {"name": name, "arguments": args}})
        else:
            raw = arguments if arguments is not None else function.get("arguments")
            written = json.dumps({"name": name, "arguments": raw}, ensure_ascii=False)
            as_text.append(f"<tool_call>\n{written}\n</tool_call>")
    if not as_text:
        return replace(reply, message={**reply.message, "tool_calls": usable})
    content = "\n".join(p for p in (reply.message.get("content"), *as_text) if p)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if usable:
        message["tool_calls"] = usable
    finish = reply.finish_reason
    if not usable and finish == "tool_calls":
        finish = "stop"
    return replace(reply, message=message, finish_reason=finish)


def _json_object(arguments: Any) -> dict | None:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        return None
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _completion(reply: ChatResponse, name: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": reply.message.get("content")}
    if reply.message.get("tool_calls"):
        message["tool_calls"] = reply.message["tool_calls"]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        "usage": _usage(reply),
    }


def _usage(reply: ChatResponse) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def _chunker(name: str) -> Callable[..., bytes]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": name,
    }

    def event(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

    return event


def _ending(event: Callable[..., bytes], reply: ChatResponse, sent: str, include_usage: bool):
    """After the content deltas: the rest of the content, each tool call (with its index), the
    finish reason, usage when asked for, then [DONE]."""
    content = reply.message.get("content") or ""
    rest = content[len(sent) :] if content.startswith(sent) else ""
    if rest:
        yield event({"content": rest})
    for index, call in enumerate(reply.message.get("tool_calls") or []):
        yield event({"tool_calls": [{"index": index, **call}]})
    yield event({}, reply.finish_reason)
    if include_usage:
        yield event(None, usage=_usage(reply))
    yield b"data: [DONE]\n\n"


async def _stream(reply: ChatResponse, name: str, include_usage: bool) -> AsyncIterator[bytes]:
    """A finished reply as OpenAI chat.completion.chunk events (models that cannot stream)."""
    event = _chunker(name)
    yield event({"role": "assistant", "content": ""})
    for chunk in _ending(event, reply, "", include_usage):
        yield chunk


async def _live_stream(model: Any, request: ChatRequest) -> AsyncIterator[bytes]:
    """Content deltas as the model generates them, then the parsed ending. A failure after the
    headers went out is sent as an `error` event, which the openai client raises."""
    from starlette.concurrency import iterate_in_threadpool

    event = _chunker(request.model)
    yield event({"role": "assistant", "content": ""})
    sent = ""
    try:
        pieces = model.stream(request.messages, request.tools, request.sampling)
        async for item in iterate_in_threadpool(pieces):
            if isinstance(item, ChatResponse):
                reply = usable_reply(item, request.tools)
                for chunk in _ending(event, reply, sent, request.include_usage):
                    yield chunk
                return
            sent += item
            yield event({"content": item})
    except Exception as exc:
        log.exception("streaming generation failed for %s", request.model)
        error = {"message": f"generation failed: {exc}", "type": "server_error"}
        yield f"data: {json.dumps({'error': error})}\n\n".encode()


def create_app(pool: ModelPool, api_key: str | None = None, limits: ServeSettings | None = None):
    """The Starlette application. `api_key`: when set, `/v1` requests need it as a Bearer token.
    `limits`: body and message sizes, the prompt-token cap and the body deadline (settings'
    `serve` block; its defaults when not given)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from autoretrain.settings import ServeSettings

    handlers = _Handlers(pool, api_key, limits or ServeSettings())
    return Starlette(
        routes=[
            Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
            Route("/v1/models", handlers.models, methods=["GET"]),
            Route("/health", handlers.health, methods=["GET"]),
        ],
        exception_handlers={404: handlers.not_found, 405: handlers.not_found},
        lifespan=_closing(pool),
    )


class _Handlers:
    """The server's endpoints over one pool. Bound methods, so Starlette calls each with the
    request."""

    def __init__(self, pool: ModelPool, api_key: str | None, limits: ServeSettings):
        self.pool, self.api_key, self.limits = pool, api_key, limits

    def authorized(self, request: Request) -> bool:
        if not self.api_key:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def chat_completions(self, request: Request):
        from starlette.responses import JSONResponse, StreamingResponse

        pool, limits = self.pool, self.limits
        if not self.authorized(request):
            return _unauthorized()
        try:
            raw = await read_body(
                request.receive, request.headers, limits.max_body_bytes, limits.body_timeout_s
            )
            # Off the event loop: a few MB of JSON take tens of ms to decode and check.
            chat = await asyncio.to_thread(
                _parse, raw, pool.names(), pool.default_name(), limits.max_message_bytes
            )
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.code, exc.param)
        name = chat.model
        large = len(raw) >= limits.large_request_bytes
        try:
            lanes = await asyncio.to_thread(pool.worker, name)
            await asyncio.to_thread(
                check_prompt_tokens, lanes.model, chat, limits.max_prompt_tokens
            )
            if chat.stream and hasattr(lanes.model, "stream"):
                # Token by token, outside the batcher: an interactive client waits on it.
                events = _live_stream(lanes.model, chat)
                return StreamingResponse(events, media_type="text/event-stream")
            future = await asyncio.to_thread(_submit, pool, chat, large)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.code, exc.param)
        except KeyError:
            return _error(404, f"model {name!r} is no longer served", "model_not_found", "model")
        except Exception as exc:  # loading the model failed: say so, keep serving the others
            log.exception("cannot load model %s", name)
            return _error(500, f"cannot load model {name!r}: {exc}", "model_load_failed")
        try:
            reply = usable_reply(await asyncio.wrap_future(future), chat.tools)
        except Exception as exc:
            log.exception("generation failed for %s", name)
            return _error(500, f"generation failed: {exc}", "generation_failed")
        if chat.stream:
            return StreamingResponse(
                _stream(reply, name, chat.include_usage), media_type="text/event-stream"
            )
        return JSONResponse(_completion(reply, name))

    async def models(self, request: Request):
        from starlette.responses import JSONResponse

        if not self.authorized(request):
            return _unauthorized()
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "autoretrain", "root": root}
            for name, root in sorted(model_roots(self.pool.specs()).items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request):
        from starlette.responses import JSONResponse

        pool = self.pool
        names = pool.names()
        status = "degraded" if pool.config_error else "ok"
        return JSONResponse(
            {
                "status": status,
                "models": names,
                "loaded": pool.loaded(),
                # The file's name only: a client has no business with the server's paths.
                "config_error": _without_paths(pool.config_error, pool.config_path),
            }
        )

    async def not_found(self, request: Request, exc: Exception):
        status = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", "not found")
        message = f"{request.method} {request.url.path}: {detail}"
        return _error(status, message, "not_found", close=True)


def _unauthorized():
    return _error(
        401,
        "missing or wrong API key (Authorization: Bearer ...)",
        "unauthorized",
        close=True,
    )


def model_roots(specs: dict[str, ServingEntry | ChatModel]) -> dict[str, str]:
    """Each served name and what it serves, with no filesystem path: a slot (primary, canary)
    shows the version id listed beside it with the same directories; anything else its name."""
    from autoretrain.deploy.registry import SLOTS

    roots = {}
    for name, spec in specs.items():
        versions = sorted(other for other, s in specs.items() if s == spec and other not in SLOTS)
        roots[name] = name if name not in SLOTS or not versions else versions[0]
    return roots


def _without_paths(message: str | None, path: Path | None) -> str | None:
    if message is None or path is None:
        return message
    return message.replace(str(path), path.name)


def _closing(pool: ModelPool):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        pool.close()

    return lifespan


# -- running it -------------------------------------------------------------------------------


class ServerThread:
    """Run an app with uvicorn in a background thread on a free (or given) loopback port.

    `with ServerThread(app) as server: OpenAI(base_url=server.url, ...)` — for tests and for
    in-process evaluation against the OpenAI-compatible path.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, header_timeout_s: float = 10.0
    ):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            http=_http_protocol(header_timeout_s),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def _http_protocol(header_timeout_s: float) -> type:
    """uvicorn's own HTTP protocol (httptools when installed), with the header limits."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return header_limits_protocol(AutoHTTPProtocol, header_timeout_s, MAX_HEADER_BYTES)


def serve_forever(
    pool: ModelPool,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    limits: ServeSettings | None = None,
) -> None:
    import uvicorn

    from autoretrain.settings import ServeSettings

    limits = limits or ServeSettings()
    uvicorn.run(
        create_app(pool, api_key, limits),
        host=host,
        port=port,
        log_level="info",
        http=_http_protocol(limits.header_timeout_s),
    )
