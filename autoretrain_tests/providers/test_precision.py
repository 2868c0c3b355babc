"""Models load in the precision they were saved in (config.json), not float32."""

from __future__ import annotations

import json
import shutil

import pytest

from autoretrain.providers.base import Sampling
from autoretrain.providers.local import LocalChatModel
from autoretrain.training.precision import stored_dtype
from autoretrain_tests.providers.tiny_models import QUESTION, TOOLS


@pytest.fixture(scope="module")
def bf16_model_dir(tool_model_dir, tmp_path_factory):
    """The trained tiny tool-calling model, saved again in bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("bf16")
    model = AutoModelForCausalLM.from_pretrained(tool_model_dir, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(target)
    AutoTokenizer.from_pretrained(tool_model_dir).save_pretrained(target)
    return target


def test_a_bf16_checkpoint_is_served_in_bf16(bf16_model_dir, tool_model_dir):
    import torch

    config = json.loads((bf16_model_dir / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"
    model = LocalChatModel(bf16_model_dir, name="bf16")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    reply = model.chat(QUESTION, TOOLS, Sampling(max_tokens=40))
    assert reply.completion_tokens > 0
    # Rounded to bf16, the model still writes the call it was trained to write.
    assert reply.message["tool_calls"][0]["function"]["name"] == "calculator"
    # The float32 original stays float32.
    original = LocalChatModel(tool_model_dir, name="fp32")
    assert {p.dtype for p in original.model.parameters()} == {torch.float32}


def test_a_bf16_base_with_an_adapter_stays_bf16(bf16_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(bf16_model_dir, dtype=torch.bfloat16)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear"))
    peft.save_pretrained(tmp_path / "adapter")
    model = LocalChatModel(bf16_model_dir, tmp_path / "adapter", name="bf16+adapter")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    assert model.chat(QUESTION, TOOLS, Sampling(max_tokens=8)).message["role"] == "assistant"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float16"}, "float16"),  # the key before transformers 4.56
        ({"torch_dtype": "torch.bfloat16"}, "bfloat16"),
        ({"dtype": "float32"}, "float32"),
        ({}, "float32"),
        ({"torch_dtype": "int8"}, "float32"),  # not a floating type to load into
    ],
)
def test_stored_dtype_reads_config_json(tmp_path, config, expected):
    import torch

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert stored_dtype(tmp_path) == getattr(torch, expected)


def test_no_config_means_float32(tmp_path):
    import torch

    shutil.rmtree(tmp_path)
    assert stored_dtype(tmp_path) == torch.float32


@pytest.mark.parametrize("engine", [True, False])
def test_an_fp16_checkpoint_is_served_in_fp16(tmp_path, engine):
    """Both decoding paths (the project's engine and transformers' generate) run in fp16."""
    import torch

    from autoretrain_tests.training.family_tokenizers import tiny_family_model

    model_dir = tiny_family_model("llama3", tmp_path / "fp16", dtype="float16")
    model = LocalChatModel(model_dir, engine=engine)
    assert {p.dtype for p in model.model.parameters()} == {torch.float16}
    assert (model.decoder is not None) == engine
    reply = model.chat([{"role": "user", "content": "hi"}], None, Sampling(max_tokens=8))
    assert reply.completion_tokens == 8
