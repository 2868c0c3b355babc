import json
import shutil

import pytest

from autoretrain.deploy.serving import ServingEntry, write_serving_config
from autoretrain.providers.azure_openai import AzureOpenAIChatModel
from autoretrain.providers.base import ProviderError
from autoretrain.providers.factory import chat_model_for
from autoretrain.providers.local import LocalChatModel
from autoretrain.settings import load_settings
from autoretrain_tests.providers.scripted_http import ScriptedServer, completion


def settings_with(tmp_path, **profile):
    return load_settings(
        config_file=tmp_path / "absent.yaml", provider="p", providers={"p": profile}
    )


def test_model_dir_is_served_in_process(settings, untrained_model_dir):
    model = chat_model_for(settings, model_dir=untrained_model_dir)
    assert isinstance(model, LocalChatModel)
    assert model.name == untrained_model_dir.name


def test_local_slot_from_serving_json_with_version_name(settings, untrained_model_dir):
    version = settings.paths.models / "base-1"
    shutil.copytree(untrained_model_dir, version)
    write_serving_config(settings.paths.root / "serving.json", {"primary": ServingEntry(version)})
    model = chat_model_for(settings, "primary")
    assert isinstance(model, LocalChatModel) and model.name == "base-1"
    with pytest.raises(ProviderError, match="no 'canary' entry"):
        chat_model_for(settings, "canary")


def test_local_slot_naming_a_version_folder(tmp_path, monkeypatch, untrained_model_dir):
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    settings = settings_with(tmp_path, kind="local", slots={"primary": "v7"})
    shutil.copytree(untrained_model_dir, settings.paths.models / "v7")
    assert chat_model_for(settings).name == "v7"


def test_local_with_nothing_says_bootstrap(settings):
    with pytest.raises(ProviderError, match="autoretrain bootstrap"):
        chat_model_for(settings)


def test_openai_compatible_profile_calls_its_endpoint(tmp_path):
    with ScriptedServer([(503, {}, b"{}"), (200, {}, completion("hi"))]) as server:
        settings = settings_with(
            tmp_path,
            kind="openai_compatible",
            base_url=server.url + "/v1",
            slots={"primary": "qwen2.5-7b-instruct", "canary": "cand"},
            max_retries=1,
            timeout_s=5,
        )
        model = chat_model_for(settings, "primary")
        model.backoff_s = 0.01
        reply = model.chat([{"role": "user", "content": "x"}])
    assert reply.message["content"] == "hi" and reply.notes[0]["reason"] == "HTTP 503"
    assert json.loads(server.requests[1]["body"])["model"] == "qwen2.5-7b-instruct"
    assert chat_model_for(settings, "canary").model == "cand"
    with pytest.raises(ProviderError, match="no 'shadow' slot"):
        chat_model_for(settings, "shadow")


def test_azure_profile_uses_the_slot_deployment(tmp_path, monkeypatch):
    # The factory checks the credential when it builds the model (no Entra ID here: the key).
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key")
    settings = settings_with(
        tmp_path,
        kind="azure_openai",
        azure_endpoint="https://example.openai.azure.com",
        api_version="2025-01-01-preview",
        api_key_env="AZURE_OPENAI_API_KEY",
        slots={"primary": "gpt4o-ft-primary"},
    )
    model = chat_model_for(settings)
    assert isinstance(model, AzureOpenAIChatModel)
    assert (model.deployment, model.api_version) == ("gpt4o-ft-primary", "2025-01-01-preview")
    no_endpoint = settings_with(tmp_path, kind="azure_openai", slots={"primary": "d"})
    with pytest.raises(ProviderError, match="azure_endpoint"):
        chat_model_for(no_endpoint)


def test_scripted_profile_is_refused(tmp_path):
    with pytest.raises(ProviderError, match="ScriptedModel"):
        chat_model_for(settings_with(tmp_path, kind="scripted"))
