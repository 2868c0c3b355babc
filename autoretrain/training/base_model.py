"""The embedded base model: a tokenizer and a tiny Llama built locally, nothing downloaded.

The tokenizer is byte-level BPE trained on the catalog's rendered conversations. With enough
merges every word of the corpus is one token (sequences about half as long as characters, which
a trial found trains and generalizes better), while an unseen word falls back to pieces and, at
worst, to single bytes: any text encodes and decodes exactly, and nothing becomes an unknown
token. Numbers are cut into groups of up to three digits and every such group is in the
vocabulary, so a number the model never saw is still made of tokens it knows, and copying a
number from the prompt moves one or two tokens instead of one per digit (trials in
bench/results/trials/bootstrap.md: with one digit per token the model did not learn to copy
within its budget).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autoretrain.training.chat_format import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    MARKER_TOKENS,
    PAD,
    SPECIAL_TOKENS,
)


@dataclass(frozen=True)
class ModelSize:
    """Shape of the tiny Llama; the defaults give about 1.1M parameters with a 2.2k vocabulary."""

    # Upper bound for the BPE vocabulary (fewer if the corpus is small), digit groups not counted.
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 320
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024

    @classmethod
    def from_kwargs(cls, size: dict) -> ModelSize:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(size) - known)
        if unknown:
            raise ValueError(f"unknown model size field(s) {unknown}; known: {sorted(known)}")
        return cls(**size)


# Every group a number can be cut into: 0-999, and the zero-padded 00-99 and 000-099 inside
# longer numbers ("1005" is "100" "5", "2007" is "200" "7", "10050" is "100" "50").
DIGIT_GROUPS = (
    [str(n) for n in range(1000)]
    + [f"{n:02d}" for n in range(100)]
    + [f"{n:03d}" for n in range(100)]
)


def build_tokenizer(
    corpus: list[str], vocab_size: int = 1024, max_length: int = 1024, digits: str = "groups"
):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it with the chat template.

    `digits="groups"` cuts numbers into groups of up to three digits, every group a token;
    `"single"` (the default before 2026-11-27) splits them one digit per token."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not corpus:
        raise ValueError("cannot build a tokenizer from an empty corpus")
    if digits == "groups":
        splitter = pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated")
        # Twice: a BPE merge needs a pair seen at least twice (min_frequency).
        corpus = list(corpus) + [" ".join(DIGIT_GROUPS)] * 2
        vocab_size += len(DIGIT_GROUPS)
    elif digits == "single":
        splitter = pre_tokenizers.Digits(individual_digits=True)
    else:
        raise ValueError(f"digits must be 'groups' or 'single', not {digits!r}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [splitter, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.padding_side = "right"
    return tokenizer


def build_untrained_model(output_dir: Path, corpus: list[str], seed: int = 0, **size) -> Path:
    """Write a loadable Hugging Face model directory: trained tokenizer + randomly initialised Llama.

    `size` overrides `ModelSize` fields. The same corpus, seed and size give the same weights.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = ModelSize.from_kwargs(size)
    tokenizer = build_tokenizer(corpus, shape.vocab_size, shape.max_position_embeddings)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    random.seed(seed)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None
    )
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "model_size.json").write_text(json.dumps(asdict(shape), indent=2) + "\n")
    return output_dir


def parameter_count(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())
