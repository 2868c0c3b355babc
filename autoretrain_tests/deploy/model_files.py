"""Real model folders for registry tests: the embedded tiny model and a LoRA adapter on it, built
once per test session with transformers and peft, and copied where a test registers a version
(the registry refuses to promote a folder that would not load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoretrain_tests.providers.tiny_models import cached_untrained_model


def tiny_model(factory: pytest.TempPathFactory) -> Path:
    return cached_untrained_model(factory)


def tiny_adapter(factory: pytest.TempPathFactory) -> Path:
    """A saved LoRA adapter on the tiny model (its config names that model as its base)."""
    path = factory.getbasetemp() / "tiny-adapter"
    if not (path / "adapter_model.safetensors").exists():
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(tiny_model(factory))
        lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        lora.save_pretrained(path)
    return path


def copy_model(source: Path, target: Path) -> Path:
    if not target.exists():
        shutil.copytree(source, target)
    return target
