"""The local provider on real tiny models built by the project's base-model code."""

import json

import pytest

from autoretrain.providers.base import ChatModel, Sampling
from autoretrain.providers.local import LocalChatModel
from autoretrain_tests.providers.tiny_models import AFTER_TOOL, ANSWER, QUESTION, TOOLS


@pytest.fixture(scope="module")
def tool_model(tool_model_dir) -> LocalChatModel:
    return LocalChatModel(tool_model_dir, name="tiny")


def test_generated_tool_call_comes_back_in_openai_shape(tool_model):
    assert isinstance(tool_model, ChatModel)
    reply = tool_model.chat(QUESTION, TOOLS)
    assert reply.finish_reason == "tool_calls"
    assert reply.message["content"] is None
    [call] = reply.message["tool_calls"]
    assert call["id"] == "call_0"
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2 + 3"}
    assert reply.model == "tiny"
    assert reply.prompt_tokens > 20 and reply.completion_tokens > 5


def test_answer_after_tool_result_and_call_ids_continue(tool_model):
    reply = tool_model.chat(AFTER_TOOL, TOOLS)
    assert reply.message == {"role": "assistant", "content": ANSWER}
    assert reply.finish_reason == "stop"


def test_batch_with_left_padding_matches_one_at_a_time(tool_model):
    # Different prompt lengths force padding; greedy rows must match unbatched generation.
    conversations = [QUESTION, AFTER_TOOL, QUESTION[1:], AFTER_TOOL]
    tools = [TOOLS, TOOLS, None, TOOLS]
    batched = tool_model.chat_batch(conversations, tools, Sampling(max_tokens=40))
    single = [
        tool_model.chat(c, t, Sampling(max_tokens=40))
        for c, t in zip(conversations, tools, strict=True)
    ]
    assert [b.message for b in batched] == [s.message for s in single]
    assert [b.completion_tokens for b in batched] == [s.completion_tokens for s in single]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in single]


def test_token_cap_gives_length(untrained_model_dir):
    model = LocalChatModel(untrained_model_dir)
    reply = model.chat(QUESTION, TOOLS, Sampling(max_tokens=9))
    assert reply.finish_reason == "length"
    assert reply.completion_tokens == 9


def test_random_model_garbage_is_content_not_tool_calls(untrained_model_dir):
    model = LocalChatModel(untrained_model_dir)
    reply = model.chat(QUESTION, TOOLS, Sampling(max_tokens=24))
    assert "tool_calls" not in reply.message
    assert isinstance(reply.message["content"], str) and reply.message["content"]


def test_sampling_is_reproducible_with_a_seed_and_varies_without(untrained_model_dir):
    model = LocalChatModel(untrained_model_dir)
    hot = Sampling(temperature=1.5, max_tokens=16, seed=7)
    first = model.chat_batch([QUESTION] * 3, [TOOLS] * 3, hot)
    again = model.chat_batch([QUESTION] * 3, [TOOLS] * 3, hot)
    assert [r.message for r in first] == [r.message for r in again]
    # Rows of one batch draw different samples from the random init's flat distribution.
    assert len({r.message["content"] for r in first}) > 1


def test_peft_adapter_on_top_of_a_model_dir(tool_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tool_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero adapter, so loading it must change the output
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0)
    peft_model.save_pretrained(tmp_path / "adapter")

    plain = LocalChatModel(tool_model_dir).chat(QUESTION, TOOLS, Sampling(max_tokens=12))
    adapted = LocalChatModel(tool_model_dir, tmp_path / "adapter", name="cand")
    by_dir = LocalChatModel(tmp_path / "adapter")  # base found from adapter_config.json
    reply = adapted.chat(QUESTION, TOOLS, Sampling(max_tokens=12))
    assert reply.message != plain.message
    assert by_dir.chat(QUESTION, TOOLS, Sampling(max_tokens=12)).message == reply.message
    assert by_dir.model_dir == tool_model_dir


def test_stream_yields_content_then_the_parsed_reply(tool_model):
    items = list(tool_model.stream(AFTER_TOOL, TOOLS))
    *pieces, final = items
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == ANSWER == final.message["content"]
    *pieces, final = tool_model.stream(QUESTION, TOOLS)
    assert pieces == []  # nothing but a tool call: no content goes out early
    assert final.finish_reason == "tool_calls"
    assert final.message == tool_model.chat(QUESTION, TOOLS).message
