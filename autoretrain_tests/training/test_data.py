from __future__ import annotations

import json

import pytest

from autoretrain.training.config import TrainConfig
from autoretrain.training.data import (
    DatasetError,
    LossMaskError,
    encode,
    end_of_turn_ids,
    read_jsonl,
)
from autoretrain.training.lora import train

from .conftest import CALCULATOR, calculator_conversation, write_dataset


def test_invalid_lines_are_refused_with_their_line_numbers(tmp_path, tiny_model):
    good = json.dumps({"messages": calculator_conversation(3, 4), "tools": [CALCULATOR]})
    unmatched = calculator_conversation(5, 6)
    unmatched[3]["tool_call_id"] = "call_9"
    object_args = calculator_conversation(7, 8)
    object_args[2]["tool_calls"][0]["function"]["arguments"] = {"expression": "7 * 8"}
    lines = [
        good,
        "{not json",
        json.dumps({"messages": unmatched}),
        json.dumps({"messages": object_args}),
    ]
    dataset = tmp_path / "bad"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        train(dataset, tiny_model, tmp_path / "out", TrainConfig())
    message = str(caught.value)
    assert "train.jsonl:2: not valid JSON" in message
    assert "train.jsonl:3:" in message and "call_9" in message
    assert "train.jsonl:4:" in message and "JSON string" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_empty_dataset_is_refused_before_training(tmp_path, tiny_model):
    dataset = tmp_path / "empty"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("")
    with pytest.raises(DatasetError, match="no examples to train on"):
        train(dataset, tiny_model, tmp_path / "out", TrainConfig())


def _with_template(tiny_model, tmp_path, edit):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    template = copy / "chat_template.jinja"
    template.write_text(edit(template.read_text()))
    return copy


def test_template_without_generation_markers_is_rejected(tmp_path, tiny_model):
    # Of no family autoretrain knows: a marker-less ChatML, Llama 3, ... template would get
    # its family's markers instead (training/templates.py, test_templates.py).
    def strip(text: str) -> str:
        text = text.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")
        return text.replace("<|im_start|>", "<|turn|>")

    model = _with_template(tiny_model, tmp_path, strip)
    with pytest.raises(LossMaskError, match="no \\{% generation %\\} markers"):
        train(write_dataset(tmp_path / "ds"), model, tmp_path / "out", TrainConfig())


def test_mask_that_misses_the_end_of_turn_token_is_rejected(tmp_path, tiny_model):
    def end_early(text: str) -> str:
        return text.replace(
            "{{- '<|im_end|>' }}{%- endgeneration %}", "{%- endgeneration %}{{- '<|im_end|>' }}"
        )

    model = _with_template(tiny_model, tmp_path, end_early)
    with pytest.raises(LossMaskError, match="end-of-turn"):
        train(write_dataset(tmp_path / "ds"), model, tmp_path / "out", TrainConfig())


def test_weight_zero_turns_are_not_trained(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = calculator_conversation(12, 7)
    path = tmp_path / "w.jsonl"
    weighted = [dict(m) for m in messages]
    weighted[2]["weight"] = 0
    path.write_text(
        json.dumps({"messages": messages, "tools": [CALCULATOR]})
        + "\n"
        + json.dumps({"messages": weighted, "tools": [CALCULATOR]})
        + "\n"
    )
    full, partial = (encode(tokenizer, e, end_of_turn_ids(tokenizer)) for e in read_jsonl(path))
    assert full.input_ids == partial.input_ids
    trained = tokenizer.decode(
        [t for t, m in zip(partial.input_ids, partial.trained, strict=True) if m]
    )
    assert trained == "The answer is 84.<|im_end|>"
    assert full.n_trained > partial.n_trained


def test_packed_rows_attend_only_within_their_conversation(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoretrain.training.data import _collate

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    examples = read_jsonl(write_dataset(tmp_path / "ds", n_train=2, n_eval=0) / "train.jsonl")
    a, b = (encode(tokenizer, e, end_of_turn_ids(tokenizer)) for e in examples)
    packed = _collate([[a, b]], tokenizer.pad_token_id, packed=True)
    with torch.no_grad():
        together = model(
            input_ids=torch.tensor(packed.input_ids),
            position_ids=torch.tensor(packed.position_ids),
            use_cache=False,
        ).logits[0]
        alone = model(input_ids=torch.tensor([b.input_ids])).logits[0]
    assert torch.allclose(together[len(a) :], alone, atol=1e-5)
