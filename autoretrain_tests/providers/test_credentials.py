"""A remote provider whose credential is missing fails when the model is built, naming the
variable, before a single run is played (issue 21: it used to land every run as an error and
exit 0)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.providers.base import ProviderError
from autoretrain.providers.factory import chat_model_for
from autoretrain.settings import load_settings
from autoretrain_tests.providers.scripted_http import ScriptedServer, completion

KEY = "AUTORETRAIN_TEST_ENDPOINT_KEY"


def remote(tmp_path, **profile):
    return load_settings(
        config_file=tmp_path / "absent.yaml", provider="remote", providers={"remote": profile}
    )


def test_a_missing_key_variable_fails_when_the_model_is_built(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY, raising=False)
    with ScriptedServer([(200, {}, completion("hi"))]) as server:
        settings = remote(
            tmp_path,
            kind="openai_compatible",
            base_url=server.url + "/v1",
            api_key_env=KEY,
            slots={"primary": "m"},
        )
        with pytest.raises(ProviderError, match=f"environment variable {KEY} .* is not set"):
            chat_model_for(settings)
        assert server.requests == []

        monkeypatch.setenv(KEY, "sk-test")
        reply = chat_model_for(settings).chat([{"role": "user", "content": "x"}])
        assert reply.message["content"] == "hi"
        headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
        assert headers["authorization"] == "Bearer sk-test"


def test_azure_without_entra_id_or_key_fails_when_the_model_is_built(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTORETRAIN_TEST_AZURE_KEY", raising=False)
    settings = remote(
        tmp_path,
        kind="azure_openai",
        azure_endpoint="https://example.openai.azure.com",
        api_key_env="AUTORETRAIN_TEST_AZURE_KEY",
        slots={"primary": "gpt4o-ft-primary"},
    )
    with pytest.raises(ProviderError, match="AUTORETRAIN_TEST_AZURE_KEY is not set"):
        chat_model_for(settings)


def test_selfplay_with_a_missing_key_plays_nothing_and_exits_non_zero(
    settings, tmp_path, monkeypatch
):
    monkeypatch.delenv(KEY, raising=False)
    with ScriptedServer([]) as server:
        config = tmp_path / "remote.yaml"
        config.write_text(
            "provider: remote\n"
            "providers:\n"
            f"  remote: {{kind: openai_compatible, base_url: '{server.url}/v1', "
            f"api_key_env: {KEY}, slots: {{primary: m}}}}\n"
        )
        monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
        result = CliRunner().invoke(cli, ["selfplay", "--n", "5"])
        assert result.exit_code == 1, result.output
        assert KEY in result.output and "nothing was run" in result.output
        assert server.requests == []
    landing = settings.paths.landing
    assert not landing.exists() or not any(p.is_file() for p in landing.rglob("*"))
