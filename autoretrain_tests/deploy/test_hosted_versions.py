"""Hosted versions through `Project` on an Azure OpenAI profile (`training.backend: azure`): the
base model's hand-made deployment is the first incumbent, and a version is called through its
own deployment, made for the evaluation before it holds any slot. Credentials come from the
loopback managed identity endpoint, as on App Service."""

from __future__ import annotations

import pytest

from autoretrain.deploy.azure import AzureDeployments
from autoretrain.deploy.targets import HAND_MADE_DEPLOYMENT
from autoretrain.project import Project
from autoretrain.settings import load_settings
from autoretrain_tests.azure_double import AzureDouble
from autoretrain_tests.deploy.test_managed_identity import FAST, identity  # noqa: F401

BASE = "gpt-4o-mini-2024-07-18"
TUNED = f"{BASE}.ft-0123"


@pytest.fixture
def double():
    with AzureDouble(token="mi-token-0123456789") as d:
        d.known_models.update({BASE, TUNED})
        AzureDeployments(
            "sub-1", "rg-1", "acct-1", lambda: d.token, endpoint=d.url, backoff=FAST
        ).create("agent-base", BASE)
        yield d


@pytest.fixture
def project(tmp_path, settings, double, identity):  # noqa: F811
    profile = {
        "kind": "azure_openai",
        "azure_endpoint": double.url,
        "azure_subscription_id": "sub-1",
        "azure_resource_group": "rg-1",
        "azure_account": "acct-1",
        "management_endpoint": double.url,
        "slots": {"primary": "agent-base"},
        "canary_deployment_sku": "developertier",
    }
    return Project(
        load_settings(
            config_file=tmp_path / "absent.yaml",
            provider="azure",
            providers={"azure": profile},
            training={"backend": "azure", "hosted_base_model": BASE},
        )
    )


def test_the_base_deployment_is_registered_as_v0_in_primary(project):
    assert project.ensure_base_model() == "v0"
    v0 = project.slot_version("primary")
    assert (v0.id, v0.kind, v0.hosted_model_id) == ("v0", "hosted", BASE)
    assert v0.training_metrics == {HAND_MADE_DEPLOYMENT: "agent-base"}
    assert project.ensure_base_model() == "v0"  # once
    with project.store(read_only=True) as store:
        assert len(project.registry(store, read_only=True).versions()) == 1


def test_nothing_is_registered_without_a_base_model_or_a_local_backend(project, tmp_path):
    project.settings.training.hosted_base_model = None
    assert project.ensure_base_model() is None
    project.settings.training.hosted_base_model = BASE
    project.settings.training.backend = "local"
    assert project.ensure_base_model() is None
    assert project.slot_version("primary") is None


def test_a_hosted_version_is_called_through_its_own_deployment(project, double):
    project.ensure_base_model()
    with project.store() as store:
        registry = project.registry(store)
        candidate = registry.register(
            base_model=BASE, kind="hosted", hosted_model_id=TUNED, parent_version="v0"
        )
    model = project.model_for_version(candidate)
    name = f"autoretrain-{candidate.id}--dev"
    assert model.deployment == name and model.name == candidate.id
    assert double.deployments[name]["sku"]["name"] == "developertier"
    assert project.slot_version("canary") is None  # no slot moved
    answer = model.client().chat.completions.create(
        model=model.deployment, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert answer.model == TUNED and double.chat_calls[name] == 1
    # The incumbent: the hand-made deployment, nothing created for it.
    base = project.model_for_version(project.slot_version("primary"))
    assert base.deployment == "agent-base" and "autoretrain-v0" not in double.deployments
