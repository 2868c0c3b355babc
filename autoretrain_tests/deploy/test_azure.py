"""Azure deployments through the management API, against the loopback double."""

from __future__ import annotations

import json
import time

import openai
import pytest
import yaml
from azure.core.credentials import AccessToken
from click.testing import CliRunner

from autoretrain.cli.azure import keep_alive_command
from autoretrain.deploy.azure import (
    ARM_API_VERSION,
    AzureDeployments,
    DeploymentError,
    deployment_name,
    keep_alive,
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


def test_create_a_deployment_and_azure_refuses_to_change_its_model(double):
    deployments = arm(double)
    assert deployments.get("canary") is None

    created = deployments.create("canary", MODEL_A, capacity=2)
    assert (created.name, created.model, created.state) == ("canary", MODEL_A, "Succeeded")
    assert (created.sku, created.capacity, created.model_version) == ("standard", 2, "1")
    put = double.requests_to("PUT", PATH + "canary")[0]
    assert put["query"] == {"api-version": ARM_API_VERSION}
    assert put["authorization"] == f"Bearer {double.token}"
    assert json.loads(put["body"]) == {
        "sku": {"name": "standard", "capacity": 2},
        "properties": {"model": {"format": "OpenAI", "name": MODEL_A, "version": "1"}},
    }
    # It waited: the GETs saw Creating before Succeeded.
    assert len(double.requests_to("GET", PATH + "canary")) >= 3

    # Azure's answer to re-pointing a deployment, word for word; nothing changes.
    with pytest.raises(DeploymentError) as caught:
        deployments.create("canary", MODEL_B)
    message = str(caught.value)
    assert "HTTP 400 CannotChangeDeploymentModel: The model of deployment cannot be changed." in (
        message
    )
    assert "deployment of its own" in message  # what to do
    assert double.deployments["canary"]["properties"]["model"]["name"] == MODEL_A

    # The same model with another capacity is an update Azure accepts.
    resized = deployments.create("canary", MODEL_A, capacity=5)
    assert (resized.model, resized.capacity, resized.state) == (MODEL_A, 5, "Succeeded")


def test_the_double_answers_model_changes_as_azure_does(double):
    """The raw HTTP exchange, without our client in between."""
    import urllib.error
    import urllib.request

    url = f"{double.url}{PATH}d1?api-version={ARM_API_VERSION}"

    def call(method, body=None):
        request = urllib.request.Request(
            url, data=json.dumps(body).encode() if body else None, method=method
        )
        request.add_header("Authorization", f"Bearer {double.token}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def body(model):
        return {
            "sku": {"name": "Standard", "capacity": 1},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
        }

    status, created = call("PUT", body(MODEL_A))
    assert status == 201 and created["properties"]["provisioningState"] == "Creating"
    assert call("GET")[1]["properties"]["provisioningState"] == "Creating"
    assert call("GET")[1]["properties"]["provisioningState"] == "Succeeded"
    assert call("PUT", body(MODEL_B)) == (
        400,
        {
            "error": {
                "code": "CannotChangeDeploymentModel",
                "message": "The model of deployment cannot be changed.",
            }
        },
    )
    assert call("DELETE") == (200, None)
    status, gone = call("GET")
    assert status == 404 and gone["error"]["code"] == "DeploymentNotFound"
    assert call("DELETE") == (204, None)
    # Gone, the name is free again: a new deployment of another model may take it.
    assert call("PUT", body(MODEL_B))[0] == 201
    assert double.deleted == [("d1", "DELETE")]


def test_ensure_reuses_recreates_and_never_repoints(double):
    deployments = arm(double)
    first, how = deployments.ensure("v1", MODEL_A)
    assert (first.model, first.state, how) == (MODEL_A, "Succeeded", "created")
    puts = len(double.requests_to("PUT", PATH))
    again, how = deployments.ensure("v1", MODEL_A)
    assert how == "existing" and len(double.requests_to("PUT", PATH)) == puts  # nothing sent

    with pytest.raises(DeploymentError, match="serves .*ft-aaaa.*cannot change a deployment's"):
        deployments.ensure("v1", MODEL_B)
    assert len(double.requests_to("PUT", PATH)) == puts
    with pytest.raises(DeploymentError, match="is a standard deployment, not developertier"):
        deployments.ensure("v1", MODEL_A, sku="developertier")

    # Deleted (by hand, or by Azure): created again under the same name.
    assert deployments.delete("v1") is True and deployments.get("v1") is None
    assert deployments.delete("v1") is False
    assert deployments.ensure("v1", MODEL_A)[1] == "created"

    # A Failed deployment is not retried by Azure: deleted and created again.
    double.deployment_outcome = "Failed"
    deployments.create("v2", MODEL_B, wait=False)
    assert deployments.get("v2").state == "Creating"
    assert deployments.get("v2").state == "Failed"
    double.deployment_outcome = "Succeeded"
    fixed, how = deployments.ensure("v2", MODEL_B)
    assert (fixed.state, how) == ("Succeeded", "recreated")
    assert ("v2", "DELETE") in double.deleted

    # Still provisioning: it waits instead of sending another PUT.
    deployments.create("v3", MODEL_A, wait=False)
    ready, how = deployments.ensure("v3", MODEL_A)
    assert (ready.state, how) == ("Succeeded", "waited")


def test_developer_tier_lives_24_hours_and_idle_deployments_go_after_15_days(double):
    now = [1_800_000_000.0]
    double.clock = lambda: now[0]
    deployments = arm(double)
    dev = deployments.create("cand--dev", MODEL_B, sku="DeveloperTier")
    assert dev.developer and dev.created_at == "2027-01-15T08:00:00Z"
    deployments.create("prod", MODEL_A)
    now[0] += 23.9 * 3600
    assert deployments.get("cand--dev") is not None
    now[0] += 0.2 * 3600
    assert deployments.get("cand--dev") is None
    assert double.deleted == [("cand--dev", "lifetime")]

    client = openai.AzureOpenAI(
        azure_endpoint=double.url, api_key=double.api_key, api_version="2024-10-21", max_retries=0
    )
    now[0] += 10 * 86400
    assert keep_alive(client, ["prod"])[0].ok  # a call resets the idle clock
    now[0] += 14 * 86400
    assert deployments.get("prod") is not None
    now[0] += 1.1 * 86400
    assert deployments.get("prod") is None
    assert double.deleted[-1] == ("prod", "idle")


def test_deployment_names_are_stable_valid_and_distinct():
    import re

    valid = re.compile(r"^[a-z0-9][a-z0-9-]{1,63}$")
    ids = ["v20261203-070512-abc123", "V1", "v1", "v1-dev", "a/b c", "x" * 80, "---", "é"]
    names = [deployment_name(v) for v in ids] + [deployment_name(v, tier="dev") for v in ids]
    assert all(valid.match(n) for n in names), names
    assert len(set(names)) == len(names)  # V1 and v1, v1-dev and v1 + tier dev: all distinct
    assert deployment_name("v20261203-070512-abc123") == "autoretrain-v20261203-070512-abc123"
    assert deployment_name("v1", tier="dev") == "autoretrain-v1--dev"
    assert deployment_name("v1", prefix="team-a") == "team-a-v1"
    assert deployment_name("x" * 80) == deployment_name("x" * 80)
    assert len(deployment_name("x" * 80, tier="dev")) == 64


def test_service_error_is_clear(double):
    double.deployment_error = (
        400,
        "InsufficientQuota",
        "This operation require 2 new capacity in quota Tokens Per Minute (thousands), which is "
        "bigger than the current available capacity 0.",
    )
    with pytest.raises(DeploymentError) as caught:
        arm(double).create("primary", MODEL_A, capacity=2)
    message = str(caught.value)
    for part in ("'primary'", "acct-1", "rg-1", "HTTP 400", "InsufficientQuota", "capacity 0"):
        assert part in message
    assert "deployment_capacity" in message  # what to do
    assert double.deployments == {}


def test_unknown_model_and_failed_provisioning(double):
    with pytest.raises(DeploymentError, match="DeploymentModelNotSupported.*ft-zzzz"):
        arm(double).create("primary", "gpt-4o-mini.ft-zzzz")
    double.deployment_outcome = "Failed"
    with pytest.raises(DeploymentError, match="ended Failed for model .*ft-aaaa"):
        arm(double).create("primary", MODEL_A)


def test_wrong_token_and_unreachable_endpoint(double):
    wrong = AzureDeployments("sub-1", "rg-1", "acct-1", lambda: "stale", endpoint=double.url)
    with pytest.raises(DeploymentError, match="HTTP 401 AuthenticationFailed.*az login"):
        wrong.create("primary", MODEL_A)
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
    deployment = arm(double, max_retries=3).create("primary", MODEL_A)
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
    assert deployments.create("primary", MODEL_A).state == "Succeeded"
    assert credential.scopes[0] == "https://management.azure.com/.default"


def test_keep_alive_calls_every_deployment_once(double):
    deployments = arm(double)
    deployments.create("primary", MODEL_A)
    deployments.create("canary", MODEL_B)
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
    profile = ProviderProfile(slots={"primary": "p", "canary": "c"})
    assert slot_deployments(profile) == ["c", "p"]
    assert slot_deployments(profile, {"primary": "autoretrain-v2"}) == ["c", "autoretrain-v2"]


def test_keep_alive_command(double, tmp_path, monkeypatch):
    arm(double).create("prod-primary", MODEL_A)
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


def test_the_profile_refuses_a_prefix_azure_would_refuse():
    from pydantic import ValidationError

    assert ProviderProfile(deployment_prefix="team-a").deployment_prefix == "team-a"
    for bad in ("Team_A", "-a", "a" * 31, ""):
        with pytest.raises(ValidationError, match="deployment_prefix"):
            ProviderProfile(deployment_prefix=bad)
