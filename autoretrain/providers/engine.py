"""A batched decoder for the local provider: what `model.generate` does, without its waste.

Self-play prompts are long and replies short (about 140 prompt tokens per 12 generated on the
embedded model), and every turn of a run re-sends the whole conversation. So this decoder:

- reuses key/value states across calls with a **prefix cache** (the idea of vLLM's automatic
  prefix caching): prompts are cut into blocks of `block_size` tokens, and a block whose tokens
  and whole prefix were seen before is not computed again. A run's second turn recomputes only
  what its first turn did not see; runs with the same system prompt and tools share those blocks;
- grows the KV cache in place (a decode step writes one position instead of concatenating, i.e.
  copying, the whole cache, as transformers' DynamicCache does);
- batches continuously: once a quarter of the batch has finished, those rows leave and queued
  prompts take their places (their prompts computed together, their keys and values regrouped
  with the rows still mid-reply), instead of running every row to the longest reply of a chunk;
- runs the model's forward pass through `fast_forward.LlamaForward` where the model allows it:
  the same ops without transformers' per-call machinery, which is most of a small model's step.

Key/value states depend only on the tokens before them and their positions, so reusing them is
exact up to float rounding; `autoretrain_tests/providers/test_engine.py` checks the outputs
against `model.generate`. Only plain decoder families with full attention take this path
(`supports`); any other model goes through `model.generate`.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from autoretrain.providers.base import derive_seed
from autoretrain.providers.fast_forward import LlamaForward

# Families whose forward takes a cache, 2-D attention masks with holes and explicit position ids,
# with one full-attention KV tensor per layer.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def supports(model: Any) -> bool:
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    return all(t == "full_attention" for t in layer_types)


class _GrowingLayer(DynamicLayer):
    """One layer's keys and values in a buffer with spare room at the end, `capacity`
    positions from the start when the caller knows how long its rows will get (no copy to grow).
    """

    def __init__(self, capacity: int = 0):
        super().__init__()
        self._capacity = capacity

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take `keys`/`values` [batch, heads, capacity, dim], whose first `length` positions
        are filled, as this layer's buffers."""
        self.lazy_initialization(keys[:, :, :0], values[:, :, :0])
        self._k, self._v, self._len = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None or self._v is None or self._len + n > self._k.shape[-2]:
            capacity = max(2 * (self._len + n), 64, self._capacity)
            b, h, _, d = key_states.shape
            k, v = (
                key_states.new_empty((b, h, capacity, d)),
                value_states.new_empty((b, h, capacity, d)),
            )
            if self._k is not None and self._v is not None:
                k[:, :, : self._len] = self._k[:, :, : self._len]
                v[:, :, : self._len] = self._v[:, :, : self._len]
            self._k, self._v = k, v
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]
        return self.keys, self.values


def _growing_cache(capacity: int = 0) -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = functools.partial(_GrowingLayer, capacity)
    return cache


class PrefixCache:
    """Key/value states of token blocks, keyed by the block's tokens and its parent block.

    A block is found only through its whole prefix, so a hit is the same tokens at the same
    positions: exact reuse. Least recently used blocks go first once they take more than
    `max_bytes` (256 MiB hold about 8,000 blocks of the embedded model, 680 of a 0.5B Qwen in float32).
    """

    def __init__(self, block_size: int = 16, max_bytes: int = 256 << 20):
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._blocks: OrderedDict[tuple[int, tuple[int, ...]], tuple[int, torch.Tensor]] = (
            OrderedDict()
        )
        self._next_id = 1
        self.hits = 0  # tokens served from the cache
        self.misses = 0  # prompt tokens computed

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        self._blocks.clear()
        self.bytes = self.hits = self.misses = 0

    def lookup(self, tokens: list[int], limit: int) -> tuple[list[int], list[torch.Tensor]]:
        """The longest cached run of whole blocks at the start of `tokens`, at most `limit`
        tokens: (block ids, per-block KV tensors [layers, 2, heads, block, dim])."""
        size, parent = self.block_size, 0
        ids: list[int] = []
        kvs: list[torch.Tensor] = []
        for start in range(0, limit - size + 1, size):
            key = (parent, tuple(tokens[start : start + size]))
            found = self._blocks.get(key)
            if found is None:
                break
            self._blocks.move_to_end(key)
            parent = found[0]
            ids.append(parent)
            kvs.append(found[1])
        return ids, kvs

    def insert(self, tokens: list[int], parent_ids: list[int], kv: torch.Tensor) -> None:
        """Store the whole blocks of `tokens` after the `parent_ids` ones already cached; `kv`
        [layers, 2, heads, n, dim] holds the states of tokens[len(parent_ids) * block:]."""
        size = self.block_size
        parent = parent_ids[-1] if parent_ids else 0
        first = len(parent_ids) * size
        for start in range(first, len(tokens) - size + 1, size):
            key = (parent, tuple(tokens[start : start + size]))
            found = self._blocks.get(key)
            if found is None:
                block = kv[:, :, :, start - first : start - first + size].clone()
                found = (self._next_id, block)
                self._next_id += 1
                self._blocks[key] = found
                self.bytes += block.nbytes
                while self.bytes > self.max_bytes and len(self._blocks) > 1:
                    self.bytes -= self._blocks.popitem(last=False)[1][1].nbytes
            parent = found[0]


@dataclass
class Decoded:
    tokens: list[int]  # new tokens, the stop token excluded
    stopped: bool  # ended on a stop token (else it hit max_new)


class Decoder:
    """Greedy or sampled decoding of many prompts at once over one causal LM."""

    def __init__(
        self,
        model: Any,
        stop_ids: list[int],
        pad_id: int,
        prefix_cache: bool = True,
        fast_forward: bool = True,
    ):
        self.model = model
        # The same logits without transformers' per-call overhead, where the model allows it.
        self.fast = LlamaForward(model) if fast_forward and LlamaForward.supports(model) else None
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.cache = PrefixCache() if prefix_cache else None
        # Where generate's time goes (bench/selfplay.py reports it): forward passes over
        # prompts, decode steps, and all of generate (the rest is this class's bookkeeping).
        self.seconds = dict.fromkeys(("prefill", "decode", "generate"), 0.0)
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def generate(
        self,
        rows: list[list[int]],
        max_new: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        max_batch: int = 32,
        streamer: Any = None,
    ) -> list[Decoded]:
        """New tokens for each prompt, decoding up to `max_batch` prompts together.

        Continuous batching: once a quarter of the batch has finished, the finished rows leave
        and as many queued prompts join (their prompts computed in one forward pass, then
        their keys and values copied in beside the others'), so the batch stays full until the
        queue is empty instead of decoding in lock step until its longest reply ends. Prompts
        join in the order of the length left to compute after their cached blocks (less
        padding in each joining group), and each group looks its rows up in the prefix cache
        when it joins, so it finds the blocks of the rows that finished before it.
        """
        if streamer is not None and len(rows) != 1:
            raise ValueError("a streamer takes one prompt at a time")
        if max_new < 1:
            raise ValueError(f"max_new must be at least 1 (got {max_new})")
        started = time.perf_counter()
        # One generator per prompt: a seeded row samples the same tokens whatever the cache
        # holds and whichever rows it shares a batch with.
        generators = (
            [
                torch.Generator(device=self.device).manual_seed(derive_seed(seed, j))
                for j in range(len(rows))
            ]
            if seed is not None
            else None
        )
        cached_ids, _ = self._lookup(rows)
        left = [
            len(row) - len(ids) * self._block for row, ids in zip(rows, cached_ids, strict=True)
        ]
        queue = deque(sorted(range(len(rows)), key=lambda i: left[i]))
        state = _Rows(rows, max_new, self.stop_ids, streamer)
        batch: _Batch | None = None
        while True:
            # Finished rows leave (their blocks go to the prefix cache) and queued rows join
            # once a quarter of the batch is idle: both copy the cache, so not at every step.
            n_batch = len(batch.rows) if batch is not None else 0
            idle = [k for k, j in enumerate(batch.rows) if state.done[j]] if batch else []
            if batch is None or len(idle) >= 0.25 * n_batch:
                live = n_batch - len(idle)
                joining = [queue.popleft() for _ in range(min(len(queue), max_batch - live))]
                if batch is not None:
                    self._store(state, batch, idle)
                new = None
                if joining:
                    new = self._join(state, joining, max_new, temperature, top_p, generators)
                leaving = set(idle)
                keep = [k for k in range(n_batch) if k not in leaving]
                batch = _regroup(batch, keep, new, max_new)
                if batch is None:
                    break
                if all(state.done[j] for j in batch.rows):
                    continue  # every joining row ended on its first token
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], 1)
            logits = self._logits(
                batch.tokens[:, None], batch.mask, batch.next_pos[:, None], batch.cache
            )
            batch.next_pos = batch.next_pos + 1
            batch.tokens = _pick(
                logits,
                temperature,
                top_p,
                [generators[j] for j in batch.rows] if generators else None,
            )
            state.record(batch.rows, batch.tokens.tolist())
        if streamer is not None:
            streamer.end()
        self.seconds["generate"] += time.perf_counter() - started
        return [Decoded(g, s) for g, s in zip(state.generated, state.stopped, strict=True)]

    @property
    def _block(self) -> int:
        return self.cache.block_size if self.cache is not None else 0

    def _join(
        self,
        state: _Rows,
        joining: list[int],
        max_new: int,
        temperature: float,
        top_p: float,
        generators: list[torch.Generator] | None,
    ) -> _Batch:
        """The joining prompts as a batch of their own: their cached blocks laid out, the rest
        of each prompt computed in one forward pass, and the first new token of each picked."""
        rows = [state.prompts[j] for j in joining]
        cached_ids, cached_kv = self._lookup(rows, count=True)
        cached = [len(ids) * self._block for ids in cached_ids]
        for j, ids, c in zip(joining, cached_ids, cached, strict=True):
            state.cached_ids[j], state.cached[j] = ids, c
        width_cached = max(cached)
        suffixes = [row[c:] for row, c in zip(rows, cached, strict=True)]
        width = max(len(s) for s in suffixes)

        input_ids, mask = self._prompt_layout(suffixes, cached, width, width_cached)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        # Room for the prompt and the longest reply: while no other rows join, the buffers
        # never grow.
        kv_cache = _growing_cache(width_cached + width + max_new)
        if width_cached:
            self._fill(kv_cache, cached_kv, cached, width_cached, width + max_new)
        logits = self._logits(input_ids, mask, positions[:, width_cached:], kv_cache)
        if state.streamer is not None:
            state.streamer.put(torch.tensor(rows[0]))
        tokens = _pick(
            logits, temperature, top_p, [generators[j] for j in joining] if generators else None
        )
        state.record(joining, tokens.tolist())
        return _Batch(joining, kv_cache, mask, positions[:, -1] + 1, tokens)

    def _prompt_layout(
        self, suffixes: list[list[int]], cached: list[int], width: int, width_cached: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, attention mask) of the uncached suffixes, on the device. Layout per row:
        [holes][cached blocks][holes][suffix]; the mask hides the holes and position ids count
        only real tokens, so every token sits at its true position."""
        n_rows = len(suffixes)
        input_ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, width_cached + width), dtype=torch.long)
        for j, (suffix, c) in enumerate(zip(suffixes, cached, strict=True)):
            input_ids[j, width - len(suffix) :] = torch.tensor(suffix)
            mask[j, width_cached - c : width_cached] = 1
            mask[j, width_cached + width - len(suffix) :] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _logits(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: DynamicCache,
    ) -> torch.Tensor:
        """The next-token logits of each row's last position; new keys and values go to
        `kv_cache`."""
        started = time.perf_counter()
        if self.fast is not None:
            logits = self.fast(input_ids, mask, positions, kv_cache)
        else:
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=kv_cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        self.seconds["prefill" if input_ids.shape[1] > 1 else "decode"] += (
            time.perf_counter() - started
        )
        return logits

    def _lookup(
        self, rows: list[list[int]], count: bool = False
    ) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
        if self.cache is None:
            return [[] for _ in rows], [[] for _ in rows]
        found = [self.cache.lookup(row, len(row) - 1) for row in rows]  # >= 1 token to prefill
        if count:
            for (ids, _), row in zip(found, rows, strict=True):
                hit = len(ids) * self.cache.block_size
                self.cache.hits += hit
                self.cache.misses += len(row) - hit
        return [ids for ids, _ in found], [kvs for _, kvs in found]

    @staticmethod
    def _fill(
        kv_cache: DynamicCache,
        blocks: list[list[torch.Tensor]],
        cached: list[int],
        width: int,
        room: int,
    ) -> None:
        """Lay the rows' cached blocks out right-aligned in `width` positions, straight into
        each layer's buffers (with `room` more positions for what follows)."""
        sample = next(b[0] for b in blocks if b)
        n_layers, _, heads, _, dim = sample.shape
        past = sample.new_empty((n_layers, 2, len(blocks), heads, width + room, dim))
        # Holes are masked, but must hold finite numbers: 0 x NaN is NaN in attention.
        past[:, :, :, :, :width] = 0
        for j, (row_blocks, c) in enumerate(zip(blocks, cached, strict=True)):
            if row_blocks:
                past[:, :, j, :, width - c : width] = torch.cat(row_blocks, dim=3)
        for layer in range(n_layers):
            kv_cache.layers.append(kv_cache.layer_class_to_replicate())
            kv_cache.layers[layer].adopt(past[layer, 0], past[layer, 1], width)

    def _store(self, state: _Rows, batch: _Batch, leaving: list[int]) -> None:
        """Cache the whole blocks of the rows at `leaving` batch positions: prompt and reply,
        so that the next turn, which repeats both, starts after them. A stopped row's every
        token went through a forward pass; a capped row's last one did not."""
        if self.cache is None:
            return
        size = self.cache.block_size
        for k in leaving:
            j = batch.rows[k]
            reply = state.generated[j] if state.stopped[j] else state.generated[j][:-1]
            tokens = state.prompts[j] + reply
            whole = len(tokens) // size * size
            if whole <= state.cached[j]:
                continue
            # The row's real positions in order (holes skipped): its tokens, one to one, and
            # then whatever it was fed after it finished and before it left.
            where = batch.mask[k].nonzero().squeeze(1)[state.cached[j] : whole]
            kv = torch.stack(
                [
                    torch.stack([layer.keys[k][:, where], layer.values[k][:, where]])
                    for layer in batch.cache.layers
                ]
            )
            self.cache.insert(tokens[:whole], state.cached_ids[j], kv)


class _Rows:
    """What each prompt of a `generate` call has produced so far, by prompt index."""

    def __init__(self, prompts: list[list[int]], max_new: int, stop_ids: set[int], streamer: Any):
        self.prompts = prompts
        self.max_new = max_new
        self.stop_ids = stop_ids
        self.streamer = streamer
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.stopped = [False] * len(prompts)
        self.done = [False] * len(prompts)  # stopped, or max_new tokens
        self.cached_ids: list[list[int]] = [[] for _ in prompts]  # prefix cache blocks used
        self.cached = [0] * len(prompts)  # tokens they hold

    def record(self, rows: list[int], tokens: list[int]) -> None:
        for j, token in zip(rows, tokens, strict=True):
            if self.done[j]:
                continue
            if self.streamer is not None:
                self.streamer.put(torch.tensor([token]))
            if token in self.stop_ids:
                self.done[j] = self.stopped[j] = True
            else:
                self.generated[j].append(token)
                self.done[j] = len(self.generated[j]) >= self.max_new


@dataclass
class _Batch:
    """Rows decoded together. Their keys and values sit right-aligned in one cache (every
    row's newest position in the last column, holes masked), so a step appends one column."""

    rows: list[int]  # prompt index of each batch position
    cache: DynamicCache
    mask: torch.Tensor  # [batch, width]: 1 where a row has a real token
    next_pos: torch.Tensor  # [batch]: the position of the token each row feeds next
    tokens: torch.Tensor  # [batch]: that token


def _regroup(old: _Batch | None, keep: list[int], new: _Batch | None, room: int) -> _Batch | None:
    """One batch of `old`'s rows at positions `keep` and all of `new`'s, right-aligned in fresh
    buffers as wide as the longest of them (columns that were holes in every kept row are
    dropped), with `room` columns to grow."""
    if old is None or not keep:
        return new  # laid out with room when it joined: nothing to copy
    index = torch.tensor(keep, device=old.mask.device)
    parts: list[tuple[_Batch, torch.Tensor | None]] = [(old, index)]
    if new is not None:
        parts.append((new, None))
    masks = [b.mask if rows is None else b.mask[rows] for b, rows in parts]
    # How many columns from the right each part needs: up to its first real position.
    spans = [m.shape[1] - int(m.any(0).nonzero()[0]) for m in masks]
    width = max(spans)
    mask = _right_aligned([(m, None) for m in masks], spans, width, 0)
    cache = _growing_cache()
    for i in range(len(old.cache.layers)):
        keys = [(b.cache.layers[i].keys, rows) for b, rows in parts]
        values = [(b.cache.layers[i].values, rows) for b, rows in parts]
        cache.layers.append(cache.layer_class_to_replicate())
        cache.layers[i].adopt(
            _right_aligned(keys, spans, width, room),
            _right_aligned(values, spans, width, room),
            width,
        )
    return _Batch(
        [old.rows[k] for k in keep] + (new.rows if new is not None else []),
        cache,
        mask,
        torch.cat([b.next_pos if rows is None else b.next_pos[rows] for b, rows in parts]),
        torch.cat([b.tokens if rows is None else b.tokens[rows] for b, rows in parts]),
    )


def _right_aligned(
    sources: list[tuple[torch.Tensor, torch.Tensor | None]], spans: list[int], width: int, room: int
) -> torch.Tensor:
    """The rows of `sources` ([rows, columns] masks, or [rows, heads, columns, dim] keys or
    values; each with the row index to take, or None for all) stacked, the last `span` columns
    of each ending at column `width`, zeros on their left (holes are masked, but must hold
    finite numbers: 0 x NaN is NaN in attention), and `room` unset columns after."""
    axis = 1 if sources[0][0].dim() == 2 else 2
    counts = [len(rows) if rows is not None else source.shape[0] for source, rows in sources]
    shape = list(sources[0][0].shape)
    shape[0], shape[axis] = sum(counts), width + room
    out = sources[0][0].new_empty(shape)
    start = 0
    for (source, rows), span, count in zip(sources, spans, counts, strict=True):
        part = out[start : start + count]
        part.narrow(axis, 0, width - span).zero_()
        # Cut the columns first: the row selection then copies only what is kept.
        columns = source.narrow(axis, source.shape[axis] - span, span)
        part.narrow(axis, width - span, span).copy_(columns if rows is None else columns[rows])
        start += count
    return out


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generators: list[torch.Generator] | None,
) -> torch.Tensor:
    """Next token per row: argmax, or a sample at `temperature` from the top-p nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        ordered_probs = ordered.softmax(-1)
        # Drop a token once the tokens before it already cover top_p (the first always stays).
        drop = (ordered_probs.cumsum(-1) - ordered_probs) >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    probs = scores.softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(1)
    return torch.cat(
        [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)]
    )
