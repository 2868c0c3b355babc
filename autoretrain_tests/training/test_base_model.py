from __future__ import annotations

import pytest

from autoretrain.training.base_model import build_untrained_model
from autoretrain.training.chat_format import IM_END

from .conftest import CALCULATOR, calculator_conversation


def test_untrained_model_loads_with_auto_classes_and_renders_tool_calls(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids(IM_END)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

    messages = calculator_conversation(12, 7)
    text = tokenizer.apply_chat_template(messages, tools=[CALCULATOR], tokenize=False)
    assert (
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}\n</tool_call><|im_end|>'
        in text
    )
    assert "<|im_start|>tool\n<tool_response>\n84\n</tool_response><|im_end|>" in text
    assert (
        "calculator(expression): Evaluate an arithmetic expression." in text.split("<|im_end|>")[0]
    )

    encoded = tokenizer.apply_chat_template(
        messages,
        tools=[CALCULATOR],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    trained = [
        i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m
    ]
    assert (
        trained.count(tokenizer.eos_token_id) == 2
    )  # both assistant turns end in a trained <|im_end|>
    assert tokenizer.decode(trained).endswith("The answer is 84.<|im_end|>")


def test_tokenizer_encodes_any_text_exactly_and_digits_in_groups_of_three(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Zebra qüux 9871 'héllo' 🙂\n\t<tool_call> {\"x\": [1, 2]}"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # tool-call markers survive

    def pieces(number: str) -> list[str]:
        return [tokenizer.decode([i]) for i in tokenizer(number)["input_ids"]]

    # Every group is one token, even those the corpus never contained.
    assert pieces("9871") == ["987", "1"]
    assert pieces("100050") == ["100", "050"]
    assert pieces("3.07") == ["3", ".", "07"]


def test_single_digit_tokenizer_splits_numbers_one_digit_per_token(corpus):
    from autoretrain.training.base_model import build_tokenizer

    tokenizer = build_tokenizer(corpus, digits="single")
    assert [tokenizer.decode([i]) for i in tokenizer("9871")["input_ids"]] == ["9", "8", "7", "1"]
    with pytest.raises(ValueError, match="digits must be"):
        build_tokenizer(corpus, digits="pairs")


def test_same_corpus_and_seed_give_the_same_weights(tmp_path, corpus):
    from safetensors.torch import load_file

    size = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    a = build_untrained_model(tmp_path / "a", corpus, seed=3, **size)
    b = build_untrained_model(tmp_path / "b", corpus, seed=3, **size)
    c = build_untrained_model(tmp_path / "c", corpus, seed=4, **size)
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert any((wa[k] != wc[k]).any() for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
