"""A small agent, written the way a team writes one, that autoretrain can self-play and gate.

It knows nothing of autoretrain's code. It has its own system prompt and its own tools, talks to
its model through the official `openai` client (whose base URL points at the capture gateway),
and exposes `POST /run`:

    request:  {"prompt": "...", "run_id": "...", "slot": "primary", "scenario_id": ..., ...}
    answer:   {"final_answer": "...", "events": [{"type": "verification", ...}, ...]}

Two things tie its model calls to autoretrain's run: the `X-Autoretrain-Run` header (the
request's `run_id`) and `model` (the request's `slot`). Everything else is the agent's own.

    OPENAI_BASE_URL=http://127.0.0.1:8100/v1 python agent.py --port 9000

Environment: OPENAI_BASE_URL (the gateway; default http://127.0.0.1:8100/v1), OPENAI_API_KEY
(passed through to the upstream; default "unused"), AGENT_TOKEN (when set, `/run` requires
`Authorization: Bearer <AGENT_TOKEN>`), AGENT_MAX_TURNS (default 6).
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from openai import OpenAI

SYSTEM_PROMPT = (
    "You are the support desk's numbers assistant. When a question involves arithmetic, hand "
    "the whole question to the `compute` tool and answer with its result. Use `count_words` "
    "for questions about the length of a text. Answer with the number only."
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "compute",
            "description": "Work out the arithmetic in a question written in words or symbols "
            "('What is 12 plus 30?', '(3 + 4) * 2').",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "The question."}},
                "required": ["text"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "count_words",
            "description": "Count the words in a text.",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    },
]

# Words a question uses for an operator, longest first ("divided by" before "by").
_WORDS = [
    ("percent of", "/ 100 *"),
    ("squared", "** 2"),
    ("multiplied by", "*"),
    ("divided by", "/"),
    ("plus", "+"),
    ("minus", "-"),
    ("times", "*"),
    ("over", "/"),
]
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float:
    # A whitelist walk, not eval(): the text comes from a model.
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers and + - * / ** are understood")


def compute(text: str) -> str:
    expression = text.lower().replace(",", "")
    for word, symbol in _WORDS:
        expression = expression.replace(word, f" {symbol} ")
    # Keep the arithmetic, drop the words around it ("what is", "?").
    found = re.findall(r"\*\*|[\d.]+|[-+*/()]", expression)
    if not any(re.fullmatch(r"[\d.]+", t) for t in found):
        raise ValueError(f"no arithmetic found in {text!r}")
    value = _evaluate(ast.parse(" ".join(found), mode="eval"))
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def count_words(text: str) -> str:
    return str(len(text.split()))


HANDLERS = {"compute": compute, "count_words": count_words}


class Agent:
    def __init__(self, base_url: str, api_key: str, max_turns: int = 6):
        # Retries are the agent's business: one, then the run records what happened.
        self.client = OpenAI(base_url=base_url, api_key=api_key, max_retries=1, timeout=60)
        self.max_turns = max_turns

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """One task: the tool-calling loop, then the answer and the agent's own events."""
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt: a non-empty string")
        slot = request.get("slot") or "primary"
        headers = {"X-Autoretrain-Run": request["run_id"]} if request.get("run_id") else {}
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        events: list[dict[str, Any]] = []
        results: list[str] = []
        for _ in range(self.max_turns):
            reply = self.client.chat.completions.create(
                model=slot, messages=messages, tools=TOOLS, extra_headers=headers
            )
            message = reply.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                answer = message.content or ""
                events.append(self_check(answer, results))
                return {"final_answer": answer, "events": events}
            for call in message.tool_calls:
                content = self.use_tool(call.function.name, call.function.arguments, events)
                results.append(content)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
        events.append({"type": "escalation", "reason": f"no answer in {self.max_turns} turns"})
        return {"final_answer": None, "events": events}

    def use_tool(self, name: str, arguments: str, events: list[dict[str, Any]]) -> str:
        try:
            args = json.loads(arguments or "{}")
            return HANDLERS[name](**args)
        except Exception as exc:  # the model gets the error and may try again
            events.append(
                {
                    "type": "recovery",
                    "reason": f"tool {name} failed: {type(exc).__name__}: {exc}",
                    "action": "tool_error_to_model",
                }
            )
            return f"error: {exc}"


def self_check(answer: str, results: list[str]) -> dict[str, Any]:
    """The agent's own check: does its answer carry what its last tool said? (autoretrain
    checks the answer against the scenario's expected outcome on its side.)"""
    passed = bool(results) and results[-1] in answer
    return {
        "type": "verification",
        "verifier": "python-agent:self-check",
        "passed": passed,
        "feedback": "the answer repeats the tool's result"
        if passed
        else "the answer does not carry a tool result",
    }


def make_handler(agent: Agent, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/run":
                return self.answer(404, {"error": "POST /run"})
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                return self.answer(401, {"error": "missing or wrong bearer token"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length))
                if not isinstance(request, dict):
                    raise ValueError("the body must be a JSON object")
            except ValueError as exc:
                return self.answer(400, {"error": str(exc)})
            started = time.perf_counter()
            try:
                result = agent.run(request)
            except Exception as exc:
                return self.answer(500, {"error": f"{type(exc).__name__}: {exc}"})
            result["seconds"] = round(time.perf_counter() - started, 3)
            self.answer(200, result)

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"python-agent: {format % args}\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: any free port")
    args = parser.parse_args()
    agent = Agent(
        os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8100/v1"),
        os.environ.get("OPENAI_API_KEY", "unused"),
        int(os.environ.get("AGENT_MAX_TURNS", "6")),
    )
    server = ThreadingHTTPServer(
        (args.host, args.port), make_handler(agent, os.environ.get("AGENT_TOKEN"))
    )
    # The first line on stdout says where it listens (a supervisor reads the port from it).
    print(f"listening on http://{args.host}:{server.server_address[1]}/run", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
