"""Routing and failures: slots resolved from the registry and settings, canary share sticky per
run, promotion and rollback seen live, upstream errors answered as OpenAI does and recorded,
and a failing recorder that never fails the agent's call."""

from __future__ import annotations

import time

import duckdb
import httpx
import openai
import pytest

from autoretrain.deploy.registry import ModelRegistry
from autoretrain.gateway.grouping import bucket
from autoretrain.gateway.targets import RegistrySnapshot, SlotResolver
from autoretrain.settings import Settings
from autoretrain_tests.gateway.conftest import client, landed, make_settings, running, wait_for
from autoretrain_tests.gateway.test_capture import SYSTEM, call, close, tool_turns
from autoretrain_tests.servers import free_port


def ask(api, text: str) -> tuple[str, str]:
    """(the answer's text, the slot that served it) for one call."""
    raw = api.chat.completions.with_raw_response.create(
        model="primary", messages=[SYSTEM, {"role": "user", "content": text}]
    )
    return raw.parse().choices[0].message.content, raw.headers["x-autoretrain-slot"]


def test_canary_share_is_sticky_per_run_and_recorded(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, canary_share=0.5)
    with running(settings) as server:
        served: dict[str, set[str]] = {}
        for i in range(40):
            api = client(server, **{"X-Autoretrain-Run": f"run-{i}"})
            for turn in range(3):
                answer, slot = ask(api, f"turn {turn}")
                assert answer.startswith("model-b" if slot == "canary" else "model-a")
                served.setdefault(f"run-{i}", set()).add(slot)
        # Runs grouped by stitching keep their slot too.
        api = client(server)
        for i in range(10):
            messages, _ = tool_turns(api, f"stitched {i}")
            follow = call(api, [*messages, {"role": "user", "content": "more"}])
            assert follow["content"].split(":")[0] == messages[-1]["content"].split(":")[0]
        for i in range(40):
            close(server, f"run-{i}")
        runs = wait_for(lambda: len(landed(settings)) == 40 and landed(settings), what="40 runs")
    assert all(len(slots) == 1 for slots in served.values())  # sticky
    for run_id, slots in served.items():
        expected = "canary" if bucket(run_id) < 0.5 else "primary"
        assert slots == {expected}
        assert runs[run_id].slot == expected
        assert runs[run_id].model == ("model-b" if expected == "canary" else "model-a")
    assert 8 <= sum(s == {"canary"} for s in served.values()) <= 32


def test_no_canary_held_means_primary(tmp_path, upstream):
    _, url = upstream
    targets = {"primary": {"base_url": url, "model": "model-a"}}
    settings = make_settings(tmp_path, url, canary_share=1.0, targets=targets)
    with running(settings) as server:
        api = client(server)
        assert {ask(api, f"q{i}")[1] for i in range(5)} == {"primary"}
        # An explicit name is never rerouted; a name that is no slot goes to default_slot.
        assert (
            call(api, [SYSTEM, {"role": "user", "content": "x"}], model="gpt-4o")["content"]
            == "model-a: x"
        )
        models = httpx.get(f"{server.url}/models").json()
        assert [m["id"] for m in models["data"]] == ["primary"]


def registry_settings(tmp_path, url: str) -> Settings:
    """Slots follow the registry: hosted versions whose model ids the targets forward."""
    targets = {"primary": {"base_url": url}, "canary": {"base_url": url}}
    return make_settings(tmp_path, url, targets=targets)


def with_registry(settings: Settings, action) -> None:
    """Run `action(registry)` on a writer connection. The gateway's reader (same process)
    may hold the file for a moment: retry as an operator would."""
    deadline = time.monotonic() + 10
    while True:
        try:
            con = duckdb.connect(str(settings.paths.database))
        except duckdb.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            action(ModelRegistry.from_settings(con, settings))
            return
        finally:
            con.close()


def test_promotion_and_rollback_are_seen_live(tmp_path, upstream):
    _, url = upstream
    settings = registry_settings(tmp_path, url)
    settings.paths.root.mkdir(parents=True, exist_ok=True)

    def setup(registry):
        registry.register(base_model="m", kind="hosted", hosted_model_id="model-a", version_id="v1")
        registry.register(base_model="m", kind="hosted", hosted_model_id="model-b", version_id="v2")
        registry.promote("v1", "primary")

    with_registry(settings, setup)
    with running(settings) as server:
        api = client(server)
        assert ask(api, "before")[0] == "model-a: before"
        assert (
            call(api, [SYSTEM, {"role": "user", "content": "by id"}], model="v2")["content"]
            == "model-b: by id"
        )
        with_registry(settings, lambda r: r.promote("v2", "primary"))
        wait_for(lambda: ask(api, "after")[0] == "model-b: after", what="promotion seen")
        with_registry(settings, lambda r: r.rollback("primary"))
        wait_for(lambda: ask(api, "rolled back")[0] == "model-a: rolled back", what="rollback seen")
        health = httpx.get(f"{server.url.removesuffix('/v1')}/health").json()
        assert health["slots"] == {"primary": "v1"}
    runs = landed(settings)
    # Recorded under the version id (what canary analysis and the ledger speak).
    by_answer = {r.messages[-1].content: r for r in runs.values()}
    assert by_answer["model-a: before"].model == "v1"
    assert by_answer["model-b: after"].model == "v2"
    assert by_answer["model-b: by id"].slot == "v2"


def test_a_local_version_goes_to_autoretrain_serve(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, targets={}, serve_url="http://127.0.0.1:8000/v1")
    snapshot = RegistrySnapshot(
        {"primary": "v3"}, {"v3": ("local", None), "h1": ("hosted", "ft:x")}
    )
    resolver = SlotResolver(settings, reader=lambda s: snapshot)
    assert resolver.refresh(force=True)
    target = resolver.resolve("primary")
    assert (target.kind, target.url, target.model, target.recorded_model) == (
        "serve",
        "http://127.0.0.1:8000/v1/chat/completions",
        "v3",
        "v3",
    )
    assert resolver.resolve("canary") is None  # empty slot
    # A hosted version with no target of its own: where the active profile points.
    hosted = resolver.resolve("h1")
    assert (hosted.url, hosted.model, hosted.recorded_model) == (
        f"{url}/chat/completions",
        "ft:x",
        "h1",
    )
    assert resolver.resolve("nothing") is None
    # A reader that fails (the store is locked) keeps the last answer.
    resolver.reader = lambda s: None
    assert not resolver.refresh(force=True)
    assert resolver.resolve("primary") == target and resolver.stale_reads == 1


def test_azure_target_url_and_key(tmp_path, upstream, monkeypatch):
    _, url = upstream
    monkeypatch.setenv("AZ_KEY", "secret")
    targets = {
        "primary": {
            "kind": "azure_openai",
            "base_url": "https://res.openai.azure.com",
            "model": "gpt-4o-mini-prod",
            "api_key_env": "AZ_KEY",
            "use_entra_id": False,
        }
    }
    settings = make_settings(tmp_path, url, targets=targets)
    target = SlotResolver(settings).resolve("primary")
    assert target.url == (
        "https://res.openai.azure.com/openai/deployments/gpt-4o-mini-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert dict(target.headers) == {"api-key": "secret"}


def test_upstream_failures_are_answered_and_recorded(tmp_path, upstream):
    _, url = upstream
    refused = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    targets = {
        "primary": {"base_url": url, "model": "model-a"},
        "crash": {"base_url": url, "model": "fail-500"},
        "html": {"base_url": url, "model": "fail-html"},
        "dies": {"base_url": url, "model": "die-mid-stream"},
        "down": {"base_url": refused, "model": "any"},
    }
    settings = make_settings(tmp_path, url, targets=targets)
    question = [SYSTEM, {"role": "user", "content": "one two three four"}]
    with running(settings) as server:
        api = client(server)
        with pytest.raises(openai.InternalServerError) as crash:
            api.chat.completions.create(model="crash", messages=question)
        assert crash.value.status_code == 500 and crash.value.body["message"] == "the model crashed"
        with pytest.raises(openai.APIStatusError) as html:
            api.chat.completions.create(model="html", messages=question)
        assert html.value.status_code == 503
        assert (
            html.value.body["code"] == "upstream_error"
            and "bad gateway" in html.value.body["message"]
        )
        with pytest.raises(openai.APIStatusError) as down:
            api.chat.completions.create(model="down", messages=question)
        assert down.value.status_code == 502 and down.value.body["code"] == "upstream_unreachable"
        with pytest.raises(openai.APIError):
            for _ in api.chat.completions.create(model="dies", messages=question, stream=True):
                pass
        # The gateway itself is fine.
        assert call(api, question)["content"] == "model-a: one two three four"
    runs = landed(settings)
    failed = {r.slot: r for r in runs.values() if r.status == "failed"}
    assert set(failed) == {"crash", "html", "down", "dies"}
    for slot, run in failed.items():
        [event] = [e for e in run.events if e.type == "model_call"]
        assert event.payload["status"] == "failed" and event.payload["error"], slot
    assert failed["crash"].events[0].payload["http_status"] == 500
    assert failed["down"].events[0].payload["http_status"] == 502
    assert "stream" in failed["dies"].events[0].payload["error"]
    # What the dying stream sent before it broke is kept.
    assert failed["dies"].messages[-1].content == "die-mid-stream: one"


def test_a_failing_recorder_never_fails_the_agent(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, run_idle_s=0.05, max_buffered_runs=3)
    # The landing zone cannot be created: its path is a file (fails for root as well).
    settings.paths.landing.parent.mkdir(parents=True)
    settings.paths.landing.write_text("not a folder")
    with running(settings) as server:
        api = client(server)
        answers = [
            call(api, [SYSTEM, {"role": "user", "content": f"q{i}"}])["content"] for i in range(12)
        ]
        assert answers == [f"model-a: q{i}" for i in range(12)]
        health = lambda: httpx.get(f"{server.url.removesuffix('/v1')}/health").json()  # noqa: E731
        state = wait_for(
            lambda: (
                (h := health())["recorder"]["dropped"] and h["recorder"]["write_failures"] and h
            ),
            what="drops and failed writes",
        )
        assert state["status"] == "degraded" and state["recorder"]["write_failures"] > 0
        assert state["recorder"]["buffered"] <= 3
    recorder = server.gateway.recorder
    assert recorder.recorded == 0 and recorder.dropped == 12  # every run counted, none hidden


def test_refused_upstream_while_streaming_is_a_502(tmp_path, upstream):
    _, url = upstream
    refused = f"http://127.0.0.1:{free_port()}/v1"
    settings = make_settings(
        tmp_path, url, targets={"primary": {"base_url": refused, "model": "m"}}
    )
    with running(settings) as server:
        response = httpx.post(
            f"{server.url}/chat/completions",
            json={
                "model": "primary",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unreachable"
        assert response.headers["x-autoretrain-slot"] == "primary"


def test_health_and_unknown_model(tmp_path, upstream):
    _, url = upstream
    settings = make_settings(tmp_path, url, default_slot=None, serve={"max_body_bytes": 4096})
    with running(settings) as server:
        base = server.url.removesuffix("/v1")
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        response = httpx.post(
            f"{server.url}/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        big = {"model": "primary", "messages": [{"role": "user", "content": "x" * 5000}]}
        too_big = httpx.post(f"{server.url}/chat/completions", json=big)
        assert (
            too_big.status_code == 413
            and too_big.json()["error"]["type"] == "invalid_request_error"
        )
        bad = httpx.post(f"{server.url}/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_local_versions_through_autoretrain_serve_follow_a_promotion(tmp_path, upstream):
    """A real `autoretrain serve` app (models from a watched serving.json, scripted so no
    weights load) behind the gateway. The registry moves primary from v3 to v4 and serve drops
    v3 before the gateway's cache expires: serve answers 404 for v3, and the gateway re-reads
    the registry at once and sends the call to v4."""
    from autoretrain.deploy.serving import ServingEntry, write_serving_config
    from autoretrain.gateway import create_app
    from autoretrain.providers.scripted import ScriptedModel
    from autoretrain.serve import ModelPool, ServerThread
    from autoretrain.serve import create_app as serve_app

    _, url = upstream
    serving = tmp_path / "serving.json"
    entry = ServingEntry(tmp_path / "model")
    write_serving_config(serving, {"primary": entry, "v3": entry})
    pool = ModelPool(
        serving, loader=lambda name, e: ScriptedModel([], name=name, default=f"from {name}")
    )
    registry = {
        "snapshot": RegistrySnapshot(
            {"primary": "v3"}, {"v3": ("local", None), "v4": ("local", None)}
        )
    }
    with ServerThread(serve_app(pool)) as serve:
        settings = make_settings(
            tmp_path / "home", url, targets={}, serve_url=serve.url, registry_ttl_s=60.0
        )
        resolver = SlotResolver(settings, reader=lambda s: registry["snapshot"])
        app = create_app(settings, resolver=resolver)
        with ServerThread(app) as server:
            api = client(server)
            assert ask(api, "one")[0] == "from v3"
            write_serving_config(serving, {"primary": entry, "v4": entry})
            registry["snapshot"] = RegistrySnapshot(
                {"primary": "v4"}, {"v3": ("local", None), "v4": ("local", None)}
            )
            assert ask(api, "two") == ("from v4", "primary")
    runs = landed(settings)
    by_answer = {r.messages[-1].content: r for r in runs.values()}
    assert by_answer["from v3"].model == "v3" and by_answer["from v4"].model == "v4"
    assert all(r.status == "succeeded" for r in runs.values())
