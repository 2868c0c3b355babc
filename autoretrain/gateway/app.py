"""The capture gateway's HTTP app: OpenAI's chat completions API in front of the slots.

    POST /v1/chat/completions        forwarded to the slot's target, recorded into a run
    GET  /v1/models                  the names a request can use now
    POST /v1/runs/{run_id}/events    one run-API event (idempotent by event_id)
    POST /v1/runs/events             a batch of them: 207 with a result per item
    GET  /health                     slots, open runs, the recorder's counters

The agent's call comes first: the reply (or the upstream's error) is passed through as the
upstream sent it, and recording never fails or delays it. A failure in the book or the recorder
is logged and counted (`/health`), not raised. Responses carry `X-Autoretrain-Run` (the run the
call joined) and `X-Autoretrain-Slot` (the slot that served it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from autoretrain.gateway.grouping import RunBook, bucket
from autoretrain.gateway.recorder import Recorder
from autoretrain.gateway.targets import SLOTS, SlotResolver, Target
from autoretrain.gateway.upstream import Response as UpstreamResponse
from autoretrain.gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from autoretrain.runs.archive import RunArchive
from autoretrain.runs.pricing import PriceTable
from autoretrain.serve_limits import read_body
from autoretrain.serve_requests import RequestError
from autoretrain.settings import Settings

log = logging.getLogger(__name__)

SLOT_HEADER = "x-autoretrain-slot"
MAX_BATCH = 1000  # run-API events in one batch request
FORWARDED = ("traceparent", "tracestate", "openai-organization", "openai-project")


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(status: int, message: str, code: str | None = None, param: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_body(message, kind, code, param), status_code=status)


class StreamReply:
    """Reads an upstream's server-sent events as they pass: the reply (content, tool calls by
    index), finish reason, usage and error. Events are forwarded whole, byte for byte, except
    the usage-only chunk the gateway asked for itself (`drop_usage`), which the client did not."""

    def __init__(self, drop_usage: bool):
        self.drop_usage = drop_usage
        self.buffer = b""
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.error: str | None = None
        self.done = False
        self.role_seen = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while True:
            cut, size = self.buffer.find(b"\n\n"), 2
            crlf = self.buffer.find(b"\r\n\r\n")
            if crlf != -1 and (cut == -1 or crlf < cut):
                cut, size = crlf, 4
            if cut == -1:
                break
            event, self.buffer = self.buffer[: cut + size], self.buffer[cut + size :]
            if self._keep(event):
                out.append(event)
        return b"".join(out)

    def rest(self) -> bytes:
        """What is left unterminated when the upstream closed."""
        rest, self.buffer = self.buffer, b""
        if rest.strip():
            self._keep(rest)
        return rest

    def _keep(self, event: bytes) -> bool:
        data = b"\n".join(
            line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
        )
        if not data:
            return True
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            return True
        if not isinstance(chunk, dict):
            return True
        if isinstance(chunk.get("error"), dict | str):
            error = chunk["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            for part in delta.get("tool_calls") or []:
                entry = self.calls.setdefault(
                    part.get("index", len(self.calls)), {"id": None, "name": "", "arguments": ""}
                )
                entry["id"] = part.get("id") or entry["id"]
                function = part.get("function") or {}
                entry["name"] += function.get("name") or ""
                entry["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return not (self.drop_usage and isinstance(usage, dict) and not choices)

    def reply(self) -> dict[str, Any] | None:
        content = "".join(self.content)
        calls = [
            {
                "id": c["id"] or f"call_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for i, c in sorted(self.calls.items())
        ]
        if not content and not calls:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = calls
        return message


class Gateway:
    """Everything the routes share: resolver, book of runs, recorder, the upstream client."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: SlotResolver | None = None,
        archive: RunArchive | None = None,
        agent_version: str = "unknown",
    ):
        self.settings = settings
        self.config = settings.gateway
        self.resolver = resolver or SlotResolver(settings)
        self.archive = archive or RunArchive(settings.paths.landing)
        self.book = RunBook(max_open_runs=self.config.max_open_runs, agent_version=agent_version)
        # A local model served by `autoretrain serve` costs nothing per token (the project's
        # price table says so for a local profile); a remote target is priced only by
        # `pricing` (its model's entry, or "*"), never silently at $0.
        self.local_prices = PriceTable.from_settings(settings)
        prices = dict(settings.pricing)
        self.remote_prices = PriceTable(prices=prices, default=prices.pop("*", None))
        self.recorder: Recorder | None = None
        self.client: UpstreamPool | None = None
        self.calls = 0
        self.upstream_failures = 0
        self.record_errors = 0  # the book failed on a call or a run (a bug; logged)
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = UpstreamPool(self.config.timeout_s)
        self.recorder = Recorder(
            self.archive,
            max_buffered=self.config.max_buffered_runs,
            flush_interval_s=self.config.flush_interval_s,
        )
        await asyncio.to_thread(self.resolver.refresh, True)
        self._tasks = [
            asyncio.create_task(self._every(self.config.registry_ttl_s, self._refresh)),
            asyncio.create_task(
                self._every(min(self.config.flush_interval_s, self.config.run_idle_s), self.sweep)
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sweep(everything=True)  # every run with unwritten calls or events
        if self.recorder is not None:
            # A landing zone that keeps failing must not hold the shutdown for long.
            deadline = max(1.0, 5 * self.config.flush_interval_s)
            await asyncio.to_thread(self.recorder.close, deadline)
        if self.client is not None:
            await self.client.aclose()

    async def _every(self, period_s: float, action: Any) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a periodic task must outlive one bad round
                log.exception("gateway background task failed; continuing")

    async def _refresh(self) -> None:
        await asyncio.to_thread(self.resolver.refresh)

    def sweep(self, everything: bool = False) -> int:
        """Hand the runs that are due to the recorder; returns how many."""
        try:
            records = self.book.due(self.config.run_idle_s, everything=everything)
        except Exception:
            self.record_errors += 1
            log.exception("gateway: cannot collect runs to write")
            return 0
        for record in records:
            if self.recorder is not None:
                self.recorder.submit(record)
        return len(records)

    # -- routing --------------------------------------------------------------------------------

    def route(self, requested: str, run_id: str) -> tuple[str, Target | None]:
        """The slot that serves this call and its target. A share of `primary` goes to
        `canary` while canary holds something, decided once per run (sticky)."""
        name = requested
        if not self.resolver.known(name) and self.config.default_slot:
            name = self.config.default_slot
        slot = name
        if name == "primary" and self.config.canary_share > 0:
            sticky = self.book.slot_of(run_id)
            if sticky in SLOTS:
                slot = sticky
            elif bucket(run_id) < self.config.canary_share and self.resolver.resolve("canary"):
                slot = "canary"
        target = self.resolver.resolve(slot)
        if target is None and slot == "canary" and name == "primary":
            slot, target = "primary", self.resolver.resolve("primary")  # canary emptied
        return slot, target

    async def upstream_headers(self, request: Request, target: Target) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        for name in FORWARDED:
            if name in request.headers:
                headers[name] = request.headers[name]
        if target.headers:
            headers.update(target.headers)
        elif target.token is not None:
            token = await asyncio.to_thread(target.token)
            headers["authorization"] = f"Bearer {token}"
        elif "authorization" in request.headers:
            # No credential of its own for this target: the agent's key goes through.
            headers["authorization"] = request.headers["authorization"]
        return headers

    # -- recording ------------------------------------------------------------------------------

    def record(
        self,
        call: Any,
        slot: str,
        target: Target,
        *,
        reply: dict[str, Any] | None,
        usage: dict[str, Any] | None,
        latency_s: float,
        http_status: int,
        error: str | None = None,
        stream: bool = False,
        finish_reason: str | None = None,
    ) -> None:
        """Add a finished call to its run. Never raises: the agent's call comes first."""
        try:
            usage = usage if isinstance(usage, dict) else {}
            prompt = _count(usage.get("prompt_tokens"))
            completion = _count(usage.get("completion_tokens"))
            if error is not None or http_status >= 400:
                self.upstream_failures += 1
            prices = self.local_prices if target.kind == "serve" else self.remote_prices
            self.book.finish(
                call,
                reply=reply,
                slot=slot,
                model=target.recorded_model,
                provider=self.settings.provider,
                upstream_model=target.model,
                latency_s=latency_s,
                http_status=http_status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost=prices.cost(target.model, prompt, completion),
                error=error,
                stream=stream,
                finish_reason=finish_reason,
            )
        except Exception:
            self.record_errors += 1
            log.exception("gateway: cannot record a call of run %s", getattr(call, "run_id", "?"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _upstream_error(status: int, content: bytes) -> bytes:
    """The upstream's error body when it is OpenAI-shaped, else one made from it."""
    try:
        body = json.loads(content)
        if isinstance(body, dict) and "error" in body:
            return content
    except ValueError:
        pass
    text = content.decode("utf-8", "replace").strip()[:500]
    kind = "invalid_request_error" if status < 500 else "server_error"
    message = f"upstream answered HTTP {status}" + (f": {text}" if text else "")
    return json.dumps(error_body(message, kind, "upstream_error")).encode()


def _message_of(content: bytes) -> str:
    try:
        error = json.loads(content).get("error")
        return str(error.get("message") if isinstance(error, dict) else error)
    except (ValueError, AttributeError):
        return content.decode("utf-8", "replace")[:500]


def create_app(
    settings: Settings,
    *,
    resolver: SlotResolver | None = None,
    archive: RunArchive | None = None,
    agent_version: str = "unknown",
) -> Starlette:
    """The gateway app. `app.state.gateway` is the Gateway (counters, book, recorder)."""
    gw = Gateway(settings, resolver=resolver, archive=archive, agent_version=agent_version)
    handlers = _Handlers(gw, settings.serve.max_body_bytes, settings.serve.body_timeout_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
            Route("/v1/models", handlers.models, methods=["GET"]),
            Route("/v1/runs/events", handlers.run_events, methods=["POST"]),
            Route("/v1/runs/{run_id}/events", handlers.run_event, methods=["POST"]),
            Route("/health", handlers.health, methods=["GET"]),
        ],
        exception_handlers={404: handlers.not_found, 405: handlers.not_found},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app


class _Handlers:
    """The gateway's endpoints over one Gateway. Bound methods, so Starlette calls each with
    the request; bodies are bounded as `autoretrain serve` bounds them (settings' serve block)."""

    def __init__(self, gw: Gateway, max_body_bytes: int, body_timeout_s: float):
        self.gw = gw
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def chat_completions(self, request: Request) -> Response:
        gw = self.gw
        parsed = await self._chat_request(request)
        if isinstance(parsed, Response):
            return parsed
        body, requested = parsed
        gw.calls += 1
        try:
            call = gw.book.start(
                request.headers, body.get("messages"), body.get("tools"), requested
            )
        except Exception:
            gw.record_errors += 1
            log.exception("gateway: cannot group a call; forwarding it unrecorded")
            call = None
        run_id = call.run_id if call is not None else ""
        slot, target = gw.route(requested, run_id)
        if target is None:
            return _error(
                404,
                f"{requested!r} resolves to no target now: not a held slot, a registered "
                "version with a target, or a configured target (GET /v1/models lists them)",
                "model_not_found",
                "model",
            )
        stream = body.get("stream") is True
        drop_usage = stream and _ask_for_usage(body)
        forwarded = await self._forward(request, body, requested, call, slot, target, stream)
        if isinstance(forwarded, Response):
            return forwarded
        response, slot, target, t0, ours = forwarded
        for name in ("retry-after", "x-request-id"):
            if name in response.headers:
                ours[name] = response.headers[name]
        if stream and response.status_code < 400:
            return StreamingResponse(
                _relay(gw, call, slot, target, response, drop_usage, t0),
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "text/event-stream"),
                headers=ours,
            )
        return await self._relay_whole(response, call, slot, target, t0, stream, ours)

    async def _chat_request(self, request: Request) -> tuple[dict[str, Any], str] | Response:
        """(the body, the slot or version it asks for), or the 4xx that says what is wrong."""
        try:
            # Bounded as `autoretrain serve` bounds it (settings' serve block): 413, 408.
            raw = await read_body(
                request.receive, request.headers, self.max_body_bytes, self.body_timeout_s
            )
        except RequestError as exc:
            response = _error(exc.status, exc.message, exc.code, exc.param)
            response.headers["connection"] = "close"  # the rest of the body is not a request
            return response
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return _error(400, "the body is not JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object", "invalid_body")
        requested = request.headers.get(SLOT_HEADER) or body.get("model")
        if not isinstance(requested, str) or not requested:
            return _error(
                400, "model: a slot name (primary, canary) or a version id", None, "model"
            )
        return body, requested

    async def _forward(
        self,
        request: Request,
        body: dict[str, Any],
        requested: str,
        call: Any,
        slot: str,
        target: Target,
        stream: bool,
    ) -> tuple[UpstreamResponse, str, Target, float, dict[str, str]] | Response:
        """Send the call upstream: (the response, the slot and target that answered, when it
        was sent, our headers), or the 502/504 when the upstream cannot be reached."""
        gw = self.gw
        run_id = call.run_id if call is not None else ""
        for attempt in range(2):
            body["model"] = target.model
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers = await gw.upstream_headers(request, target)
            ours = {"x-autoretrain-run": run_id, SLOT_HEADER: slot}
            t0 = time.perf_counter()
            try:
                response = await gw.client.post(target.url, payload, headers)
            except UpstreamError as exc:
                return self.unreachable(call, slot, target, exc, t0, stream, ours)
            if response.status_code == 404 and target.kind == "serve" and attempt == 0:
                # `autoretrain serve` no longer serves the version we resolved (a promotion
                # just moved it): read the registry now and try once more if it changed.
                await asyncio.to_thread(gw.resolver.refresh, True)
                fresh_slot, fresh = gw.route(requested, run_id)
                if fresh is not None and fresh != target:
                    await response.aclose()
                    slot, target = fresh_slot, fresh
                    continue
            break
        return response, slot, target, t0, ours

    async def _relay_whole(
        self,
        response: UpstreamResponse,
        call: Any,
        slot: str,
        target: Target,
        t0: float,
        stream: bool,
        ours: dict[str, str],
    ) -> Response:
        """A reply that is not streamed: read whole, passed on, recorded after it went out."""
        gw = self.gw
        try:
            content = await response.read()
        except UpstreamError as exc:
            return self.unreachable(call, slot, target, exc, t0, stream, ours)
        finally:
            await response.aclose()
        latency = time.perf_counter() - t0
        if response.status_code >= 400:
            if call is not None:
                gw.record(
                    call,
                    slot,
                    target,
                    reply=None,
                    usage=None,
                    latency_s=latency,
                    http_status=response.status_code,
                    error=_message_of(content),
                    stream=stream,
                )
            return Response(
                _upstream_error(response.status_code, content),
                status_code=response.status_code,
                media_type="application/json",
                headers=ours,
            )
        status = response.status_code

        async def record_reply() -> None:
            # After the answer went out (the agent does not wait for it), and before the next
            # request on this connection starts (uvicorn runs a connection's requests in
            # turn); no await inside, so no other request runs in between either.
            reply, usage, finish, problem = None, None, None, None
            try:
                parsed = json.loads(content)
                choice = parsed["choices"][0]
                reply, usage = choice.get("message"), parsed.get("usage")
                finish = choice.get("finish_reason")
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                problem = "the upstream's reply is not a chat completion"
            gw.record(
                call,
                slot,
                target,
                reply=reply,
                usage=usage,
                latency_s=latency,
                http_status=status,
                error=problem,
                finish_reason=finish,
            )

        return Response(
            content,
            status_code=status,
            media_type=response.headers.get("content-type", "application/json"),
            headers=ours,
            background=BackgroundTask(record_reply) if call is not None else None,
        )

    def unreachable(self, call, slot, target, exc, t0, stream, ours) -> Response:
        """502 (504 for a timeout) with an OpenAI-shaped body; the failed call is recorded."""
        gw = self.gw
        latency = time.perf_counter() - t0
        timeout = isinstance(exc, UpstreamTimeout)
        status = 504 if timeout else 502
        message = (
            f"upstream {target.kind} for {slot!r} "
            f"{'timed out' if timeout else 'unreachable'}: {exc}"
        )
        if call is not None:
            gw.record(
                call,
                slot,
                target,
                reply=None,
                usage=None,
                latency_s=latency,
                http_status=status,
                error=message,
                stream=stream,
            )
        code = "upstream_timeout" if timeout else "upstream_unreachable"
        return JSONResponse(
            error_body(message, "server_error", code), status_code=status, headers=ours
        )

    async def models(self, request: Request) -> Response:
        gw = self.gw
        data = []
        for name in gw.resolver.names():
            target = gw.resolver.resolve(name)
            root = target.recorded_model if target else name
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "autoretrain",
                    "root": root,
                }
            )
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        gw = self.gw
        recorder = gw.recorder.stats() if gw.recorder else {}
        return JSONResponse(
            {
                "status": "ok"
                if not recorder.get("dropped") and not gw.record_errors
                else "degraded",
                "slots": dict(gw.resolver.snapshot.slots),
                "registry_stale_reads": gw.resolver.stale_reads,
                "open_runs": len(gw.book.runs),
                "calls": gw.calls,
                "upstream_failures": gw.upstream_failures,
                "record_errors": gw.record_errors,
                "recorder": recorder,
            }
        )

    async def _json(self, request: Request) -> tuple[Any, Response | None]:
        try:
            raw = await read_body(
                request.receive, request.headers, self.max_body_bytes, self.body_timeout_s
            )
            return json.loads(raw), None
        except RequestError as exc:
            return None, _error(exc.status, exc.message, exc.code, exc.param)
        except (ValueError, RecursionError):
            return None, _error(400, "the body is not JSON", "invalid_json")

    def _apply(self, run_id: Any, event: Any) -> tuple[int, str]:
        try:
            return self.gw.book.apply(run_id, event)
        except Exception as exc:
            self.gw.record_errors += 1
            log.exception("gateway: cannot apply a run event")
            return 500, f"cannot apply the event: {type(exc).__name__}"

    async def run_event(self, request: Request) -> Response:
        event, problem = await self._json(request)
        if problem:
            return problem
        status, message = self._apply(request.path_params["run_id"], event)
        event_id = event.get("event_id", event.get("id")) if isinstance(event, dict) else None
        if status >= 400:
            return _error(status, message, "invalid_event" if status == 400 else "run_gone")
        answer = {"id": event_id, "status": status, "message": message}
        if event.get("type") == "close":
            answer["run"] = self.gw.book.totals(request.path_params["run_id"])
        return JSONResponse(answer, status_code=status)

    async def run_events(self, request: Request) -> Response:
        body, problem = await self._json(request)
        if problem:
            return problem
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list):
            return _error(400, 'expected {"batch": [event, ...]}', "invalid_body", "batch")
        if len(batch) > MAX_BATCH:
            return _error(
                400, f"at most {MAX_BATCH} events in one batch", "batch_too_large", "batch"
            )
        successes, errors = [], []
        for item in batch:
            event_id = item.get("event_id", item.get("id")) if isinstance(item, dict) else None
            run_id = item.get("run_id") if isinstance(item, dict) else None
            status, message = self._apply(run_id, item)
            if status < 400:
                success = {"id": event_id, "run_id": run_id, "status": status}
                if item.get("type") == "close":
                    # The run's calls, tokens and cost: its driver's own record can carry them.
                    success["run"] = self.gw.book.totals(run_id)
                successes.append(success)
            else:
                errors.append(
                    {"id": event_id, "run_id": run_id, "status": status, "message": message}
                )
        return JSONResponse({"successes": successes, "errors": errors}, status_code=207)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(
            status,
            f"{request.method} {request.url.path}: {getattr(exc, 'detail', 'not found')}",
            "not_found",
        )


def _ask_for_usage(body: dict[str, Any]) -> bool:
    """Usage is what the run's tokens and cost come from: a streamed call asks for it. True when
    the client did not, so the extra usage chunk is kept from it."""
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage"):
        return False
    body["stream_options"] = {**options, "include_usage": True}
    return True


async def _relay(
    gw: Gateway,
    call: Any,
    slot: str,
    target: Target,
    response: UpstreamResponse,
    drop_usage: bool,
    t0: float,
) -> AsyncIterator[bytes]:
    """The upstream's events to the client as they come, read on the way; the call is recorded
    when the stream ends, breaks, or the client goes away."""
    state = StreamReply(drop_usage)
    error: str | None = None
    try:
        async for data in response.iter_raw():
            out = state.feed(data)
            if out:
                yield out
        rest = state.rest()
        if rest:
            yield rest
        if not state.done and state.finish_reason is None and state.error is None:
            error = "the upstream closed the stream before it finished"
            body = error_body(error, "server_error", "upstream_stream_closed")
            yield f"data: {json.dumps(body)}\n\n".encode()
    except UpstreamError as exc:
        error = f"the upstream's stream broke: {exc}"
        # The status line is gone already: an `error` event, which the openai client raises.
        yield f"data: {json.dumps(error_body(error, 'server_error', 'upstream_stream_broken'))}\n\n".encode()
    except BaseException:
        error = "the client went away before the stream ended"
        raise
    finally:
        if call is not None:
            gw.record(
                call,
                slot,
                target,
                reply=state.reply(),
                usage=state.usage,
                latency_s=time.perf_counter() - t0,
                http_status=response.status_code,
                error=error or state.error,
                stream=True,
                finish_reason=state.finish_reason,
            )
        # Cancelled with its client: the connection is dropped anyway.
        with contextlib.suppress(BaseException):
            await response.aclose()
