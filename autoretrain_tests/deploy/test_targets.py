"""Slot targets: the serving side moves first, the registry only when it succeeded."""

from __future__ import annotations

import json

import duckdb
import pytest

from autoretrain.deploy.azure import AzureDeployments, DeploymentError
from autoretrain.deploy.registry import ModelRegistry, RegistryError
from autoretrain.deploy.serving import read_serving_config
from autoretrain.deploy.slot_config import slot_file
from autoretrain.deploy.targets import (
    HAND_MADE_DEPLOYMENT,
    AzureTarget,
    LMStudioTarget,
    LocalServeTarget,
    deploy_to_slot,
    promote_canary,
    rollback_slot,
    slot_target,
)
from autoretrain.settings import load_settings
from autoretrain.training.backend import Backoff
from autoretrain_tests.azure_double import AzureDouble
from autoretrain_tests.deploy.model_files import copy_model, tiny_adapter, tiny_model

FAST = Backoff(initial_s=0.005, max_s=0.02, factor=2)
MODEL_A = "gpt-4o-mini-2024-07-18.ft-aaaa"
MODEL_B = "gpt-4o-mini-2024-07-18.ft-bbbb"


@pytest.fixture
def double():
    with AzureDouble() as d:
        d.known_models.update({MODEL_A, MODEL_B})
        yield d


def settings_with(tmp_path, **profile):
    return load_settings(
        config_file=tmp_path / "absent.yaml",
        provider="p",
        providers={"p": profile},
    )


@pytest.fixture
def azure_settings(tmp_path, settings, double):
    return settings_with(
        tmp_path,
        kind="azure_openai",
        azure_endpoint=double.url,
        slots={"primary": "base-deployment"},  # made by hand, before any promotion
        deployment_capacity=3,
        canary_deployment_sku="developertier",
    )


@pytest.fixture
def azure(azure_settings, double):
    settings = azure_settings
    registry = ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)
    deployments = AzureDeployments(
        "sub-1", "rg-1", "acct-1", lambda: double.token, endpoint=double.url, backoff=FAST
    )
    target = AzureTarget(settings.provider, settings.profile, deployments, slot_file(settings))
    v1 = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id=MODEL_A).id
    v2 = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id=MODEL_B).id
    return registry, target, v1, v2


def served(double: AzureDouble, deployment: str) -> str:
    return double.deployments[deployment]["properties"]["model"]["name"]


def slot_env(target: AzureTarget) -> dict[str, str]:
    lines = target.slot_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if not line.startswith("#"))


def test_azure_canary_promote_and_rollback_flip_slots_not_models(azure, double):
    registry, target, v1, v2 = azure
    d1, d2 = f"autoretrain-{v1}", f"autoretrain-{v2}"
    assert target.slot_file == registry.config.root / "serving" / "p-slots.env"
    entry, result = deploy_to_slot(registry, target, v1, "primary", reason="first")
    assert entry.to_version == v1 and registry.slots()["primary"] == v1
    assert result.model_id == d1 and served(double, d1) == MODEL_A
    assert double.deployments[d1]["sku"] == {"name": "standard", "capacity": 3}
    assert slot_env(target) == {"AUTORETRAIN_SLOT_PRIMARY": d1}

    # The candidate gets its own Developer-tier deployment for the canary.
    _, result = deploy_to_slot(registry, target, v2, "canary", reason="candidate")
    assert result.model_id == f"{d2}--dev" and served(double, f"{d2}--dev") == MODEL_B
    assert double.deployments[f"{d2}--dev"]["sku"]["name"] == "developertier"
    assert any("24 hours" in line for line in result.instructions)
    assert slot_env(target) == {
        "AUTORETRAIN_SLOT_CANARY": f"{d2}--dev",
        "AUTORETRAIN_SLOT_PRIMARY": d1,
    }

    # Promotion: a Standard deployment of the candidate, then the primary slot flips to it.
    entry, result = promote_canary(registry, target, reason="canary healthy")
    assert (entry.slot, entry.from_version, entry.to_version) == ("primary", v1, v2)
    assert result.model_id == d2 and served(double, d2) == MODEL_B
    assert slot_env(target)["AUTORETRAIN_SLOT_PRIMARY"] == d2
    assert served(double, d1) == MODEL_A  # the old one is untouched: rollback is a flip

    # No request ever asked Azure to change a deployment's model.
    models = {}
    for put in double.requests_to("PUT", "/deployments/"):
        name = put["path"].rsplit("/", 1)[1]
        model = json.loads(put["body"])["properties"]["model"]["name"]
        assert models.setdefault(name, model) == model

    puts = len(double.requests_to("PUT", "/deployments/"))
    entry, result = rollback_slot(registry, target, "primary", reason="regression")
    assert entry.action == "rollback" and registry.slots()["primary"] == v1
    assert result.model_id == d1 and slot_env(target)["AUTORETRAIN_SLOT_PRIMARY"] == d1
    assert len(double.requests_to("PUT", "/deployments/")) == puts  # it still existed

    # Azure deleted the version's deployment (15 idle days): a rollback re-creates it.
    deploy_to_slot(registry, target, v2, "primary")
    del double.deployments[d1]
    entry, result = rollback_slot(registry, target, "primary")
    assert registry.slots()["primary"] == v1 and served(double, d1) == MODEL_A
    assert any(line.startswith("created deployment") for line in result.instructions)
    assert slot_env(target)["AUTORETRAIN_SLOT_PRIMARY"] == d1


def test_the_chat_provider_follows_the_slot_file(
    azure, azure_settings, double, monkeypatch, request
):
    from autoretrain.providers.factory import chat_model_for
    from autoretrain_tests.deploy.test_managed_identity import OTHER_CREDENTIAL_VARIABLES
    from autoretrain_tests.identity_server import IdentityServer

    registry, target, v1, v2 = azure
    # Signed in as Azure apps are: a managed identity endpoint (loopback) issues the token.
    identity = IdentityServer({"https://cognitiveservices.azure.com": double.token}).start()
    request.addfinalizer(identity.stop)
    for name in OTHER_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity.environment().items():
        monkeypatch.setenv(name, value)
    # Before any promotion: the profile's hand-made deployment.
    assert chat_model_for(azure_settings, "primary").deployment == "base-deployment"
    deploy_to_slot(registry, target, v1, "primary")
    deploy_to_slot(registry, target, v2, "canary")
    primary = chat_model_for(azure_settings, "primary")
    canary = chat_model_for(azure_settings, "canary")
    assert (primary.deployment, canary.deployment) == (
        f"autoretrain-{v1}",
        f"autoretrain-{v2}--dev",
    )
    # The model it builds calls that deployment, and Azure answers with the version's model.
    client = primary.client()
    answer = client.chat.completions.create(
        model=primary.deployment, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert answer.model == MODEL_A
    promote_canary(registry, target)
    assert chat_model_for(azure_settings, "primary").deployment == f"autoretrain-{v2}"


def test_retire_keeps_slots_and_the_rollback_target_and_deletes_the_rest(azure, double):
    registry, target, v1, v2 = azure
    v3 = registry.register(base_model="gpt-4o-mini", kind="hosted", hosted_model_id=MODEL_A).id
    for version in (v1, v2, v3):
        deploy_to_slot(registry, target, version, "canary")  # three Developer deployments
        deploy_to_slot(registry, target, version, "primary")  # three Standard deployments
    assert len(double.deployments) == 6
    # Kept: v3 (primary and canary), v2 (primary's rollback target) and v2--dev (canary's).
    would = target.retire_unused(registry, dry_run=True)
    assert sorted(would) == sorted([f"autoretrain-{v1}", f"autoretrain-{v1}--dev"])
    assert len(double.deployments) == 6
    assert sorted(target.retire_unused(registry)) == sorted(would)
    assert sorted(double.deployments) == sorted(
        [f"autoretrain-{v}{tier}" for v in (v2, v3) for tier in ("", "--dev")]
    )
    assert target.retire_unused(registry) == []
    # Rollback is still a flip, with no PUT; a second one to v1 would create its deployment.
    puts = len(double.requests_to("PUT", "/deployments/"))
    rollback_slot(registry, target, "primary")
    assert len(double.requests_to("PUT", "/deployments/")) == puts
    rollback_slot(registry, target, "primary")
    assert registry.slots()["primary"] == v1 and served(double, f"autoretrain-{v1}") == MODEL_A


def test_the_base_models_hand_made_deployment_is_reused_never_made_or_retired(azure, double):
    registry, target, v1, _ = azure
    double.known_models.add("gpt-4o-mini")
    target.deployments.create("base-deployment", "gpt-4o-mini")  # made by hand
    base = registry.register(
        base_model="gpt-4o-mini",
        kind="hosted",
        hosted_model_id="gpt-4o-mini",
        training_metrics={HAND_MADE_DEPLOYMENT: "base-deployment"},
    ).id
    registry.promote(base, "primary")  # what ensure_base_model does: the profile serves it
    deploy_to_slot(registry, target, v1, "primary")
    puts = len(double.requests_to("PUT", "/deployments/"))
    entry, result = rollback_slot(registry, target, "primary")
    assert entry.to_version == base and result.model_id == "base-deployment"
    assert slot_env(target)["AUTORETRAIN_SLOT_PRIMARY"] == "base-deployment"
    assert len(double.requests_to("PUT", "/deployments/")) == puts  # reused, not made
    deploy_to_slot(registry, target, v1, "primary")
    assert "base-deployment" not in target.retire_unused(registry, dry_run=True)
    # Gone (deleted by hand): autoretrain does not make base-model deployments; it says so.
    del double.deployments["base-deployment"]
    with pytest.raises(DeploymentError, match="made outside autoretrain.*create it again"):
        rollback_slot(registry, target, "primary")
    assert registry.slots()["primary"] == v1
    assert "base-deployment" not in target.retire_unused(registry)


def test_an_evaluation_deployment_serves_before_any_slot_moves(azure, double):
    registry, target, v1, _ = azure
    name = target.deployment_for_evaluation(registry.get(v1))
    assert name == f"autoretrain-{v1}--dev" and served(double, name) == MODEL_A
    assert double.deployments[name]["sku"]["name"] == "developertier"
    assert registry.slots() == {} and not target.slot_file.exists()
    # The canary then reuses it: no second PUT.
    puts = len(double.requests_to("PUT", "/deployments/"))
    _, result = deploy_to_slot(registry, target, v1, "canary")
    assert result.model_id == name and len(double.requests_to("PUT", "/deployments/")) == puts


def test_azure_deployment_error_leaves_the_slot_where_it_was(azure, double):
    registry, target, v1, v2 = azure
    deploy_to_slot(registry, target, v1, "primary")
    ledger_before = len(registry.ledger())
    env_before = target.slot_file.read_text()
    double.deployment_error = (409, "Conflict", "Another operation is in progress on deployment.")
    with pytest.raises(
        DeploymentError, match="HTTP 409 Conflict: Another operation is in progress"
    ):
        deploy_to_slot(registry, target, v2, "primary")
    assert registry.slots()["primary"] == v1
    assert len(registry.ledger()) == ledger_before
    assert target.slot_file.read_text() == env_before

    double.deployment_error = None
    double.deployment_outcome = "Failed"
    with pytest.raises(DeploymentError, match="ended Failed"):
        deploy_to_slot(registry, target, v2, "canary")
    assert "canary" not in registry.slots() and len(registry.ledger()) == ledger_before
    assert target.slot_file.read_text() == env_before
    # A retry after the cause is fixed deletes the Failed deployment and creates it again.
    double.deployment_outcome = "Succeeded"
    _, result = deploy_to_slot(registry, target, v2, "canary")
    assert any(line.startswith("recreated deployment") for line in result.instructions)
    assert registry.slots()["canary"] == v2


def test_a_name_taken_by_another_model_is_refused_not_repointed(azure, double):
    registry, target, v1, _ = azure
    # Someone made autoretrain-<v1> by hand for another model.
    target.deployments.create(f"autoretrain-{v1}", MODEL_B)
    with pytest.raises(DeploymentError, match="cannot change a deployment's model"):
        deploy_to_slot(registry, target, v1, "primary")
    assert served(double, f"autoretrain-{v1}") == MODEL_B
    assert registry.slots() == {} and not target.slot_file.exists()


def test_azure_target_refuses_what_it_cannot_deploy(azure, tmp_path, double):
    registry, target, v1, _ = azure
    local = registry.register(base_model="b", kind="local", model_dir=tmp_path).id
    # Refused by the registry's checks, before the target is asked to serve anything.
    with pytest.raises(RegistryError, match="is a local model"):
        deploy_to_slot(registry, target, local, "primary")
    with pytest.raises(RegistryError, match="not registered"):
        deploy_to_slot(registry, target, "v-missing", "primary")
    with pytest.raises(DeploymentError, match="Azure OpenAI deploys hosted fine-tunes"):
        target.apply("primary", registry.get(local))
    assert registry.slots() == {} and double.deployments == {}


def local_versions(settings, tmp_path, factory):
    registry = ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)
    # Real model folders: the registry refuses to promote one that would not load.
    base = copy_model(tiny_model(factory), tmp_path / "base")
    adapter = copy_model(tiny_adapter(factory), tmp_path / "cand" / "adapter")
    v0 = registry.register(base_model="base", kind="local", model_dir=base).id
    v1 = registry.register(base_model="base", kind="local", model_dir=base, adapter_dir=adapter).id
    return registry, base, adapter, v0, v1


def test_local_serve_target_rewrites_serving_json(settings, tmp_path, tmp_path_factory):
    registry, base, adapter, v0, v1 = local_versions(settings, tmp_path, tmp_path_factory)
    target = slot_target(settings)
    assert isinstance(target, LocalServeTarget)
    serving = settings.paths.root / "serving.json"
    deploy_to_slot(registry, target, v0, "primary")
    before = serving.read_text()
    _, result = deploy_to_slot(registry, target, v1, "primary")
    assert result.model_id == "primary" and result.location == str(adapter.resolve())
    assert serving.read_text() != before
    assert str(adapter.resolve()) in serving.read_text()
    assert registry.slots() == {"primary": v1}


def test_the_server_reads_what_a_local_promotion_writes(settings, tmp_path, tmp_path_factory):
    registry, base, adapter, v0, v1 = local_versions(settings, tmp_path, tmp_path_factory)
    deploy_to_slot(registry, LocalServeTarget(settings.paths.root), v1, "primary")
    entries = read_serving_config(settings.paths.root / "serving.json")
    assert entries["primary"].adapter_dir == adapter.resolve()
    assert entries[v1].model_dir == base.resolve()


def test_local_target_refuses_missing_files(settings, tmp_path):
    registry = ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)
    gone = registry.register(base_model="b", kind="local", model_dir=tmp_path / "deleted").id
    # The registry's load check refuses first; the target's own check stays behind it.
    with pytest.raises(RegistryError, match="deleted does not exist"):
        deploy_to_slot(registry, LocalServeTarget(settings.paths.root), gone, "canary")
    with pytest.raises(DeploymentError, match="model_dir .*deleted is missing"):
        LocalServeTarget(settings.paths.root).apply("canary", registry.get(gone))
    assert registry.slots() == {}


def test_lm_studio_target_gives_the_directory_and_id_to_load(tmp_path, settings, tmp_path_factory):
    settings = settings_with(tmp_path, kind="openai_compatible", slots={"primary": "agent-model"})
    registry = ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)
    target = slot_target(settings)
    assert isinstance(target, LMStudioTarget)
    merged = tmp_path / "cand" / "merged"
    merged.mkdir(parents=True)
    base = copy_model(tiny_model(tmp_path_factory), tmp_path / "base")
    copy_model(tiny_adapter(tmp_path_factory), tmp_path / "cand" / "adapter")
    (merged / "model.gguf").write_bytes(b"GGUF")
    version = registry.register(
        base_model="b", kind="local", model_dir=base, adapter_dir=tmp_path / "cand" / "adapter"
    ).id
    entry, result = deploy_to_slot(registry, target, version, "primary")
    assert entry.to_version == version
    assert result.model_id == "agent-model" and result.location == str(merged)
    assert result.instructions == [
        "lms unload agent-model",
        f"lms load {merged} --identifier agent-model",
    ]
    # A slot without a configured id loads under the version id; HF weights need converting.
    plain = copy_model(tiny_model(tmp_path_factory), tmp_path / "full")
    full = registry.register(base_model="b", kind="local", model_dir=plain).id
    _, result = deploy_to_slot(registry, target, full, "canary")
    assert result.model_id == full and "GGUF" in result.instructions[0]

    adapter_only = copy_model(tiny_adapter(tmp_path_factory), tmp_path / "lonely" / "adapter")
    lonely = registry.register(
        base_model="b", kind="local", model_dir=plain, adapter_dir=adapter_only
    ).id
    with pytest.raises(DeploymentError, match="merge_adapter"):
        deploy_to_slot(registry, target, lonely, "primary")
    assert registry.slots()["primary"] == version
