"""`autoretrain serve` over real HTTP on 127.0.0.1, called with the official `openai` client."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from autoretrain.deploy.serving import ServingEntry, read_serving_config, write_serving_config
from autoretrain.providers.base import ChatResponse, Sampling
from autoretrain.providers.openai_compatible import OpenAICompatibleChatModel
from autoretrain.providers.scripted import ScriptedModel
from autoretrain.serve import ModelPool, ServerThread, create_app
from autoretrain_tests.providers.tiny_models import (
    AFTER_TOOL,
    ANSWER,
    QUESTION,
    TOOLS,
    cached_tool_model,
    cached_untrained_model,
)


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory) -> Path:
    return cached_tool_model(tmp_path_factory)


@pytest.fixture(scope="module")
def served(tool_model_dir, tmp_path_factory):
    """The trained tiny model as `primary`, from a watched serving.json."""
    config = tmp_path_factory.mktemp("serving") / "serving.json"
    write_serving_config(config, {"primary": ServingEntry(tool_model_dir)})
    pool = ModelPool(config)
    with ServerThread(create_app(pool)) as server:
        yield server, config, pool


def client_for(server, key="unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=30)


# -- end to end with a real local model ------------------------------------------------------


def test_openai_client_gets_tool_calls(served):
    server, _, _ = served
    completion = client_for(server).chat.completions.create(
        model="primary", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=64
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id == "call_0" and call.type == "function"
    assert call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "2 + 3"}
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_openai_client_gets_tool_calls_streaming(served):
    server, _, _ = served
    stream = client_for(server).chat.completions.create(
        model="primary",
        messages=QUESTION,
        tools=TOOLS,
        temperature=0,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_0" and calls[0]["name"] == "calculator"
    assert json.loads(calls[0]["arguments"]) == {"expression": "2 + 3"}
    assert usage is not None and usage.completion_tokens > 0


def test_stream_is_server_sent_events_ending_in_done(served):
    server, _, _ = served
    body = {"model": "primary", "messages": AFTER_TOOL, "tools": TOOLS, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/chat/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [line[len("data: ") :] for line in text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"[len("data: ") :]
    chunks = [json.loads(e) for e in events[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert "".join(c or "" for c in contents) == ANSWER
    assert len([c for c in contents if c]) > 1  # token by token, not one block at the end
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_provider_over_the_server_batches_runs(served):
    server, _, _ = served
    model = OpenAICompatibleChatModel("primary", base_url=server.url)
    replies = model.chat_batch([QUESTION, AFTER_TOOL] * 3, [TOOLS] * 6, Sampling(max_tokens=48))
    assert [r.finish_reason for r in replies] == ["tool_calls", "stop"] * 3
    assert replies[1].message["content"] == ANSWER


def test_models_lists_served_names_and_reloads_on_change(served, tmp_path_factory):
    server, config, pool = served
    client = client_for(server)
    assert [m.id for m in client.models.list().data] == ["primary"]
    untrained = cached_untrained_model(tmp_path_factory)
    entries = read_serving_config(config)
    write_serving_config(config, {**entries, "cand-1": ServingEntry(untrained)})
    assert [m.id for m in client.models.list().data] == ["cand-1", "primary"]
    reply = client.chat.completions.create(model="cand-1", messages=QUESTION, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"  # the random model never stops
    assert "cand-1" in pool.loaded()

    config.write_text("{broken")  # a bad file keeps the last good mapping in service
    assert [m.id for m in client.models.list().data] == ["cand-1", "primary"]
    health = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "degraded" and "serving.json" in health["config_error"]
    write_serving_config(config, entries)
    assert [m.id for m in client.models.list().data] == ["primary"]
    assert "cand-1" not in pool.loaded()  # its memory is freed


# -- request plumbing, with scripted models ---------------------------------------------------


class SlowBatchModel:
    """Records the size of each batch it is asked for."""

    name = "slow"

    def __init__(self):
        self.batch_sizes: list[int] = []

    def chat(self, messages, tools=None, sampling=Sampling()):
        return self.chat_batch([messages], [tools], sampling)[0]

    def chat_batch(self, conversations, tools, sampling=Sampling()):
        self.batch_sizes.append(len(conversations))
        time.sleep(0.3)
        return [ChatResponse({"role": "assistant", "content": "ok"}) for _ in conversations]


def test_concurrent_requests_share_one_batch():
    model = SlowBatchModel()
    with ServerThread(create_app(ModelPool(static={"slow": model}))) as server:
        client = client_for(server)
        threads = [
            threading.Thread(
                target=client.chat.completions.create,
                kwargs={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(model.batch_sizes) == 6
    assert max(model.batch_sizes) > 1


def test_api_key_bad_requests_and_model_failures_get_openai_errors():
    scripted = ScriptedModel([RuntimeError("CUDA fell over")], name="s")
    app = create_app(ModelPool(static={"primary": scripted}), api_key="serve-secret")
    hello = [{"role": "user", "content": "hi"}]
    with ServerThread(app) as server:
        with pytest.raises(openai.AuthenticationError):
            client_for(server, "wrong").chat.completions.create(model="primary", messages=hello)
        with pytest.raises(openai.AuthenticationError):
            client_for(server, "wrong").models.list()
        client = client_for(server, "serve-secret")
        with pytest.raises(openai.NotFoundError, match="not served"):
            client.chat.completions.create(model="nope", messages=hello)
        with pytest.raises(openai.BadRequestError, match="messages"):
            client.chat.completions.create(model="primary", messages=[])
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.chat.completions.create(model="primary", messages=hello, temperature=9)
        with pytest.raises(openai.InternalServerError, match="CUDA fell over"):
            client.chat.completions.create(model="primary", messages=hello)
        raw = httpx.post(
            f"{server.url}/chat/completions",
            content=b"{nope",
            headers={"authorization": "Bearer serve-secret"},
        )
        assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_omitted_model_means_primary():
    scripted = ScriptedModel([], name="s", default="hello")
    with ServerThread(create_app(ModelPool(static={"primary": scripted}))) as server:
        raw = httpx.post(
            f"{server.url}/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        ).json()
    assert raw["model"] == "primary"
    assert raw["choices"][0]["message"] == {"role": "assistant", "content": "hello"}


# -- the command ------------------------------------------------------------------------------


@pytest.mark.integration
def test_serve_command_serves_a_model_directory(tool_model_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "AUTORETRAIN_HOME": str(tmp_path), "AUTORETRAIN_SERVE_API_KEY": "k1"}
    command = [sys.executable, "-c", "from autoretrain.cli import main; main()", "serve"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--model", f"tiny={tool_model_dir}", "--preload"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "serve did not come up in 60 s"
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1", max_retries=0)
        completion = client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, temperature=0
        )
        assert completion.choices[0].message.tool_calls[0].function.name == "calculator"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_command_with_nothing_to_serve_says_what_to_do(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from autoretrain.cli import cli

    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code != 0
    assert "nothing to serve" in result.output and "--model" in result.output


def test_a_slow_model_load_does_not_hold_up_other_models(tmp_path):
    def slow_loader(name, entry):
        time.sleep(1.0)
        return ScriptedModel([], name=name, default="loaded")

    pool = ModelPool(
        static={"big": ServingEntry(tmp_path), "small": ScriptedModel([], default="quick")},
        loader=slow_loader,
    )
    with ServerThread(create_app(pool)) as server:
        client = client_for(server)
        hello = [{"role": "user", "content": "hi"}]
        big = threading.Thread(
            target=client.chat.completions.create, kwargs={"model": "big", "messages": hello}
        )
        big.start()
        time.sleep(0.1)
        t0 = time.perf_counter()
        reply = client.chat.completions.create(model="small", messages=hello)
        quick = time.perf_counter() - t0
        big.join()
        assert pool.loaded() == ["big", "small"]
    assert reply.choices[0].message.content == "quick"
    assert quick < 0.7
    assert pool.loaded() == []  # shutdown released them
