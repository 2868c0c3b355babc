"""The forward pass of a plain Llama-shaped decoder in a few torch calls.

On a small model most of a decode step is not arithmetic: transformers' forward goes through
module hooks, output capturing, config lookups and a general mask builder on every call. On the
embedded model that is about 0.45 ms of a 1.0 ms step at batch 1 and 0.7 ms of 2.5 ms at batch
32 (`bench/selfplay.py` measures what this saves end to end). This module runs the same ops in
the same order on the model's own weights: the embedded model's logits are bit for bit those of
`model(...)`, and grouped-query attention and the other families differ by float rounding only
(`autoretrain_tests/providers/test_fast_forward.py`).

It covers the families the decoder takes (`engine.SUPPORTED_MODEL_TYPES`): Llama and Mistral,
Qwen2's q/k/v biases, Qwen3's per-head q/k norms, grouped-query attention, tied or separate
output embeddings. Anything it does not recognise (another activation, a dynamic RoPE, an
unmerged adapter's wrapped linears) makes `LlamaForward.supports` say no, and the decoder calls
the model itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# RoPE variants whose frequencies transformers computes once at load; the others depend on the
# sequence length at every call.
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})


class LlamaForward:
    """`__call__(input_ids, attention_mask, position_ids, cache)` → logits of the last position.

    `attention_mask` is 2-D over the cached and new positions, 1 for real tokens (holes are
    allowed anywhere); `cache` is a transformers `Cache` the new keys and values are added to.
    """

    def __init__(self, model: Any):
        config = model.config
        inner = model.model
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.embed = inner.embed_tokens.weight
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.lm_head = model.lm_head.weight
        self.inv_freq = inner.rotary_emb.inv_freq
        self.rope_scaling = float(inner.rotary_emb.attention_scaling)

    @staticmethod
    def supports(model: Any) -> bool:
        """A model this forward computes exactly: plain modules only (an unmerged peft adapter
        wraps its linears, and its extra path would be skipped)."""
        config = model.config
        rope = getattr(config, "rope_parameters", None) or {}
        try:
            inner = model.model
            return (
                getattr(config, "hidden_act", None) == "silu"
                and getattr(config, "pretraining_tp", 1) == 1
                and not getattr(config, "attn_logit_softcapping", None)
                and rope.get("rope_type", "default") in _STATIC_ROPE
                and type(inner.embed_tokens) is torch.nn.Embedding
                and _plain_linear(model.lm_head, bias=False)
                and hasattr(inner.rotary_emb, "inv_freq")
                and _plain_norm(inner.norm)
                and all(_plain_layer(layer) for layer in inner.layers)
            )
        except AttributeError:
            return False

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        batch, new = input_ids.shape
        x = F.embedding(input_ids, self.embed)
        cos, sin = self._rope(position_ids, x.dtype)
        mask = _attention_mask(attention_mask, new)
        shape = (batch, new, -1, self.head_dim)  # per head
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            h = _rms_norm(x, layer.input_layernorm)
            q = _project(h, attention.q_proj).view(shape)
            k = _project(h, attention.k_proj).view(shape)
            v = _project(h, attention.v_proj).view(shape).transpose(1, 2)
            if hasattr(attention, "q_norm"):  # Qwen3 normalises each head before RoPE
                q, k = _rms_norm(q, attention.q_norm), _rms_norm(k, attention.k_norm)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k, v = cache.update(k, v, index)
            if self.groups > 1:
                k, v = _repeat_kv(k, self.groups), _repeat_kv(v, self.groups)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attention.scaling)
            x = x + _project(out.transpose(1, 2).reshape(batch, new, -1), attention.o_proj)
            h = _rms_norm(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            x = x + F.linear(
                F.silu(F.linear(h, mlp.gate_proj.weight)) * F.linear(h, mlp.up_proj.weight),
                mlp.down_proj.weight,
            )
        # The final norm is per position, so only the last one needs it.
        return F.linear(_rms_norm(x[:, -1], self.norm), self.lm_head)

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[Any, Any]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def _plain_layer(layer: Any) -> bool:
    attention, mlp = layer.self_attn, layer.mlp
    # Qwen3 has both per-head norms; a model with one of them is something else.
    head_norms = hasattr(attention, "q_norm")
    return (
        all(_plain_linear(getattr(attention, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        and all(
            _plain_linear(getattr(mlp, n), bias=False)
            for n in ("gate_proj", "up_proj", "down_proj")
        )
        and isinstance(attention.scaling, float)
        and not getattr(attention, "sliding_window", None)
        and head_norms == hasattr(attention, "k_norm")
        and (not head_norms or (_plain_norm(attention.q_norm) and _plain_norm(attention.k_norm)))
        and _plain_norm(layer.input_layernorm)
        and _plain_norm(layer.post_attention_layernorm)
    )


def _plain_linear(module: Any, bias: bool = True) -> bool:
    return type(module) is torch.nn.Linear and (bias or module.bias is None)


def _plain_norm(module: Any) -> bool:
    return hasattr(module, "weight") and isinstance(
        getattr(module, "variance_epsilon", None), float
    )


def _attention_mask(padding: torch.Tensor, new: int) -> torch.Tensor:
    """[batch, 1, new, total] booleans: a new token sees the real tokens up to itself."""
    visible = padding.bool()[:, None, None, :]
    if new == 1:
        return visible
    total = padding.shape[1]
    causal = torch.ones((new, total), dtype=torch.bool, device=padding.device).tril(total - new)
    mask = visible & causal
    # A hole before a row's first token sees nothing; letting it see everything keeps its
    # (unused) output finite, as transformers does, so no NaN reaches the next layer's values.
    return mask | ~mask.any(-1, keepdim=True)


def _rms_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    # transformers' LlamaRMSNorm, op for op (statistics in float32, scaled in the input dtype).
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x32.to(x.dtype)


def _project(x: torch.Tensor, linear: Any) -> torch.Tensor:
    return F.linear(x, linear.weight, linear.bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, -1, length, dim)
