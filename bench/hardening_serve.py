"""Does `autoretrain serve` hold against bad and hostile clients? The real command serves a tiny
model (random weights, the embedded tokenizer and chat template) on 127.0.0.1, with settings
from an autoretrain.yaml (default size limits: 4 MiB a body, 1 MiB a message; deadlines cut to
2 s for the headers and 3 s for the body so the bench stays short), and is sent:

- the corpus of malformed requests in autoretrain_tests/serve_bad_requests.py, plus a few
  broken HTTP requests: how many got a 5xx (target 0), how many another status than expected;
- 10 oversized requests (a valid 50 MB chat request each): the server's RSS before and after
  (target flat), the status and time of each;
- small requests alone, then while a client keeps sending 4 MB prompts to the same model: the
  small ones' latency (fairness). For reference, the time the model's own thread spends on one
  4 MB prompt (rendering, tokenizing), which the server used to spend in its batching thread;
- half-sent headers and a half-sent body: when the server drops them.

Bounded: about 150 requests and under a minute on 2 shared cores.

Run: .venv/bin/python bench/hardening_serve.py
Writes bench/results/hardening_serve.json and .md.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
OVERSIZED = 10
OVERSIZED_BYTES = 50 * 1024 * 1024
SMALL_REQUESTS = 20
BIG_PROMPT_MESSAGES = 4  # of just under 1 MiB each: a 4 MB body, under both size limits

# HTTP that does not parse: answered 400 by uvicorn's parser (its text, not OpenAI's JSON).
BAD_HTTP = [
    ("garbage request line", b"GARBAGE\r\n\r\n"),
    ("header without a colon", b"POST /v1/chat/completions HTTP/1.1\r\nHost x\r\n\r\n"),
    (
        "content-length not a number",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    ),
    (
        "negative content-length",
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ),
    (
        "bad chunk size",
        b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ),
]


def main() -> None:
    import httpx
    import psutil

    from autoretrain.settings import ServeSettings
    from autoretrain_tests.serve_bad_requests import bad_requests

    limits = ServeSettings()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _tiny_model(Path(tmp) / "model")
        config = Path(tmp) / "autoretrain.yaml"
        config.write_text(
            f"home: {tmp}/home\n"
            f"serve:\n  header_timeout_s: {HEADER_TIMEOUT_S}\n  body_timeout_s: {BODY_TIMEOUT_S}\n"
        )
        reference_s = _model_thread_seconds(model_dir)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", "from autoretrain.cli import main; main()", "serve"]
            + ["--port", str(port), "--model", f"primary={model_dir}", "--preload"],
            env={**os.environ, "AUTORETRAIN_CONFIG": str(config)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_up(base, server)
            process = psutil.Process(server.pid)
            small = {"model": "primary", "messages": [{"role": "user", "content": "2+3?"}]}
            small["max_tokens"] = 8
            httpx.post(f"{base}/v1/chat/completions", json=small, timeout=60).raise_for_status()

            corpus = _corpus(base, bad_requests(limits.max_body_bytes, limits.max_message_bytes))
            broken_http = [_raw(port, name, data) for name, data in BAD_HTTP]
            oversized = _oversized(base, process)
            fairness = _fairness(base, small)
            slow = _slow_clients(port)
            rss_after_all = process.memory_info().rss
        finally:
            server.terminate()
            server.wait(timeout=20)

    cases = corpus + broken_http
    result = {
        "limits": limits.model_dump()
        | {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S},
        "client_error_requests": len(cases),
        "client_error_5xx": sum(1 for c in cases if c["status"] is not None and c["status"] >= 500),
        "client_error_unexpected_status": [c for c in cases if not c["as_expected"]],
        "cases": cases,
        "oversized": oversized,
        "fairness": fairness | {"model_thread_seconds_for_one_4mb_prompt": reference_s},
        "slow_clients": slow,
        "server_rss_mb_at_end": round(rss_after_all / 2**20, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hardening_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "hardening_serve.md").write_text(_markdown(result))
    print(_markdown(result))


def _tiny_model(path: Path) -> Path:
    from autoretrain_tests.providers.tiny_models import untrained_model

    return untrained_model(path)


def _model_thread_seconds(model_dir: Path) -> float:
    """One 4 MB conversation answered by the model itself (what the old server's batching
    thread did with it, holding everything queued behind it)."""
    from autoretrain.providers.local import LocalChatModel

    model = LocalChatModel(model_dir)
    t0 = time.perf_counter()
    model.chat(_big_messages())
    return round(time.perf_counter() - t0, 2)


def _big_messages() -> list[dict]:
    return [{"role": "user", "content": "y " * 500_000} for _ in range(BIG_PROMPT_MESSAGES)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_up(base: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{base}/health", timeout=1)
            return
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()) from None
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not come up in 120 s") from None
            time.sleep(0.2)


def _corpus(base: str, cases: list) -> list[dict]:
    import httpx

    out = []
    with httpx.Client(timeout=60) as client:
        for kind, method, path, body, expected in cases:
            response = client.request(method, base + path, content=body)
            try:
                error = response.json().get("error") or {}
            except ValueError:
                error = {}
            shaped = bool(error.get("message")) and error.get("type") == "invalid_request_error"
            out.append(
                {
                    "kind": kind,
                    "status": response.status_code,
                    "expected": expected,
                    "openai_error_body": shaped,
                    "as_expected": response.status_code == expected and shaped,
                }
            )
    return out


def _raw(port: int, kind: str, data: bytes) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = _read_all(sock)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return {
        "kind": f"HTTP: {kind}",
        "status": status,
        "expected": 400,
        "openai_error_body": False,  # uvicorn's parser answers before the app
        "as_expected": status == 400,
    }


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while piece := sock.recv(65536):
            data += piece
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _oversized(base: str, process) -> dict:
    import httpx

    body = json.dumps(
        {"model": "primary", "messages": [{"role": "user", "content": "z" * OVERSIZED_BYTES}]}
    ).encode()
    before = process.memory_info().rss
    requests = []
    with httpx.Client(timeout=120) as client:
        for _ in range(OVERSIZED):
            t0 = time.perf_counter()
            try:
                status = client.post(f"{base}/v1/chat/completions", content=body).status_code
            except httpx.TransportError as exc:
                status = f"connection error: {type(exc).__name__}"
            requests.append(
                {
                    "status": status,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "rss_mb_after": round(process.memory_info().rss / 2**20, 1),
                }
            )
    after = process.memory_info().rss
    return {
        "requests": OVERSIZED,
        "body_mb": round(len(body) / 2**20, 1),
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_after": round(after / 2**20, 1),
        "each": requests,
    }


def _latencies(base: str, small: dict, n: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client(timeout=120) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            client.post(f"{base}/v1/chat/completions", json=small).raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def _fairness(base: str, small: dict) -> dict:
    import httpx

    alone = _latencies(base, small, SMALL_REQUESTS)
    big = {"model": "primary", "messages": _big_messages()}
    body = json.dumps(big).encode()
    stop = threading.Event()
    big_answers: list[tuple[int, float, str]] = []

    def keep_sending() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                response = client.post(f"{base}/v1/chat/completions", content=body)
                code = (response.json().get("error") or {}).get("code", "")
                big_answers.append((response.status_code, time.perf_counter() - t0, code))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    time.sleep(0.5)  # the first big one is in
    try:
        beside = _latencies(base, small, SMALL_REQUESTS)
    finally:
        stop.set()
        sender.join()

    def summary(values: list[float]) -> dict:
        return {
            "median_s": round(statistics.median(values), 3),
            "max_s": round(max(values), 3),
        }

    return {
        "small_requests": SMALL_REQUESTS,
        "alone": summary(alone),
        "beside_4mb_prompts": summary(beside),
        "big_body_mb": round(len(body) / 2**20, 2),
        "big_requests_sent": len(big_answers),
        "big_statuses": sorted({f"{s} {c}".strip() for s, _, c in big_answers}),
        "big_median_s": round(statistics.median(t for _, t, _ in big_answers), 3),
    }


def _slow_clients(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        t0 = time.monotonic()
        header_answer = _read_all(sock)
        header_s = time.monotonic() - t0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        t0 = time.monotonic()
        body_answer = _read_all(sock)
        body_s = time.monotonic() - t0
    return {
        "half_sent_headers": {
            "dropped_after_s": round(header_s, 2),
            "answer": header_answer[:12].decode() or "closed, nothing sent",
        },
        "half_sent_body": {
            "dropped_after_s": round(body_s, 2),
            "answer": body_answer.split(b"\r\n", 1)[0].decode() or "closed, nothing sent",
        },
    }


def _markdown(r: dict) -> str:
    o, f, s = r["oversized"], r["fairness"], r["slow_clients"]
    lim = r["limits"]
    lines = [
        "# `autoretrain serve` against bad and hostile clients",
        "",
        f"`.venv/bin/python bench/hardening_serve.py` on {r['machine']['cpus']} cores, "
        f"{r['machine']['when']}. The real `autoretrain serve` command on 127.0.0.1 with a tiny "
        f"model (random weights, embedded tokenizer, 1,024-token context). Limits: body "
        f"{lim['max_body_bytes']:,} bytes, message {lim['max_message_bytes']:,} bytes, "
        f"header deadline {lim['header_timeout_s']:g} s, body deadline {lim['body_timeout_s']:g} s.",
        "",
        "| figure | target | measured |",
        "|---|---|---|",
        f"| requests that got a 5xx for a client error | 0 | **{r['client_error_5xx']}** of "
        f"{r['client_error_requests']} |",
        f"| client errors answered otherwise than expected (status, OpenAI error body) | 0 | "
        f"{len(r['client_error_unexpected_status'])} |",
        f"| server RSS before / after {o['requests']} oversized requests of {o['body_mb']} MiB | "
        f"flat | {o['rss_mb_before']} MB / {o['rss_mb_after']} MB |",
        f"| oversized requests answered 413 | {o['requests']} | "
        f"{sum(1 for e in o['each'] if e['status'] == 413)} (median "
        f"{statistics.median(e['seconds'] for e in o['each']):.2f} s each) |",
        f"| small request latency alone, median / max | - | {f['alone']['median_s']} s / "
        f"{f['alone']['max_s']} s |",
        f"| small request latency while {f['big_body_mb']} MiB prompts keep coming, median / "
        f"max | far under one big prompt's cost on the model's thread (below) | "
        f"{f['beside_4mb_prompts']['median_s']} s / "
        f"{f['beside_4mb_prompts']['max_s']} s |",
        f"| the {f['big_requests_sent']} big prompts: answer, median time | - | "
        f"{', '.join(f['big_statuses'])}; {f['big_median_s']} s |",
        f"| one such prompt on the model's own thread (what the old server's batching thread "
        f"spent on it, holding every small request queued behind it) | - | "
        f"{f['model_thread_seconds_for_one_4mb_prompt']} s |",
        f"| half-sent headers dropped after | {lim['header_timeout_s']:g} s | "
        f"{s['half_sent_headers']['dropped_after_s']} s ({s['half_sent_headers']['answer']}) |",
        f"| half-sent body dropped after | {lim['body_timeout_s']:g} s | "
        f"{s['half_sent_body']['dropped_after_s']} s ({s['half_sent_body']['answer']}) |",
        "",
        "## Client errors tried",
        "",
        "| kind | expected | got |",
        "|---|---|---|",
    ]
    for case in r["cases"]:
        got = f"{case['status']}" + ("" if case["as_expected"] else " (unexpected)")
        lines.append(f"| {case['kind']} | {case['expected']} | {got} |")
    lines += [
        "",
        "The machine is shared with other jobs: latencies are noisy; statuses and memory are not.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
