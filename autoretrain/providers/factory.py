"""Build the chat model for a slot from the active provider profile (`settings.profile`).

- `local`: the slot names a model directory (absolute, relative to the working directory, or a
  version folder under `<AUTORETRAIN_HOME>/models`); with no slot in the profile, the slot's
  entry in `<AUTORETRAIN_HOME>/serving.json` (written by the model registry on promotion).
- `openai_compatible`: the slot names the model id at `base_url` (LM Studio's by default).
- `azure_openai`: the slot resolves to a deployment at `azure_endpoint`: the one the last
  promotion or rollback wrote to the slot file (`deploy/slot_config.py`), else the profile's.

`model_dir` bypasses the profile: a candidate on disk is always evaluated in-process.

A remote model's credential (the API-key variable, or an Entra ID token for Azure) is checked
when the model is built, so a missing one stops a command before its first run, instead of
every run landing as a provider error.
"""

from __future__ import annotations

from pathlib import Path

from autoretrain.providers.base import ChatModel, ProviderError
from autoretrain.settings import ProviderProfile, Settings


def chat_model_for(
    settings: Settings,
    slot: str = "primary",
    model_dir: str | Path | None = None,
    deployment: str | None = None,
) -> ChatModel:
    """`deployment` (azure_openai profiles) calls that deployment instead of the slot's: how a
    hosted version is evaluated before it holds a slot."""
    profile = settings.profile
    if model_dir is not None:
        return _local(settings, Path(model_dir), None, profile)
    if profile.kind == "local":
        return _local_slot(settings, slot, profile)
    if profile.kind == "scripted":
        raise ProviderError(
            f"provider profile {settings.provider!r} is of kind 'scripted', which tests build "
            f"directly (ScriptedModel); choose local, openai_compatible or azure_openai"
        )
    if deployment is not None and profile.kind != "azure_openai":
        raise ProviderError(
            f"a deployment is an Azure OpenAI name; profile {settings.provider!r} is {profile.kind}"
        )
    target = deployment or _slot_target(settings, slot, profile)
    common = {"timeout_s": profile.timeout_s, "max_retries": profile.max_retries}
    if profile.kind == "openai_compatible":
        from autoretrain.providers.openai_compatible import (
            LM_STUDIO_URL,
            OpenAICompatibleChatModel,
        )

        return _with_credentials(
            OpenAICompatibleChatModel(
                target, profile.base_url or LM_STUDIO_URL, profile.api_key_env, **common
            ),
            settings,
        )
    from autoretrain.providers.azure_openai import AzureOpenAIChatModel

    if not profile.azure_endpoint:
        raise ProviderError(
            f"provider profile {settings.provider!r} (azure_openai) has no azure_endpoint; "
            f"set providers.{settings.provider}.azure_endpoint to https://<resource>.openai.azure.com"
        )
    return _with_credentials(
        AzureOpenAIChatModel(
            target, profile.azure_endpoint, profile.api_version, profile.api_key_env, **common
        ),
        settings,
    )


def _with_credentials(model: ChatModel, settings: Settings) -> ChatModel:
    """Build the model's client now: that is where a missing key variable or an Entra ID that
    gives no token is found (the client would be built at the first call anyway). Sends no
    request to the endpoint."""
    try:
        model.client()  # type: ignore[attr-defined]
    except ProviderError as exc:
        raise ProviderError(
            f"provider profile {settings.provider!r} cannot authenticate, so nothing was run: {exc}"
        ) from exc
    return model


def _slot_target(settings: Settings, slot: str, profile: ProviderProfile) -> str:
    target = profile.slots.get(slot)
    if profile.kind == "azure_openai":  # promotions write the slot's deployment to a file
        from autoretrain.deploy.slot_config import SlotConfigError, slot_deployment

        try:
            target = slot_deployment(settings, slot)
        except SlotConfigError as exc:
            raise ProviderError(str(exc)) from exc
    if not target:
        raise ProviderError(
            f"provider profile {settings.provider!r} has no {slot!r} slot; set "
            f"providers.{settings.provider}.slots.{slot} (known slots: {sorted(profile.slots)})"
        )
    return target


def _local_slot(settings: Settings, slot: str, profile: ProviderProfile) -> ChatModel:
    from autoretrain.deploy.serving import SERVING_FILE, ServingConfigError, read_serving_config

    target = profile.slots.get(slot)
    if target:
        for candidate in (Path(target), settings.paths.models / target):
            if candidate.is_dir():
                return _local(settings, candidate, None, profile)
    serving = settings.paths.root / SERVING_FILE
    if serving.exists():
        try:
            entries = read_serving_config(serving)
        except ServingConfigError as exc:
            raise ProviderError(str(exc)) from exc
        entry = entries.get(target or slot)
        if entry is not None:
            return _local(settings, entry.model_dir, entry.adapter_dir, profile)
    where = (
        f"{target!r} is neither a directory nor an entry of {serving}"
        if target
        else (f"the profile names no {slot!r} slot and {serving} has no {slot!r} entry")
    )
    raise ProviderError(
        f"no local model for slot {slot!r}: {where}. Run `autoretrain bootstrap` to build the "
        f"embedded model, or set providers.{settings.provider}.slots.{slot} to a model directory"
    )


def _local(
    settings: Settings, model_dir: Path, adapter_dir: Path | None, profile: ProviderProfile
) -> ChatModel:
    from autoretrain.providers.local import LocalChatModel

    if not model_dir.is_dir():
        raise ProviderError(f"{model_dir} is not a directory; give a Hugging Face model folder")
    version = (adapter_dir or model_dir).resolve()
    try:
        name = str(version.relative_to(settings.paths.models))
    except ValueError:
        name = version.name
    device = profile.device if profile.kind == "local" else "cpu"
    return LocalChatModel(model_dir, adapter_dir, name=name, device=device)
