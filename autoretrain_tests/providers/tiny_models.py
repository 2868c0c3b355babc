"""Tiny real models for provider and server tests, built with the project's own base-model code.

`tool_calling_model` trains the embedded tiny Llama for a few seconds on two fixed turns (a
calculator tool call, then the answer after the tool result), so greedy generation really
produces `<tool_call>` text: the parser and the server's `tool_calls` are tested on true model
output, not on a wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoretrain_tests.curation.factories import CALCULATOR  # one tool spec for test models

TOOLS = [CALCULATOR]
QUESTION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 2 + 3?"},
]
CALL = {
    "id": "call_0",
    "type": "function",
    "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'},
}
AFTER_TOOL = [
    *QUESTION,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_0", "content": "5"},
]
ANSWER = "The answer is 5."


def conversations() -> list[list[dict[str, Any]]]:
    return [
        [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [CALL]}],
        [*AFTER_TOOL, {"role": "assistant", "content": ANSWER}],
    ]


def untrained_model(output_dir: Path) -> Path:
    from autoretrain.training.base_model import build_untrained_model
    from autoretrain.training.chat_format import render

    corpus = [render(c, TOOLS) for c in conversations()] * 4
    return build_untrained_model(
        output_dir, corpus, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2
    )


def tool_calling_model(output_dir: Path, max_steps: int = 400, target_loss: float = 0.005) -> Path:
    """An untrained tiny model, then full fine-tuning on the two turns until it recites them
    (the loss target is far below what a single wrong greedy token would cost)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    untrained_model(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    texts = [tokenizer.apply_chat_template(c, tools=TOOLS, tokenize=False) for c in conversations()]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    # One thread: on a shared 2-core machine two threads ran this 4x slower (27 s vs 7 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(max_steps):
            loss = model(**batch, labels=labels).loss
            if loss.item() < target_loss:
                break
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(output_dir)
    return output_dir


def cached_tool_model(factory: pytest.TempPathFactory) -> Path:
    """The trained tool-calling model, built once per test session (read-only for tests)."""
    path = factory.getbasetemp() / "tool-calling-model"
    if not (path / "trained").exists():
        tool_calling_model(path)
        (path / "trained").touch()
    return path


def cached_untrained_model(factory: pytest.TempPathFactory) -> Path:
    path = factory.getbasetemp() / "untrained-model"
    if not (path / "model.safetensors").exists():
        untrained_model(path)
    return path
