"""The embedded base model: a tokenizer and a tiny Llama built locally, nothing downloaded.

The tokenizer is byte-level BPE trained on the catalog's rendered conversations. With enough
merges every word of the corpus is one token (sequences about half as long as characters, which
a trial found trains and generalizes better), while an unseen word falls back to pieces and, at
worst, to single bytes: any text encodes and decodes exactly, and nothing becomes an unknown
token. Digits are always split one per token, so numbers the model never saw are still made of
tokens it knows.
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
    """Shape of the tiny Llama; the defaults give about 0.8M parameters with a 1k vocabulary."""

    vocab_size: int = 1024  # upper bound for the BPE vocabulary (fewer if the corpus is small)
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


def build_tokenizer(
    corpus: list[str], vocab_size: int = 1024, max_length: int = 1024, number_splitter=None
):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it with the chat template.

    `number_splitter` (a `tokenizers` pre-tokenizer) decides how numbers are cut before BPE;
    the default is one digit per token (bench/bootstrap_trials.py tries groups of three)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not corpus:
        raise ValueError("cannot build a tokenizer from an empty corpus")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            number_splitter or pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
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
