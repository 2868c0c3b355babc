"""Tiny conversations and models shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoretrain_tests.curation.factories import CALCULATOR  # one tool spec for test models


def calculator_conversation(a: int, b: int) -> list[dict]:
    expression = f"{a} * {b}"
    return [
        {"role": "system", "content": "You are a careful assistant. Use tools."},
        {"role": "user", "content": f"What is {a} times {b}?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {
                        "name": "calculator",
                        "arguments": json.dumps({"expression": expression}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": str(a * b)},
        {"role": "assistant", "content": f"The answer is {a * b}."},
    ]


def write_dataset(folder: Path, n_train: int = 24, n_eval: int = 6, seed: int = 0) -> Path:
    """A dataset folder in the curation format: train.jsonl, eval.jsonl, manifest.json."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", n_train), ("eval", n_eval)):
        lines = []
        for _ in range(count):
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            lines.append(
                json.dumps({"messages": calculator_conversation(a, b), "tools": [CALCULATOR]})
            )
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "manifest.json").write_text(
        json.dumps({"counts": {"train": n_train, "eval": n_eval}})
    )
    return folder


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    from autoretrain.training.chat_format import render

    return [render(calculator_conversation(a, a + 3), [CALCULATOR]) for a in range(2, 40)]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, corpus) -> Path:
    from autoretrain.training.base_model import build_untrained_model

    return build_untrained_model(
        tmp_path_factory.mktemp("tiny") / "model",
        corpus,
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=400,
    )


def random_llama(**config: object):
    """A randomly initialised 2-layer Llama (seed 0, vocabulary 101) for loss and attention
    checks that need no tokenizer; `config` overrides LlamaConfig fields."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    shape = dict(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**shape, **config}))
