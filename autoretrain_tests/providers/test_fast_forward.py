"""The decoder's own forward pass against transformers' `model(...)` for each family it covers.

Random weights of the real model classes, built from configs (nothing is downloaded): a wrong
op, order or layout changes the logits, and Llama must match bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from autoretrain.providers import fast_forward
from autoretrain.providers.engine import Decoder, _growing_cache
from autoretrain.providers.fast_forward import LlamaForward

SIZES = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    pad_token_id=0,
)

FAMILIES = {
    "llama": LlamaConfig(**SIZES, num_key_value_heads=4),
    "llama_gqa_untied": LlamaConfig(**SIZES, num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": MistralConfig(**SIZES, num_key_value_heads=2, sliding_window=None),
    "qwen2": Qwen2Config(**SIZES, num_key_value_heads=2, use_sliding_window=False),
    "qwen3": Qwen3Config(**SIZES, num_key_value_heads=2, head_dim=16, use_sliding_window=False),
}


def build(name: str):
    torch.manual_seed(0)
    config = FAMILIES[name]
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    if name == "qwen2":  # its q/k/v biases start at zero; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    if name == "qwen3":  # and its per-head norms at one
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_norm.weight, 1.0, 0.3)
            torch.nn.init.normal_(layer.self_attn.k_norm.weight, 1.0, 0.3)
    return model


def ragged_batch(rows: int = 5, width: int = 23, cached: int = 7):
    """A prefill over `cached` positions already in the cache, with holes (left padding and a
    gap between the cached part and the new tokens, as the decoder lays rows out)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (rows, cached + width), generator=generator)
    mask = torch.ones((rows, cached + width), dtype=torch.long)
    for j in range(rows):
        mask[j, : j * 2] = 0  # left holes, row 0 has none
        mask[j, cached : cached + j] = 0  # a gap after the cached part
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


def both(model, ids, mask, positions, cached: int, steps: int = 6):
    """Logits from transformers and from LlamaForward: a prefill over a cache already holding
    `cached` positions, then `steps` greedy decode steps."""
    fast = LlamaForward(model)
    out = {}
    for name in ("transformers", "fast"):
        cache = _growing_cache()
        with torch.inference_mode():
            # The cached part goes in first, through the same path.
            step_mask = mask[:, :cached]
            if name == "fast":
                fast(ids[:, :cached], step_mask, positions[:, :cached], cache)
            else:
                model(
                    input_ids=ids[:, :cached],
                    attention_mask=step_mask,
                    position_ids=positions[:, :cached],
                    cache=cache,
                    use_cache=True,
                )
            logits, current, pos = [], mask, positions[:, -1] + 1
            new_ids, new_positions = ids[:, cached:], positions[:, cached:]
            for _ in range(steps + 1):
                if name == "fast":
                    last = fast(new_ids, current, new_positions, cache)
                else:
                    last = model(
                        input_ids=new_ids,
                        attention_mask=current,
                        position_ids=new_positions,
                        cache=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    ).logits[:, -1]
                logits.append(last)
                new_ids, new_positions = last.argmax(-1)[:, None], pos[:, None]
                current = torch.cat([current, current.new_ones((len(current), 1))], 1)
                pos = pos + 1
        out[name] = torch.stack(logits)
    return out["transformers"], out["fast"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers_through_prefill_and_decode(family):
    model = build(family)
    assert LlamaForward.supports(model)
    ids, mask, positions = ragged_batch()
    expected, got = both(model, ids, mask, positions, cached=7)
    assert torch.isfinite(got).all()
    if family == "llama":
        assert torch.equal(got, expected)  # the same ops in the same order
    else:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_a_big_model_keeps_one_product_per_projection_and_still_matches(family, monkeypatch):
    """Above FUSE_MAX_PARAMETERS the weights are not copied into q/k/v and gate/up blocks."""
    monkeypatch.setattr(fast_forward, "FUSE_MAX_PARAMETERS", 0)
    model = build(family)
    fast = LlamaForward(model)
    assert all(layer.qkv_weight is None and layer.gate_up_weight is None for layer in fast.layers)
    ids, mask, positions = ragged_batch()
    expected, got = both(model, ids, mask, positions, cached=7)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_the_decoder_gives_the_same_tokens_with_and_without_it():
    model = build("qwen3")
    rows = [list(range(1, n)) for n in (5, 19, 33, 40)]
    tokens = {}
    for fast in (False, True):
        decoder = Decoder(model, stop_ids=[-1], pad_id=0, fast_forward=fast)
        assert (decoder.fast is not None) is fast
        first = decoder.generate(rows, 12, max_batch=3)
        # A second turn through the prefix cache, as a run's next model call.
        again = decoder.generate([r + d.tokens for r, d in zip(rows, first, strict=True)], 12)
        tokens[fast] = [d.tokens for d in first + again]
    assert tokens[True] == tokens[False]


def test_models_it_cannot_compute_exactly_go_through_transformers():
    sliding = build("mistral")
    sliding.model.layers[0].self_attn.sliding_window = 8
    assert not LlamaForward.supports(sliding)

    gelu = AutoModelForCausalLM.from_config(LlamaConfig(**SIZES, hidden_act="gelu"))
    assert not LlamaForward.supports(gelu)

    dynamic = LlamaConfig(**SIZES, rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    assert not LlamaForward.supports(AutoModelForCausalLM.from_config(dynamic))

    # An unmerged LoRA adapter wraps the linears: its extra path must not be skipped.
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(build("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not LlamaForward.supports(wrapped)
    assert not LlamaForward.supports(wrapped.base_model.model)
