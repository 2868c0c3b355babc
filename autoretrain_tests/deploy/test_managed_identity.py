"""Managed identity end to end: the real `DefaultAzureCredential` gets its token from a loopback
App Service / Container Apps identity endpoint, and the project's ARM client and chat provider
use it against the Azure double, which checks the bearer token."""

from __future__ import annotations

import json

import pytest
from azure.identity import DefaultAzureCredential

from autoretrain.deploy.azure import AzureDeployments, DeploymentError
from autoretrain.providers.factory import chat_model_for
from autoretrain.settings import ProviderProfile, load_settings
from autoretrain.training.backend import Backoff
from autoretrain_tests.azure_double import AzureDouble
from autoretrain_tests.identity_server import IdentityServer

FAST = Backoff(initial_s=0.005, max_s=0.02, factor=2)
MODEL = "gpt-4o-mini-2024-07-18.ft-aaaa"
ARM_RESOURCE = "https://management.azure.com"
COGNITIVE_RESOURCE = "https://cognitiveservices.azure.com"
# Anything that would send DefaultAzureCredential elsewhere before managed identity.
OTHER_CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
)


@pytest.fixture
def double():
    with AzureDouble(token="mi-token-0123456789") as d:
        d.known_models.add(MODEL)
        yield d


@pytest.fixture
def identity(double, monkeypatch):
    tokens = {ARM_RESOURCE: double.token, COGNITIVE_RESOURCE: double.token}
    with IdentityServer(tokens) as server:
        for name in OTHER_CREDENTIAL_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        yield server


def profile_for(double: AzureDouble) -> ProviderProfile:
    return ProviderProfile(
        kind="azure_openai",
        azure_endpoint=double.url,
        azure_subscription_id="sub-1",
        azure_resource_group="rg-1",
        azure_account="acct-1",
        management_endpoint=double.url,
    )


def test_the_arm_client_authenticates_with_managed_identity(double, identity):
    # No credential given: the project builds DefaultAzureCredential itself.
    deployments = AzureDeployments.from_profile(profile_for(double), backoff=FAST)
    created = deployments.create("autoretrain-v1", MODEL)
    assert created.state == "Succeeded"
    deployments.get("autoretrain-v1")
    assert deployments.delete("autoretrain-v1") is True

    # The token request, as App Service / Container Apps expect it.
    (request,) = identity.requests  # one request: every later token came from the cache
    assert request["path"] == "/msi/token"
    assert request["query"] == {"api-version": "2019-08-01", "resource": ARM_RESOURCE}
    assert request["header"] == identity.header

    # Every management call carried the token the identity endpoint issued, and the double
    # checked it (a wrong one is a 401, tested below).
    arm_calls = double.requests_to("PUT", "/deployments/") + double.requests_to(
        "GET", "/deployments/"
    )
    assert len(arm_calls) >= 4
    assert {call["authorization"] for call in arm_calls} == {f"Bearer {double.token}"}


def test_a_credential_instance_caches_its_token(double, identity):
    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    first = credential.get_token(f"{ARM_RESOURCE}/.default")
    second = credential.get_token(f"{ARM_RESOURCE}/.default")
    assert first.token == second.token == double.token
    assert first.expires_on > 0 and len(identity.requests) == 1
    # Another resource is another token request.
    credential.get_token(f"{COGNITIVE_RESOURCE}/.default")
    assert [r["query"]["resource"] for r in identity.requests] == [
        ARM_RESOURCE,
        COGNITIVE_RESOURCE,
    ]


def test_a_token_the_double_does_not_accept_is_refused(double, identity):
    identity.tokens[ARM_RESOURCE] = "a-token-for-another-tenant"
    deployments = AzureDeployments.from_profile(profile_for(double), backoff=FAST)
    with pytest.raises(DeploymentError, match="HTTP 401 AuthenticationFailed"):
        deployments.get("anything")
    assert len(identity.requests) == 1


def test_a_wrong_identity_header_is_a_clear_error(double, identity, monkeypatch):
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")
    with pytest.raises(DeploymentError, match="no Microsoft Entra ID token") as caught:
        AzureDeployments.from_profile(profile_for(double), backoff=FAST)
    assert "not-the-secret" not in str(caught.value)
    assert identity.requests and identity.requests[0]["header"] == "not-the-secret"
    assert double.requests == []  # nothing reached the management API


def test_the_chat_provider_authenticates_with_managed_identity(
    double, identity, tmp_path, settings
):
    # The `settings` fixture points AUTORETRAIN_HOME at tmp_path/home (the slot file's root).
    settings = load_settings(
        config_file=tmp_path / "absent.yaml",
        provider="azure",
        providers={"azure": {**profile_for(double).model_dump(), "slots": {"primary": "d1"}}},
    )
    AzureDeployments(
        "sub-1", "rg-1", "acct-1", lambda: double.token, endpoint=double.url, backoff=FAST
    ).create("d1", MODEL)
    model = chat_model_for(settings, "primary")
    assert model.auth_method == "entra_id"
    answer = model.client().chat.completions.create(
        model=model.deployment, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert answer.model == MODEL
    chat = double.requests_to("POST", "/openai/deployments/d1/chat/completions")[0]
    assert chat["authorization"] == f"Bearer {double.token}" and chat["api_key"] is None
    assert [r["query"]["resource"] for r in identity.requests] == [COGNITIVE_RESOURCE]


def test_the_retire_command_signs_in_with_managed_identity(double, identity, tmp_path, monkeypatch):
    import duckdb
    import yaml
    from click.testing import CliRunner

    from autoretrain.cli.azure import retire_command
    from autoretrain.deploy.registry import ModelRegistry
    from autoretrain.deploy.slot_config import slot_file
    from autoretrain.deploy.targets import AzureTarget, deploy_to_slot

    config = tmp_path / "autoretrain.yaml"
    profile = {k: v for k, v in profile_for(double).model_dump().items() if v is not None}
    config.write_text(yaml.safe_dump({"provider": "azure", "providers": {"azure": profile}}))
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    monkeypatch.setenv("AUTORETRAIN_HOME", str(tmp_path / "home"))
    settings = load_settings()
    (tmp_path / "home").mkdir()
    double.known_models.add(MODEL + "-2")
    with duckdb.connect(str(settings.paths.database)) as con:
        registry = ModelRegistry.from_settings(con, settings)
        target = AzureTarget.for_profile(
            settings.provider, settings.profile, slot_file(settings), backoff=FAST
        )
        versions = [
            registry.register(base_model="b", kind="hosted", hosted_model_id=model).id
            for model in (MODEL, MODEL + "-2", MODEL)
        ]
        for version in versions:
            deploy_to_slot(registry, target, version, "primary")
    assert len(double.deployments) == 3

    dry = CliRunner().invoke(retire_command, ["--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "deployments": [f"autoretrain-{versions[0]}"],
    }
    assert len(double.deployments) == 3
    done = CliRunner().invoke(retire_command, [])
    assert done.exit_code == 0, done.output
    assert f"deleted 1 deployment(s)\n  autoretrain-{versions[0]}" in done.output
    assert sorted(double.deployments) == sorted(f"autoretrain-{v}" for v in versions[1:])
    # Each credential (the test's target, then one per command) asked the endpoint once.
    assert [r["query"]["resource"] for r in identity.requests] == [ARM_RESOURCE] * 3
