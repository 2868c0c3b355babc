"""Attention over packed rows that skips the blocks between conversations.

A packed row holds several conversations, each with position ids restarting at 0. transformers
keeps them apart with a block-diagonal mask, but SDPA on CPU computes every score of the
row x row square and then hides most of them: with rows of 512 tokens and conversations of ~125,
three quarters of the attention arithmetic (forward and backward) is thrown away.

This attention cuts each row at the position-id restarts, the same rule transformers uses to
detect packing (a step other than +1 starts a new sequence), and runs causal SDPA on each
conversation alone. Every query sees exactly the keys the block-diagonal mask lets through, so
the outputs, losses and gradients are those of the masked attention up to float rounding
(`autoretrain_tests/training/test_segment_attention.py`).

Why not the alternatives: `flex_attention` without `torch.compile` materialises the full score
matrix (torch warns so), and compiled it needs an Inductor C++ build for new row shapes, a
cost we did not try to pay on two cores; the variable-length flash kernels transformers uses
with position ids exist only on GPUs.

`segments_attention(model)` switches a model to it for the duration of a `with` block and puts
back the implementation it had, so saved models and generation never see it. Anything that is
not a plain training forward (a padding mask, a KV cache, queries shorter than keys) goes to
transformers' own SDPA path unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "autoretrain_segments"


def segment_lengths(position_ids, rows: int, length: int) -> list[list[int]]:
    """Per row, the lengths of its runs of consecutive positions (conversations, and the
    padding block at the end of a packed row)."""
    import torch

    positions = position_ids.expand(rows, length)
    starts = torch.ones(rows, length, dtype=torch.bool, device=positions.device)
    starts[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
    bounds = [[*row.nonzero().flatten().tolist(), length] for row in starts.cpu()]
    return [[b - a for a, b in zip(row, row[1:], strict=False)] for row in bounds]


def segment_attention_forward(
    module: Any,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids=None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers' attention-function signature: query [batch, heads, seq, dim], key and
    value [batch, kv_heads, seq, dim]; returns [batch, seq, heads, dim]."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    rows, _, length, _ = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = []
    for row, lengths in enumerate(segment_lengths(position_ids, rows, length)):
        q, k, v = (t[row : row + 1].split(lengths, dim=2) for t in (query, key, value))
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                qs, ks, vs, dropout_p=dropout, scale=scaling, is_causal=True
            )
            for qs, ks, vs in zip(q, k, v, strict=True)
        ]
        out.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(out, dim=0).transpose(1, 2).contiguous(), None


def _mask(*, attention_mask=None, q_length: int, kv_length: int, q_offset=0, kv_offset=0, **kw):
    """No mask for a plain training forward (the attention reads the segments from the
    position ids); SDPA's mask otherwise, for the fallback path."""
    from transformers.masking_utils import sdpa_mask

    plain = attention_mask is None and q_length == kv_length and not q_offset and not kv_offset
    if plain:
        return None
    return sdpa_mask(
        attention_mask=attention_mask, q_length=q_length, kv_length=kv_length,
        q_offset=q_offset, kv_offset=kv_offset, **kw,
    )  # fmt: skip


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, segment_attention_forward)
    AttentionMaskInterface.register(NAME, _mask)


@contextmanager
def segments_attention(model: Any) -> Iterator[None]:
    """Run `model` (a transformers model, or a peft model around one) with segment attention
    inside the block. A model that cannot switch (no attention interface) is left as it is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    switchable = config is not None and getattr(base, "_can_set_attn_implementation", None)
    if not switchable or not base._can_set_attn_implementation():
        yield
        return
    previous = config._attn_implementation
    register()
    base.set_attn_implementation(NAME)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
