"""The training loss computed only at labelled positions equals transformers' own loss."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from autoretrain.training.loop import LabelledHead

from .conftest import random_llama


def model(tied: bool):
    return random_llama(tie_word_embeddings=tied)


def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 101, (3, 40), generator=generator)
    labels = ids.clone()
    labels[torch.rand(3, 40, generator=generator) < 0.6] = -100  # prompts carry no label
    labels[2] = -100  # a row with nothing to learn
    # Two packed conversations in row 0 (positions restart), one in the others.
    positions = torch.cat([torch.arange(15), torch.arange(25)]).repeat(3, 1)
    positions[1:] = torch.arange(40)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}


def grads(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("adapter", [False, True])
def test_loss_and_gradients_match_transformers(tied, adapter):
    m = model(tied)
    if adapter:
        m = get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    expected = m(**batch()).loss
    expected.backward()
    expected_grads = grads(m)
    m.zero_grad()

    head = LabelledHead(m)
    total, count = head.loss(m, batch())
    got = total / count
    got.backward()
    head.close()

    assert count == (batch()["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(got, expected)
    got_grads = grads(m)
    assert got_grads.keys() == expected_grads.keys() and got_grads
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # The hook is gone: the model gives full logits again.
    assert m(**{k: v for k, v in batch().items() if k != "labels"}).logits.shape == (3, 40, 101)


def test_a_batch_without_labels_has_zero_loss():
    m = model(True)
    b = batch()
    b["labels"][:] = -100
    head = LabelledHead(m)
    total, count = head.loss(m, b)
    assert count == 0 and total == 0
