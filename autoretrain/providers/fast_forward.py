"""The forward pass of a plain Llama-shaped decoder in a few torch calls.

On a small model most of a decode step is not arithmetic: transformers' forward goes through
module hooks, output capturing, config lookups and a general mask builder on every call. On the
embedded model that is about 0.45 ms of a 1.0 ms step at batch 1 and 0.7 ms of 2.5 ms at batch
32 (`bench/selfplay.py` measures what this saves end to end). This module runs the same ops on
the model's own weights with fewer calls (q, k and v as one matrix product, gate and up as
another, RoPE on q and k together from a table of angles): the embedded model's logits are bit
for bit those of `model(...)`, and grouped-query attention and the other families differ by float
rounding only (`autoretrain_tests/providers/test_fast_forward.py`).

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
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        self.embed = inner.embed_tokens.weight
        fuse = sum(p.numel() for p in model.parameters()) <= FUSE_MAX_PARAMETERS
        self.layers = [_Layer(layer, fuse) for layer in inner.layers]
        self.norm = inner.norm
        self.lm_head = model.lm_head.weight
        self.inv_freq = inner.rotary_emb.inv_freq
        self.rope_scaling = float(inner.rotary_emb.attention_scaling)
        self._cos = self._sin = self.inv_freq.new_empty((0, 2 * self.inv_freq.shape[0]))

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
        q_heads, kv_heads = self.heads, self.kv_heads
        for index, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm)
            # One projection for q, k and v: their heads side by side, [batch, heads, new, dim].
            qkv = layer.project_qkv(h)
            qkv = qkv.view(batch, new, q_heads + 2 * kv_heads, self.head_dim).transpose(1, 2)
            qk, v = qkv[:, : q_heads + kv_heads], qkv[:, q_heads + kv_heads :]
            if layer.q_norm is not None:  # Qwen3 normalises each head before RoPE
                qk = torch.cat(
                    (
                        _rms_norm(qk[:, :q_heads], layer.q_norm),
                        _rms_norm(qk[:, q_heads:], layer.k_norm),
                    ),
                    dim=1,
                )
            qk = qk * cos + _rotate_half(qk) * sin  # RoPE on q and k in one pass
            k, v = cache.update(qk[:, q_heads:], v, index)
            if self.groups > 1:
                k, v = _repeat_kv(k, self.groups), _repeat_kv(v, self.groups)
            out = F.scaled_dot_product_attention(
                qk[:, :q_heads], k, v, attn_mask=mask, scale=layer.scaling
            )
            x = x + F.linear(
                out.transpose(1, 2).reshape(batch, new, -1), layer.o_weight, layer.o_bias
            )
            h = _rms_norm(x, layer.post_norm)
            gate, up = layer.project_gate_up(h).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down_weight)
        # The final norm is per position, so only the last one needs it.
        return F.linear(_rms_norm(x[:, -1], self.norm), self.lm_head)

    def _rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[Any, Any]:
        """cos and sin per position, [batch, 1, new, dim], looked up in a table grown on demand
        (the same float ops per position as computing them at every call)."""
        needed = int(position_ids.max()) + 1
        if needed > self._cos.shape[0]:
            size = max(needed, 2 * self._cos.shape[0], 256)
            positions = torch.arange(size, device=self.inv_freq.device)
            freqs = positions[:, None].float() * self.inv_freq.float()
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cos, self._sin = emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling
        cos, sin = self._cos[position_ids], self._sin[position_ids]
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


# Concatenated weights are a copy: worth it while a step is mostly per-op cost, i.e. for small
# models, where the copy is also small; a big model keeps one product per projection.
FUSE_MAX_PARAMETERS = 50_000_000


class _Layer:
    """One decoder layer's weights. On a small model q/k/v and gate/up are concatenated, so that
    each triple or pair is one matrix product. The copies are taken once: the decoder is built on
    a loaded, merged model whose weights do not change.
    """

    def __init__(self, layer: Any, fuse: bool):
        attention, mlp = layer.self_attn, layer.mlp
        self.qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
        self.gate_up = [mlp.gate_proj, mlp.up_proj]
        self.qkv_weight = self.qkv_bias = self.gate_up_weight = None
        if fuse:
            self.qkv_weight = torch.cat([p.weight for p in self.qkv]).detach()
            if any(p.bias is not None for p in self.qkv):
                self.qkv_bias = torch.cat(
                    [
                        p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                        for p in self.qkv
                    ]
                ).detach()
            self.gate_up_weight = torch.cat([p.weight for p in self.gate_up]).detach()
        self.o_weight, self.o_bias = attention.o_proj.weight, attention.o_proj.bias
        self.down_weight = mlp.down_proj.weight
        self.input_norm, self.post_norm = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm = getattr(attention, "q_norm", None)
        self.k_norm = getattr(attention, "k_norm", None)
        self.scaling = attention.scaling

    def project_qkv(self, h: torch.Tensor) -> torch.Tensor:
        if self.qkv_weight is not None:
            return F.linear(h, self.qkv_weight, self.qkv_bias)
        return torch.cat([F.linear(h, p.weight, p.bias) for p in self.qkv], dim=-1)

    def project_gate_up(self, h: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None:
            return F.linear(h, self.gate_up_weight)
        return torch.cat([F.linear(h, p.weight) for p in self.gate_up], dim=-1)


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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, -1, length, dim)
