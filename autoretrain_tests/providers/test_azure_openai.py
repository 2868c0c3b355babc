"""Azure OpenAI over real HTTP on 127.0.0.1 (the real `openai.AzureOpenAI` client against a
scripted server that follows the documented request shape). Entra ID cannot run here, so the
credential is a stand-in with azure-identity's `get_token` interface."""

import logging

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from autoretrain.providers.azure_openai import COGNITIVE_SERVICES_SCOPE, AzureOpenAIChatModel
from autoretrain.providers.base import ProviderError
from autoretrain_tests.providers.scripted_http import ScriptedServer, completion

HELLO = [{"role": "user", "content": "hi"}]
SECRET = "sk-azure-test-key-0123456789abcdef"


class TokenCredential:
    def __init__(self, token: str | None):
        self.token = token
        self.scopes: list[tuple] = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        if self.token is None:
            raise ClientAuthenticationError("no managed identity on this machine")
        return AccessToken(self.token, 4102444800)


def model_for(server, **kwargs):
    return AzureOpenAIChatModel(
        deployment="gpt-4o-mini-primary",
        azure_endpoint=server.url,
        api_version="2024-10-21",
        backoff_s=0.01,
        timeout_s=5,
        **kwargs,
    )


def test_entra_id_is_preferred_and_sent_as_bearer_token(monkeypatch):
    monkeypatch.setenv("AZ_KEY", SECRET)
    credential = TokenCredential("entra-token-1")
    with ScriptedServer([(200, {}, completion("hello"))]) as server:
        model = model_for(server, api_key_env="AZ_KEY", credential=credential)
        reply = model.chat(HELLO)
        request = server.requests[0]
    assert reply.message["content"] == "hello"
    assert model.auth_method == "entra_id"
    assert credential.scopes[0] == (COGNITIVE_SERVICES_SCOPE,)
    assert request["path"] == (
        "/openai/deployments/gpt-4o-mini-primary/chat/completions?api-version=2024-10-21"
    )
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == "Bearer entra-token-1"
    assert "api-key" not in headers


def test_api_key_is_the_fallback_and_never_reaches_logs_notes_or_errors(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AZ_KEY", SECRET)
    replies = [
        (429, {"retry-after": "0"}, b'{"error": {"message": "rate limited"}}'),
        (200, {}, completion("hello")),
        (401, {}, b'{"error": {"message": "Access denied due to invalid subscription key"}}'),
    ]
    with ScriptedServer(replies) as server:
        model = model_for(server, api_key_env="AZ_KEY", credential=TokenCredential(None))
        reply = model.chat(HELLO)
        with pytest.raises(ProviderError) as failure:
            model.chat(HELLO)
        headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert model.auth_method == "api_key"
    assert headers["api-key"] == SECRET  # the key did go where it belongs
    assert reply.notes[0]["type"] == "retry"
    seen = " ".join(
        [caplog.text, repr(model), str(reply), str(failure.value), repr(failure.value.__cause__)]
    )
    assert SECRET not in seen
    assert "Entra ID unavailable" in caplog.text


def test_no_credential_at_all_says_what_to_do(monkeypatch):
    monkeypatch.delenv("AZ_KEY", raising=False)
    with ScriptedServer([]) as server:
        model = model_for(server, api_key_env="AZ_KEY", credential=TokenCredential(None))
        with pytest.raises(ProviderError, match="AZ_KEY is not set") as info:
            model.chat(HELLO)
    assert "ClientAuthenticationError" in str(info.value)
