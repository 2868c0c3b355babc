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
- `AzureTarget` (kind `azure_openai`): creates or updates the slot's deployment (the profile's
  `slots` name the deployments) to the version's fine-tuned model through the management API.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from autoretrain.deploy.azure import AzureDeployments, DeploymentError
from autoretrain.deploy.registry import (
    SERVING_FILE,
    LedgerEntry,
    ModelRegistry,
    ModelVersion,
    RegistryError,
)
from autoretrain.settings import Settings

log = logging.getLogger(__name__)


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

    def __init__(self, settings: Settings):
        self.serving_file = settings.paths.root / SERVING_FILE

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

    def __init__(self, settings: Settings, profile: str | None = None):
        self.profile_name = profile or settings.provider
        self.profile = settings.providers[self.profile_name]

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
    name = "azure_openai"

    def __init__(
        self, settings: Settings, deployments: AzureDeployments, profile: str | None = None
    ):
        self.profile_name = profile or settings.provider
        self.profile = settings.providers[self.profile_name]
        self.deployments = deployments

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        profile: str | None = None,
        *,
        credential: Any = None,
        **kwargs: Any,
    ) -> AzureTarget:
        name = profile or settings.provider
        deployments = AzureDeployments.from_profile(
            settings.providers[name], credential=credential, **kwargs
        )
        return cls(settings, deployments, name)

    def apply(self, slot: str, version: ModelVersion) -> TargetResult:
        if version.kind != "hosted" or not version.hosted_model_id:
            raise DeploymentError(
                f"version {version.id} is a local model; Azure OpenAI deploys hosted fine-tunes"
            )
        deployment = self.profile.slots.get(slot)
        if not deployment:
            raise DeploymentError(
                f"profile {self.profile_name!r} names no deployment for slot {slot!r}; set "
                f"providers.{self.profile_name}.slots.{slot} to a deployment name"
            )
        done = self.deployments.create_or_update(
            deployment,
            version.hosted_model_id,
            capacity=self.profile.deployment_capacity,
            sku=self.profile.deployment_sku,
        )
        if done.model != version.hosted_model_id:
            raise DeploymentError(
                f"deployment {deployment} reports model {done.model} after the update to "
                f"{version.hosted_model_id}; another change may have raced this one: retry"
            )
        return TargetResult(
            slot=slot,
            version_id=version.id,
            model_id=deployment,
            location=f"deployment {deployment} on account {self.deployments.account}",
            instructions=[
                f"Azure deletes deployment {deployment} after 15 days without calls: schedule "
                "`python -m autoretrain.deploy.azure keep-alive` (docs/azure.md)",
            ],
        )


def slot_target(settings: Settings, profile: str | None = None, **kwargs: Any) -> SlotTarget:
    """The target for a profile, by its kind."""
    name = profile or settings.provider
    kind = settings.providers[name].kind
    if kind == "local":
        return LocalServeTarget(settings)
    if kind == "openai_compatible":
        return LMStudioTarget(settings, name)
    if kind == "azure_openai":
        return AzureTarget.from_settings(settings, name, **kwargs)
    raise DeploymentError(f"profile {name!r} of kind {kind!r} has no slot target")


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
