"""Slot targets: make the outside world serve a model version in a slot, then record it.

A target does the serving side of a slot change; `deploy_to_slot` runs it *before* the
registry moves the slot, so a deployment that fails leaves the registry (and its ledger)
exactly as it was, and a slot never names a model that nothing serves.

- `LocalServeTarget` (profile kind `local`): `autoretrain serve` serves the slot from
  `<root>/serving.json`, which the registry rewrites on every slot change and the server
  reloads by mtime. Clients keep asking for the slot name (`primary`, `canary`).
- `LMStudioTarget` (kind `openai_compatible`): LM Studio loads models itself, so the target
  returns the exported directory and the id to load it under (the profile's configured model id
  for the slot, so the agent's configuration does not change) with the `lms` commands to run.
- `AzureTarget` (kind `azure_openai`): makes sure the version has its own deployment (created
  through the management API, named from the version: Azure cannot change a deployment's
  model), then flips the slot to it in the slot file the app reads (`deploy/slot_config.py`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from autoretrain.deploy.azure import (
    DEVELOPER_SKU,
    AzureDeployments,
    Deployment,
    DeploymentError,
    deployment_name,
)
from autoretrain.deploy.registry import (
    SERVING_FILE,
    SLOTS,
    LedgerEntry,
    ModelRegistry,
    ModelVersion,
    RegistryError,
)
from autoretrain.deploy.slot_config import read_slots, slot_file, write_slot
from autoretrain.settings import ProviderProfile

if TYPE_CHECKING:
    from autoretrain.settings import Settings

log = logging.getLogger(__name__)

# The training_metrics key of a hosted version served by a deployment made outside autoretrain
# (the base model's, which the profile's `slots.primary` names): reused, never created or deleted.
HAND_MADE_DEPLOYMENT = "deployment"


def hand_made_deployment(version: ModelVersion) -> str | None:
    """The deployment made outside autoretrain that serves `version`, if it has one."""
    name = version.training_metrics.get(HAND_MADE_DEPLOYMENT)
    return str(name) if name else None


@dataclass
class TargetResult:
    slot: str
    version_id: str
    model_id: str  # what clients send as `model` to reach this slot
    location: str  # the directory or deployment that now serves it
    instructions: list[str] = field(default_factory=list)  # anything a person still has to do

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class SlotTarget(Protocol):
    name: str

    def apply(self, slot: str, version: ModelVersion) -> TargetResult: ...


class LocalServeTarget:
    name = "local"

    def __init__(self, root: Path):
        """`root`: the data root, whose serving.json `autoretrain serve` reads."""
        self.serving_file = root / SERVING_FILE

    def apply(self, slot: str, version: ModelVersion) -> TargetResult:
        if version.kind != "local":
            raise DeploymentError(
                f"version {version.id} is hosted ({version.hosted_model_id}); the local server "
                "serves model directories: use an azure_openai profile for it"
            )
        for label, path in (("model_dir", version.model_dir), ("adapter_dir", version.adapter_dir)):
            if path and not Path(path).is_dir():
                raise DeploymentError(
                    f"version {version.id}: its {label} {path} is missing; the server could "
                    "not load it. Restore the files or promote another version"
                )
        served = version.adapter_dir or version.model_dir or ""
        return TargetResult(
            slot=slot,
            version_id=version.id,
            model_id=slot,
            location=served,
            instructions=[
                f"`autoretrain serve` answers model {slot!r} (and {version.id!r}) from {served}; "
                f"it reloads {self.serving_file} on change, no restart needed"
            ],
        )


class LMStudioTarget:
    name = "lmstudio"

    def __init__(self, profile_name: str, profile: ProviderProfile):
        self.profile_name = profile_name
        self.profile = profile

    def apply(self, slot: str, version: ModelVersion) -> TargetResult:
        if version.kind != "local":
            raise DeploymentError(f"version {version.id} is hosted; LM Studio loads local models")
        export = _exported_dir(version)
        model_id = self.profile.slots.get(slot) or version.id
        instructions = []
        if not any(export.glob("*.gguf")):
            instructions.append(
                f"{export} holds Hugging Face weights; LM Studio loads GGUF (or MLX): convert it "
                "with llama.cpp's convert_hf_to_gguf.py and import the .gguf with `lms import`"
            )
        instructions += [
            f"lms unload {model_id}",
            f"lms load {export} --identifier {model_id}",
        ]
        log.info("LM Studio slot %s: load %s as %s", slot, export, model_id)
        return TargetResult(slot, version.id, model_id, str(export), instructions)


class AzureTarget:
    """A slot is a name resolved outside Azure. `apply` creates the version's own deployment if
    it does not exist (first deployment, or Azure deleted it: a Developer-tier one after 24
    hours, any other after 15 idle days), waits until it serves, then writes slot -> deployment
    into the slot file; the registry records the move after that (`deploy_to_slot`). Nothing
    ever asks Azure to change a deployment's model, which it refuses."""

    name = "azure_openai"

    def __init__(
        self,
        profile_name: str,
        profile: ProviderProfile,
        deployments: AzureDeployments,
        slot_file: Path,
    ):
        self.profile_name = profile_name
        self.profile = profile
        self.deployments = deployments
        self.slot_file = slot_file  # slot -> deployment, which the apps read

    @classmethod
    def for_profile(
        cls,
        profile_name: str,
        profile: ProviderProfile,
        slot_file: Path,
        *,
        credential: Any = None,
        **kwargs: Any,
    ) -> AzureTarget:
        """The target of an azure_openai profile, its deployments client made from it."""
        deployments = AzureDeployments.from_profile(profile, credential=credential, **kwargs)
        return cls(profile_name, profile, deployments, slot_file)

    def sku_for(self, slot: str) -> str:
        """The canary slot's SKU when the profile sets `canary_deployment_sku` (e.g.
        developertier), else `deployment_sku` (standard or globalstandard)."""
        if slot == "canary" and self.profile.canary_deployment_sku:
            return self.profile.canary_deployment_sku
        return self.profile.deployment_sku

    def deployment_for(self, slot: str, version: ModelVersion) -> str:
        """The deployment name `version` gets when served in `slot`."""
        hand_made = hand_made_deployment(version)
        if hand_made:
            return hand_made
        sku = self.sku_for(slot)
        tier = ""
        if sku.lower() != self.profile.deployment_sku.lower():
            tier = "dev" if sku.lower() == DEVELOPER_SKU else sku
        return deployment_name(version.id, prefix=self.profile.deployment_prefix, tier=tier)

    def apply(self, slot: str, version: ModelVersion) -> TargetResult:
        sku = self.sku_for(slot)
        name, done, how = self._serving(slot, version)
        previous = read_slots(self.slot_file).get(slot)
        write_slot(self.slot_file, slot, name, profile=self.profile_name)
        log.info("Azure slot %s: %s -> %s (deployment %s)", slot, previous, name, how)
        where = f"deployment {name} on account {self.deployments.account}"
        instructions = [
            f"slot {slot!r} resolves to deployment {name} in {self.slot_file} (was "
            f"{previous or 'unset'}); apps that load that file pick it up on their next read"
        ]
        if how in ("created", "recreated"):
            instructions.append(f"{how} {where} ({sku} x{self.profile.deployment_capacity})")
        if done.developer:
            instructions.append(
                f"{name} is a Developer-tier deployment: no SLA, and Azure removes it 24 hours "
                f"after it was created ({done.created_at or 'now'}); promote or redeploy by then"
            )
        else:
            instructions.append(
                f"Azure deletes {name} after 15 days without calls: schedule "
                "`python -m autoretrain.deploy.azure keep-alive` (docs/azure.md)"
            )
        return TargetResult(
            slot=slot,
            version_id=version.id,
            model_id=name,
            location=where,
            instructions=instructions,
        )

    def deployment_for_evaluation(self, version: ModelVersion) -> str:
        """The deployment the evaluation replay calls for `version`, serving before it returns:
        the one it would have in canary (a Developer-tier deployment where the profile sets
        `canary_deployment_sku: developertier`, billed per token only). A candidate that then
        passes its gate reuses it as its canary deployment. No slot changes."""
        return self._serving("canary", version)[0]

    def _serving(self, slot: str, version: ModelVersion) -> tuple[str, Deployment, str]:
        """(name, deployment, what it took) of `version`'s deployment for `slot`, ready."""
        if version.kind != "hosted" or not version.hosted_model_id:
            raise DeploymentError(
                f"version {version.id} is a local model; Azure OpenAI deploys hosted fine-tunes"
            )
        name = self.deployment_for(slot, version)
        if hand_made_deployment(version):
            found = self.deployments.get(name)
            if found is None or found.state != "Succeeded":
                raise DeploymentError(
                    f"deployment {name}, made outside autoretrain for {version.id} "
                    f"({version.hosted_model_id}), is {found.state if found else 'gone'} on "
                    f"account {self.deployments.account}: autoretrain does not create base-model "
                    "deployments; create it again (portal, az cognitiveservices account "
                    "deployment create) and retry"
                )
            return name, found, "existing"
        done, how = self.deployments.ensure(
            name,
            version.hosted_model_id,
            capacity=self.profile.deployment_capacity,
            sku=self.sku_for(slot),
        )
        if done.model != version.hosted_model_id:
            raise DeploymentError(
                f"deployment {name} reports model {done.model}, not {version.hosted_model_id}; "
                "another change may have raced this one: retry"
            )
        return name, done, how

    def retire_unused(self, registry: ModelRegistry, *, dry_run: bool = False) -> list[str]:
        """Delete the deployments of this profile's versions that nothing needs: not named by
        the slot file or the profile's `slots`, not serving a slot's current version, and not
        what a rollback of a slot would restore (so rollback stays a flip). Standard deployments
        of fine-tuned models bill by the hour while they exist. Returns the names deleted (with
        `dry_run`, the names that exist and would be). The models survive: a later deployment
        of a retired version creates its deployment again."""
        keep = set(read_slots(self.slot_file).values()) | set(self.profile.slots.values())
        held = registry.slots(self.profile_name)
        for slot in SLOTS:
            for version_id in (held.get(slot), registry.rollback_target(slot, self.profile_name)):
                version = registry.get(version_id) if version_id else None
                if version is not None:
                    keep.add(self.deployment_for(slot, version))
        retired: list[str] = []
        for version in registry.versions():
            if version.kind != "hosted" or hand_made_deployment(version):
                continue
            for name in dict.fromkeys(self.deployment_for(slot, version) for slot in SLOTS):
                if name in keep:
                    continue
                if dry_run:
                    if self.deployments.get(name) is not None:
                        retired.append(name)
                elif self.deployments.delete(name):
                    retired.append(name)
        if retired:
            log.info("retired deployments of profile %s: %s", self.profile_name, retired)
        return retired


def slot_target(settings: Settings, profile: str | None = None, **kwargs: Any) -> SlotTarget:
    """The target for a profile, by its kind: the one place the targets meet the settings
    (the classes above take the profile and the paths they need)."""
    name = profile or settings.provider
    conf = settings.providers[name]
    if conf.kind == "local":
        return LocalServeTarget(settings.paths.root)
    if conf.kind == "openai_compatible":
        return LMStudioTarget(name, conf)
    if conf.kind == "azure_openai":
        return AzureTarget.for_profile(name, conf, slot_file(settings, name), **kwargs)
    raise DeploymentError(f"profile {name!r} of kind {conf.kind!r} has no slot target")


def deploy_to_slot(
    registry: ModelRegistry,
    target: SlotTarget,
    version_id: str,
    slot: str,
    *,
    reason: str | None = None,
    evaluation_id: str | None = None,
    actor: str | None = None,
    profile: str | None = None,
) -> tuple[LedgerEntry | None, TargetResult]:
    """Serve `version_id` in `slot` through the target, then move the slot in the registry.
    Re-deploying the version a slot already holds re-applies the target (it recreates a
    deployment Azure deleted) and records nothing."""
    # Everything the registry will check, before the target serves anything.
    version = registry.check_promotable(version_id, slot, profile)
    result = target.apply(slot, version)
    try:
        entry = registry.promote(
            version_id,
            slot,
            reason=reason,
            evaluation_id=evaluation_id,
            actor=actor,
            profile=profile,
        )
    except Exception:
        log.error(
            "%s now serves %s in slot %s but the registry could not record it; "
            "run the promotion again to record it",
            target.name,
            version_id,
            slot,
        )
        raise
    return entry, result


def promote_canary(
    registry: ModelRegistry,
    target: SlotTarget,
    *,
    reason: str | None = None,
    evaluation_id: str | None = None,
    actor: str | None = None,
    profile: str | None = None,
) -> tuple[LedgerEntry | None, TargetResult]:
    """The swap: primary is updated to serve what canary serves."""
    canary = registry.slots(profile).get("canary")
    if canary is None:
        raise RegistryError("the canary slot is empty: deploy a candidate to canary first")
    return deploy_to_slot(
        registry,
        target,
        canary,
        "primary",
        reason=reason,
        evaluation_id=evaluation_id,
        actor=actor,
        profile=profile,
    )


def rollback_slot(
    registry: ModelRegistry,
    target: SlotTarget,
    slot: str = "primary",
    *,
    reason: str | None = None,
    actor: str | None = None,
    profile: str | None = None,
) -> tuple[LedgerEntry, TargetResult]:
    """Serve the slot's previous promoted version again, then record the rollback."""
    previous = registry.rollback_target(slot, profile)
    if previous is None:
        # Nothing to roll back to: the registry raises, saying why.
        registry.rollback(slot, reason=reason, actor=actor, profile=profile)
        raise AssertionError("the registry rolled back a slot with no earlier promotion")
    version = registry.check_promotable(previous, slot, profile)
    result = target.apply(slot, version)
    entry = registry.rollback(slot, reason=reason, actor=actor, profile=profile)
    return entry, result


def _exported_dir(version: ModelVersion) -> Path:
    """A full model directory for engines that cannot apply adapters: the version's merged
    model when it has an adapter, else its model directory."""
    if version.adapter_dir:
        merged = Path(version.adapter_dir).parent / "merged"
        if merged.is_dir():
            return merged
        raise DeploymentError(
            f"version {version.id} is a LoRA adapter ({version.adapter_dir}) and LM Studio "
            "loads full models: retrain with merge_adapter: true, or merge it and register the "
            "merged directory as a version"
        )
    if not version.model_dir or not Path(version.model_dir).is_dir():
        raise DeploymentError(
            f"version {version.id}: model directory {version.model_dir} is missing"
        )
    return Path(version.model_dir)
