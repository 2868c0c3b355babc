"""Segment attention on packed rows gives the losses and gradients of the unpacked batch."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from peft import LoraConfig, get_peft_model

from autoretrain.training.config import TrainConfig
from autoretrain.training.data import Encoded, epoch_batches
from autoretrain.training.loop import LabelledHead, _tensors
from autoretrain.training.segment_attention import segment_lengths, segments_attention

from .conftest import random_llama, write_dataset

# Float32 on CPU: the per-conversation SDPA sums the same terms as the masked full-row one, in
# another order, so results agree to rounding (observed ~1e-7), not bit for bit.
LOSS_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
GRAD_TOLERANCE = dict(rtol=1e-4, atol=1e-6)


def model(adapter: bool):
    m = random_llama(num_key_value_heads=2)  # grouped-query attention, as most real bases have
    if adapter:
        m = get_peft_model(m, LoraConfig(r=4, target_modules="all-linear"))
    return m


def conversations(n: int = 7) -> list[Encoded]:
    rng = random.Random(3)
    out = []
    for _ in range(n):
        length = rng.randint(5, 40)
        ids = [rng.randint(1, 100) for _ in range(length)]
        trained = [int(rng.random() < 0.4) for _ in range(length)]
        out.append(Encoded(ids, trained))
    return out


def one_batch(examples: list[Encoded], packing: bool):
    """All the examples in a single batch: packed rows of 64, or one padded row each."""
    (batch,) = epoch_batches(
        examples, batch_size=len(examples), max_seq_len=64 if packing else 10_000,
        packing=packing, pad_id=0, seed=0, epoch=0,
    )  # fmt: skip
    return batch


def loss_and_grads(m, batch, segments: bool):
    head = LabelledHead(m)
    attention = segments_attention(m) if segments else contextlib.nullcontext()
    with attention:
        total, count = head.loss(m, _tensors(batch, "cpu"))
    head.close()
    loss = total / count
    m.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_segment_lengths_follow_position_restarts():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1]])
    assert segment_lengths(positions, 2, 9) == [[3, 2, 4], [7, 2]]
    # transformers passes one row of positions for a whole batch when none are given
    assert segment_lengths(torch.arange(5)[None], 2, 5) == [[5], [5]]


@pytest.mark.parametrize("adapter", [False, True])
def test_packed_batch_has_the_loss_and_gradients_of_the_unpacked_batch(adapter):
    examples = conversations()
    packed, unpacked = one_batch(examples, packing=True), one_batch(examples, packing=False)
    assert len(packed.input_ids) < len(unpacked.input_ids)  # several conversations per row
    assert packed.position_ids and unpacked.attention_mask

    m = model(adapter)
    expected, expected_grads = loss_and_grads(m, unpacked, segments=False)
    got, got_grads = loss_and_grads(m, packed, segments=True)

    torch.testing.assert_close(got, expected, **LOSS_TOLERANCE)
    assert got_grads.keys() == expected_grads.keys() and got_grads
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, expected_grads[name], **GRAD_TOLERANCE, msg=name)


def test_each_packed_conversation_gets_the_logits_it_gets_alone():
    """Per example: the logits (so every per-token loss) of a conversation inside a packed
    row equal those of the conversation run on its own."""
    examples = conversations()
    packed = one_batch(examples, packing=True)
    m = model(adapter=False).eval()
    with torch.no_grad(), segments_attention(m):
        logits = m(**{k: v for k, v in _tensors(packed, "cpu").items() if k != "labels"}).logits
    by_ids = {tuple(e.input_ids): e for e in examples}
    seen = 0
    for row, (ids, positions) in enumerate(zip(packed.input_ids, packed.position_ids, strict=True)):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts, starts[1:], strict=False):
            example = by_ids.get(tuple(ids[a:b]))
            if example is None:
                continue  # the padding block at the end of a row
            with torch.no_grad():
                alone = m(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits
            torch.testing.assert_close(logits[row, a:b], alone[0], **LOSS_TOLERANCE)
            seen += 1
    assert seen == len(examples)


def test_the_model_gets_its_attention_back_and_masks_still_work():
    examples = conversations()
    unpacked = one_batch(examples, packing=False)
    m = model(adapter=True)
    before = m.get_base_model().config._attn_implementation
    expected, _ = loss_and_grads(m, unpacked, segments=False)
    with pytest.raises(RuntimeError), segments_attention(m):
        # a padded batch (attention mask) inside the block goes through plain SDPA
        got, _ = loss_and_grads(m, unpacked, segments=False)
        raise RuntimeError("interrupted")
    torch.testing.assert_close(got, expected, **LOSS_TOLERANCE)
    assert m.get_base_model().config._attn_implementation == before


def test_training_curves_are_those_of_the_masked_attention(tmp_path, tiny_model, monkeypatch):
    """The whole trainer, packed, with segment attention and with transformers' block-diagonal
    mask: the same train and eval losses, step by step."""
    from autoretrain.training import loop
    from autoretrain.training.lora import train

    dataset = write_dataset(tmp_path / "ds", n_train=16, n_eval=4)
    config = TrainConfig(
        method="lora", epochs=2, batch_size=4, learning_rate=1e-2, max_seq_len=256, seed=0,
        progress=False, checkpoint_every_s=1e9,
    )  # fmt: skip
    segmented = train(dataset, tiny_model, tmp_path / "a", config).metrics
    monkeypatch.setattr(loop, "segments_attention", lambda model: contextlib.nullcontext())
    masked = train(dataset, tiny_model, tmp_path / "b", config).metrics
    for key in ("train_loss", "eval_loss"):
        got, expected = segmented[key], masked[key]
        assert [s for s, _ in got] == [s for s, _ in expected] and got
        for (_, a), (_, b) in zip(got, expected, strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-4), key
