"""Chat templates of common families get assistant-span markers, tested on tokenizers built here.

Each tokenizer is a tiny byte-level BPE trained on the spot, with the family's special tokens and
a chat template of the shape the family publishes (no generation markers, as shipped). The mask
comes from the trainer's own path: `templates.ensure_generation_markers`, then `data.encode`.
"""

from __future__ import annotations

import pytest

from autoretrain.training import templates
from autoretrain.training.data import Example, LossMaskError, encode, end_of_turn_ids
from autoretrain_tests.curation.factories import CALCULATOR
from autoretrain_tests.training.conftest import calculator_conversation
from autoretrain_tests.training.family_tokenizers import (
    END_OF_TURN,
    FAMILY_TOKENIZERS,
    PHI3,
    family_tokenizer,
)


def alternating(conversation: list[dict]) -> list[dict]:
    """Fold the system prompt into the first user turn, for templates without a system role."""
    system, user, *rest = conversation
    return [{"role": "user", "content": system["content"] + "\n\n" + user["content"]}, *rest]


def spans(tokenizer, encoded) -> list[str]:
    out, current = [], []
    for token, bit in zip(encoded.input_ids, [*encoded.trained], strict=True):
        if bit:
            current.append(token)
        elif current:
            out.append(tokenizer.decode(current))
            current = []
    if current:
        out.append(tokenizer.decode(current))
    return out


@pytest.mark.parametrize("name", list(FAMILY_TOKENIZERS))
def test_marker_less_family_template_gets_a_mask_of_assistant_turns_and_end_of_turn(name):
    tokenizer = family_tokenizer(name)
    assert "{% generation" not in tokenizer.chat_template
    family = templates.ensure_generation_markers(tokenizer, f"a {name} tokenizer")
    assert family is not None and family.name == name
    eot = END_OF_TURN[name]
    stop_ids = end_of_turn_ids(tokenizer) | templates.end_of_turn_ids(tokenizer, family)
    assert tokenizer.convert_tokens_to_ids(eot) in stop_ids

    conversation = calculator_conversation(6, 7)
    encoded = encode(tokenizer, Example(conversation, [CALCULATOR], "probe:1"), stop_ids)
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'
    assert spans(tokenizer, encoded) == [call + eot, "The answer is 42." + eot]
    # The raw mask from apply_chat_template (what any trainer would read) says the same.
    raw = tokenizer.apply_chat_template(
        conversation, tools=[CALCULATOR], return_dict=True, return_assistant_tokens_mask=True
    )
    assert raw["assistant_masks"] == encoded.trained
    untrained = tokenizer.decode(
        [t for t, m in zip(encoded.input_ids, encoded.trained, strict=True) if not m]
    )
    for turn in ("You are a careful assistant", "What is 6 times 7?", "<tool_response>\n42"):
        assert turn in untrained


@pytest.mark.parametrize("name", list(FAMILY_TOKENIZERS))
def test_family_template_prompts_like_the_published_one(name):
    """What the served model sees: the replacement renders the prompt the family's own template
    renders, byte for byte, for plain chats (those the published templates accept)."""
    tokenizer = family_tokenizer(name)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Add 2 and 3."},
    ]
    if name in ("mistral", "gemma"):
        chat = alternating(chat)
    cases = [chat, chat[1:]] if name not in ("mistral", "gemma") else [chat]
    if name == "qwen2.5":  # Qwen's own template lists tools the Hermes way, as ours does
        cases += [{"tools": [CALCULATOR], "c": c} for c in cases]

    def prompts() -> list[str]:
        return [
            tokenizer.apply_chat_template(
                c["c"] if isinstance(c, dict) else c,
                tools=c["tools"] if isinstance(c, dict) else None,
                tokenize=False,
                add_generation_prompt=True,
            )
            for c in cases
        ]

    published = prompts()
    templates.ensure_generation_markers(tokenizer)
    ours = prompts()
    assert ours == published


def test_the_replacement_is_saved_with_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = family_tokenizer("llama3")
    templates.ensure_generation_markers(tokenizer)
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert templates.ensure_generation_markers(again) is None  # markers already there
    assert again.chat_template == templates.family_template("llama3")


def test_a_template_with_markers_is_left_alone():
    from autoretrain.training.chat_format import CHAT_TEMPLATE

    tokenizer = family_tokenizer("chatml")
    tokenizer.chat_template = CHAT_TEMPLATE
    assert templates.ensure_generation_markers(tokenizer) is None
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_an_unknown_template_is_refused_naming_it():
    tokenizer = family_tokenizer("chatml")
    tokenizer.chat_template = (
        "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}"
    )
    with pytest.raises(LossMaskError) as caught:
        templates.ensure_generation_markers(tokenizer, "/models/odd")
    text = str(caught.value)
    assert "/models/odd" in text and "### {{ m.role }}" in text and "llama3" in text
    assert tokenizer.chat_template.startswith("{% for m in messages %}")  # untouched


def test_a_family_template_without_its_end_of_turn_token_is_refused():
    # A Phi-3 template on a tokenizer that lacks <|end|>: the mask could not end a turn.
    tokenizer = family_tokenizer("gemma")
    tokenizer.chat_template = PHI3
    with pytest.raises(LossMaskError, match="no such token"):
        templates.ensure_generation_markers(tokenizer, "mixed")


def test_no_template_is_refused():
    tokenizer = family_tokenizer("chatml")
    tokenizer.chat_template = None
    with pytest.raises(LossMaskError, match="no chat template"):
        templates.ensure_generation_markers(tokenizer)


@pytest.mark.parametrize("name", ["qwen2.5", "llama3", "gemma"])
def test_the_trainer_fine_tunes_a_marker_less_family_model(name, tmp_path):
    """`train()` on a published-shape model (bf16, template without markers) adds the markers,
    trains the assistant turns and the end-of-turn token, and saves the marked template."""
    from transformers import AutoTokenizer

    from autoretrain.training.config import TrainConfig
    from autoretrain.training.lora import train
    from autoretrain_tests.training.conftest import write_dataset
    from autoretrain_tests.training.family_tokenizers import tiny_family_model

    base = tiny_family_model(name, tmp_path / "base")
    config = TrainConfig(method="lora", epochs=1, batch_size=8, lora_r=2, merge_adapter=True)
    result = train(
        write_dataset(tmp_path / "ds", n_train=8, n_eval=2), base, tmp_path / "v1", config
    )
    assert result.metrics["trained_tokens_per_epoch"] > 0
    saved = AutoTokenizer.from_pretrained(result.merged_dir)
    assert saved.chat_template == templates.family_template(name)
    assert templates.ensure_generation_markers(saved) is None
