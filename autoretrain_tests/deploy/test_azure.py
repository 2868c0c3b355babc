"""Azure deployments through the management API, against the loopback double."""

from __future__ import annotations

import json
import time

import openai
import pytest
import yaml
from azure.core.credentials import AccessToken
from click.testing import CliRunner

from autoretrain.deploy.azure import (
    ARM_API_VERSION,
    AzureDeployments,
    DeploymentError,
    keep_alive,
    keep_alive_command,
    slot_deployments,
)
from autoretrain.settings import ProviderProfile
from autoretrain.training.backend import Backoff
from autoretrain_tests.azure_double import AzureDouble

FAST = Backoff(initial_s=0.005, max_s=0.02, factor=2)
MODEL_A = "gpt-4o-mini-2024-07-18.ft-aaaa"
MODEL_B = "gpt-4o-mini-2024-07-18.ft-bbbb"
PATH = (
    "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.CognitiveServices"
    "/accounts/acct-1/deployments/"
)


class StaticCredential:
    def __init__(self, token: str):
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def double():
    with AzureDouble() as d:
        d.known_models.update({MODEL_A, MODEL_B})
        yield d


def arm(double: AzureDouble, **kwargs) -> AzureDeployments:
    return AzureDeployments(
        "sub-1", "rg-1", "acct-1", lambda: double.token, endpoint=double.url, backoff=FAST, **kwargs
    )


def test_create_then_update_a_deployment(double):
    deployments = arm(double)
    assert deployments.get("canary") is None

    created = deployments.create_or_update("canary", MODEL_A, capacity=2)
    assert (created.name, created.model, created.state) == ("canary", MODEL_A, "Succeeded")
    assert (created.sku, created.capacity, created.model_version) == ("standard", 2, "1")
    put = double.requests_to("PUT", PATH + "canary")[0]
    assert put["query"] == {"api-version": ARM_API_VERSION}
    assert put["authorization"] == f"Bearer {double.token}"
    assert json.loads(put["body"]) == {
        "sku": {"name": "standard", "capacity": 2},
        "properties": {"model": {"format": "OpenAI", "name": MODEL_A, "version": "1"}},
    }
    # It waited: at least one GET saw the deployment still provisioning.
    assert len(double.requests_to("GET", PATH + "canary")) >= 3

    updated = deployments.create_or_update("canary", MODEL_B)
    assert (updated.model, updated.state) == (MODEL_B, "Succeeded")
    assert double.deployments["canary"]["properties"]["model"]["name"] == MODEL_B


def test_service_error_is_clear(double):
    double.deployment_error = (
        400,
        "InsufficientQuota",
        "This operation require 2 new capacity in quota Tokens Per Minute (thousands), which is "
        "bigger than the current available capacity 0.",
    )
    with pytest.raises(DeploymentError) as caught:
        arm(double).create_or_update("primary", MODEL_A, capacity=2)
    message = str(caught.value)
    for part in ("'primary'", "acct-1", "rg-1", "HTTP 400", "InsufficientQuota", "capacity 0"):
        assert part in message
    assert "deployment_capacity" in message  # what to do
    assert double.deployments == {}


def test_unknown_model_and_failed_provisioning(double):
    with pytest.raises(DeploymentError, match="DeploymentModelNotSupported.*ft-zzzz"):
        arm(double).create_or_update("primary", "gpt-4o-mini.ft-zzzz")
    double.deployment_outcome = "Failed"
    with pytest.raises(DeploymentError, match="ended Failed for model .*ft-aaaa"):
        arm(double).create_or_update("primary", MODEL_A)


def test_wrong_token_and_unreachable_endpoint(double):
    wrong = AzureDeployments("sub-1", "rg-1", "acct-1", lambda: "stale", endpoint=double.url)
    with pytest.raises(DeploymentError, match="HTTP 401 AuthenticationFailed.*az login"):
        wrong.create_or_update("primary", MODEL_A)
    gone = AzureDeployments(
        "sub-1",
        "rg-1",
        "acct-1",
        lambda: "t",
        endpoint="http://127.0.0.1:9",
        backoff=FAST,
        max_retries=1,
        request_timeout_s=2,
    )
    with pytest.raises(DeploymentError, match="cannot reach the Azure management API"):
        gone.get("primary")


def test_transient_unavailability_is_retried(double):
    double.arm_unavailable = 2
    deployment = arm(double, max_retries=3).create_or_update("primary", MODEL_A)
    assert deployment.state == "Succeeded"
    assert len(double.requests_to("PUT", PATH)) == 3
    double.arm_unavailable = 5
    with pytest.raises(DeploymentError, match="HTTP 503 ServiceUnavailable"):
        arm(double, max_retries=1).get("primary")


def test_from_profile_needs_the_account_and_an_entra_token(double):
    with pytest.raises(DeploymentError, match="azure_subscription_id, azure_resource_group"):
        AzureDeployments.from_profile(ProviderProfile(kind="azure_openai"))
    profile = ProviderProfile(
        kind="azure_openai",
        azure_subscription_id="sub-1",
        azure_resource_group="rg-1",
        azure_account="acct-1",
        management_endpoint=double.url,
    )
    credential = StaticCredential(double.token)
    deployments = AzureDeployments.from_profile(profile, credential=credential, backoff=FAST)
    assert deployments.create_or_update("primary", MODEL_A).state == "Succeeded"
    assert credential.scopes[0] == "https://management.azure.com/.default"


def test_keep_alive_calls_every_deployment_once(double):
    deployments = arm(double)
    deployments.create_or_update("primary", MODEL_A)
    deployments.create_or_update("canary", MODEL_B)
    client = openai.AzureOpenAI(
        azure_endpoint=double.url, api_key=double.api_key, api_version="2024-10-21", max_retries=0
    )
    results = keep_alive(client, ["primary", "canary", "primary", "deleted-one"])
    assert [(r.deployment, r.ok) for r in results] == [
        ("primary", True),
        ("canary", True),
        ("deleted-one", False),
    ]
    assert double.chat_calls == {"primary": 1, "canary": 1}
    assert "DeploymentNotFound" in results[2].detail or "does not exist" in results[2].detail
    chat = double.requests_to("POST", "/openai/deployments/primary/chat/completions")[0]
    assert json.loads(chat["body"])["max_tokens"] == 1
    assert slot_deployments(ProviderProfile(slots={"primary": "p", "canary": "c"})) == ["c", "p"]


def test_keep_alive_command(double, tmp_path, monkeypatch):
    arm(double).create_or_update("prod-primary", MODEL_A)
    config = tmp_path / "autoretrain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "provider": "azure",
                "providers": {
                    "azure": {
                        "kind": "azure_openai",
                        "azure_endpoint": double.url,
                        "api_key_env": "DOUBLE_KEY",
                        "max_retries": 0,
                        "slots": {"primary": "prod-primary", "canary": "prod-canary"},
                    }
                },
            }
        )
    )
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOUBLE_KEY", double.api_key)
    # No Entra ID sign-in on this machine: the command falls back to the key.
    result = CliRunner().invoke(keep_alive_command, ["--json"])
    assert result.exit_code == 1, result.output  # the canary deployment does not exist
    report = {r["deployment"]: r["ok"] for r in json.loads(result.stdout)}
    assert report == {"prod-canary": False, "prod-primary": True}
    assert double.chat_calls == {"prod-primary": 1}
    assert double.api_key not in result.output
