"""The local provider's decoder against transformers' own `model.generate`.

The model is the tests' untrained tiny Llama with its matrices redrawn large: its greedy
replies never repeat, and each token hangs on exact keys, values, positions and masks, so any
error in reused or regrouped states changes the tokens and equality with `generate` is a sharp
check. (The untrained model itself repeats one token whatever it attends to: a misplaced key
would pass unseen.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from autoretrain.providers import engine
from autoretrain.providers.engine import Decoder, PrefixCache, supports

NEW = 24


@pytest.fixture(scope="module")
def model_and_prompts(untrained_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(untrained_model_dir)
    model = AutoModelForCausalLM.from_pretrained(untrained_model_dir).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    text = "What is 2 + 3? The answer is 5. " * 6
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Ragged prompts that share prefixes of several lengths (some longer than a cache block).
    prompts = [ids[:n] for n in (3, 17, 40, 41, 58, len(ids))]
    return model, tokenizer.pad_token_id, prompts


def reference(
    model, pad_id: int, rows: list[list[int]], stop_id: int | list[int] | None
) -> list[list[int]]:
    """`model.generate`, greedy, left-padded; each row cut before its first stop token."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, row in enumerate(rows):
        input_ids[j, width - len(row) :] = torch.tensor(row)
        mask[j, width - len(row) :] = 1
    config = GenerationConfig(
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=stop_id if stop_id is not None else -1,
        pad_token_id=pad_id,
        bos_token_id=None,
        use_cache=True,
    )
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
    rows_out = []
    stops = stop_id if isinstance(stop_id, list) else [stop_id]
    for tokens in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
        rows_out.append(tokens[:cut])
    return rows_out


def test_greedy_matches_generate_with_and_without_the_prefix_cache(model_and_prompts):
    model, pad_id, prompts = model_and_prompts
    expected = reference(model, pad_id, prompts, None)
    for prefix_cache in (False, True):
        decoder = Decoder(model, stop_ids=[-1], pad_id=pad_id, prefix_cache=prefix_cache)
        got = decoder.generate(prompts, NEW, max_batch=4)
        assert [d.tokens for d in got] == expected
        assert not any(d.stopped for d in got)


def test_a_later_turn_reuses_the_first_turns_blocks_and_still_matches(model_and_prompts):
    model, pad_id, prompts = model_and_prompts
    decoder = Decoder(model, stop_ids=[-1], pad_id=pad_id)
    first = decoder.generate(prompts, NEW)
    assert decoder.cache is not None and decoder.cache.hits == 0
    # The next turn: each prompt followed by its own reply and a few more tokens.
    second = [p + d.tokens + p[:5] for p, d in zip(prompts, first, strict=True)]
    got = decoder.generate(second, NEW)
    # Prompt and reply were cached as whole blocks (the capped reply's last token never went
    # through a forward pass), and at least one token of each prompt is computed.
    own = sum(16 * min((len(p) + NEW - 1) // 16, (len(p) + NEW + 5 - 1) // 16) for p in prompts)
    assert decoder.cache.hits >= own > 0
    assert [d.tokens for d in got] == reference(model, pad_id, second, None)


def test_rows_that_stop_early_leave_the_batch_and_the_rest_still_match(model_and_prompts):
    model, pad_id, prompts = model_and_prompts
    # Stop on a token the untrained model emits in some rows and not others.
    free = reference(model, pad_id, prompts, None)
    counts: dict[int, int] = {}
    for row in free:
        for token in set(row[1:]):
            counts[token] = counts.get(token, 0) + 1
    stop = next(t for t, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n < len(prompts))
    expected = reference(model, pad_id, prompts, stop)
    got = Decoder(model, stop_ids=[stop], pad_id=pad_id).generate(prompts, NEW)
    assert [d.tokens for d in got] == expected
    assert [d.stopped for d in got] == [stop in row for row in free]
    assert any(d.stopped for d in got) and not all(d.stopped for d in got)


def test_queued_prompts_join_as_rows_finish_and_every_row_still_matches(
    model_and_prompts, monkeypatch
):
    """Continuous batching: with fewer slots than prompts and rows that stop at different
    steps, queued prompts join a batch whose other rows are mid-reply (keys, values, masks and
    positions regrouped around them), and every row's tokens are still `model.generate`'s."""
    model, pad_id, prompts = model_and_prompts
    rows = prompts + [p[1:] for p in reversed(prompts)]
    free = reference(model, pad_id, rows, None)
    # Stop tokens that end every other row at a different step; the rest run to the cap.
    stops = [row[2 + j] for j, row in enumerate(free[::2])]
    expected = reference(model, pad_id, rows, stops)
    assert len({len(row) for row in expected}) >= 4
    regroups: list[tuple[int, bool]] = []  # (rows kept mid-reply, rows joining)
    real_regroup = engine._regroup

    def regroup(old, keep, new, room):
        regroups.append((len(keep) if old is not None else 0, new is not None))
        return real_regroup(old, keep, new, room)

    monkeypatch.setattr(engine, "_regroup", regroup)
    for prefix_cache in (False, True):
        for max_batch in (1, 2, 3, 5, 32):
            decoder = Decoder(model, stop_ids=stops, pad_id=pad_id, prefix_cache=prefix_cache)
            got = decoder.generate(rows, NEW, max_batch=max_batch)
            assert [d.tokens for d in got] == expected, (prefix_cache, max_batch)
            assert [d.stopped for d in got] == [len(row) < NEW for row in expected]
            # The same rows again: every prompt now starts with blocks the first call stored.
            again = decoder.generate(rows, NEW, max_batch=max_batch)
            assert [d.tokens for d in again] == expected, (prefix_cache, max_batch)
    assert decoder.cache is not None and decoder.cache.hits > 0
    assert any(kept and joining for kept, joining in regroups)


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(model_and_prompts):
    model, pad_id, prompts = model_and_prompts
    decoder = Decoder(model, stop_ids=[-1], pad_id=pad_id)

    def sample(seed: int | None, top_p: float = 1.0) -> list[list[int]]:
        got = decoder.generate(prompts, NEW, temperature=1.0, top_p=top_p, seed=seed)
        return [d.tokens for d in got]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(None, top_p=1e-6) == reference(model, pad_id, prompts, None)


def test_a_call_without_room_for_one_token_is_refused(model_and_prompts):
    model, pad_id, prompts = model_and_prompts
    with pytest.raises(ValueError, match="max_new must be at least 1"):
        Decoder(model, stop_ids=[-1], pad_id=pad_id).generate(prompts, 0)


def test_the_prefix_cache_evicts_least_recently_used_blocks():
    kv = torch.arange(4 * 2 * 1 * 6 * 1, dtype=torch.float32).reshape(4, 2, 1, 6, 1)
    block_bytes = kv[:, :, :, :2].contiguous().nbytes
    cache = PrefixCache(block_size=2, max_bytes=3 * block_bytes)
    tokens = [1, 2, 3, 4, 5, 6]
    cache.insert(tokens, [], kv)
    ids, blocks = cache.lookup(tokens, limit=5)  # at most 5 tokens: two whole blocks
    assert len(ids) == 2 and torch.equal(torch.cat(blocks, dim=3), kv[:, :, :, :4])
    cache.insert([9, 9], [], kv[:, :, :, :2])  # a fourth block: the least recent one goes
    assert len(cache) == 3 and cache.bytes == 3 * block_bytes
    assert cache.lookup(tokens, limit=6)[0] == ids  # blocks 1-2 were used; block 3 went
    assert cache.lookup([9, 9, 0], limit=2)[0]


def test_only_plain_full_attention_families_take_the_decoder(model_and_prompts):
    model, _, _ = model_and_prompts
    assert supports(model)

    class Other:
        config = type("Config", (), {"model_type": "gemma3"})()

    class Sliding:
        config = type("Config", (), {"model_type": "mistral", "sliding_window": 4096})()

    assert not supports(Other())
    assert not supports(Sliding())
