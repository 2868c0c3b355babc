import json

from autoretrain.providers.toolcalls import (
    ContentStream,
    arguments_as_objects,
    next_call_index,
    parse_tool_calls,
)


def test_one_call_becomes_openai_shape():
    text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>'
    parsed = parse_tool_calls(text)
    assert parsed.content is None
    assert parsed.notes == []
    assert parsed.tool_calls == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'},
        }
    ]
    assert parsed.message()["tool_calls"] == parsed.tool_calls


def test_several_calls_with_content_around_them_and_ids_continue_the_conversation():
    text = (
        "Let me check.\n"
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call> done'
    )
    parsed = parse_tool_calls(text, first_index=3)
    assert parsed.content == "Let me check.\n\n done"
    assert [c["id"] for c in parsed.tool_calls] == ["call_3", "call_4"]
    assert [c["function"]["name"] for c in parsed.tool_calls] == ["a", "b"]
    assert json.loads(parsed.tool_calls[1]["function"]["arguments"]) == {"x": 1}


def test_malformed_json_is_kept_with_raw_arguments_and_a_note():
    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 +</tool_call>'
    parsed = parse_tool_calls(text)
    [call] = parsed.tool_calls
    assert call["function"]["name"] == "calculator"
    assert (
        call["function"]["arguments"] == '{"name": "calculator", "arguments": {"expression": "2 +'
    )
    assert parsed.notes[0]["type"] == "tool_call_arguments_not_json"
    assert parsed.notes[0]["index"] == 0


def test_arguments_given_as_a_bad_string_are_kept_and_noted():
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": "x=1"}</tool_call>')
    assert parsed.tool_calls[0]["function"]["arguments"] == "x=1"
    assert parsed.notes[0]["type"] == "tool_call_arguments_not_json"


def test_garbage_without_tags_is_plain_content():
    text = "qz }{ calculator <tool 2 + ]]"
    parsed = parse_tool_calls(text)
    assert parsed.content == text
    assert parsed.tool_calls == []
    assert parsed.notes == []
    assert "tool_calls" not in parsed.message()


def test_a_call_cut_off_by_the_token_cap_stays_content_with_a_note():
    text = 'Sure. <tool_call>\n{"name": "calculator", "argum'
    parsed = parse_tool_calls(text)
    assert parsed.tool_calls == []
    assert parsed.content == text
    assert parsed.notes[0]["type"] == "tool_call_unterminated"


def test_a_complete_call_missing_its_closing_tag_is_still_a_call():
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')
    assert parsed.tool_calls[0]["function"]["name"] == "f"
    assert parsed.notes[0]["type"] == "tool_call_unterminated"


def test_next_call_index_skips_ids_already_used():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "call_0"}, {"id": "call_4"}]},
        {"role": "assistant", "tool_calls": [{"id": "other-id"}]},
    ]
    assert next_call_index(messages) == 5
    assert next_call_index([{"role": "user", "content": "x"}]) == 0
    foreign = [{"role": "assistant", "tool_calls": [{"id": "a"}, {"id": "b"}]}]
    assert next_call_index(foreign) == 2


def test_arguments_as_objects_decodes_json_strings_only():
    messages = [
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "1", "function": {"name": "f", "arguments": '{"a": 1}'}},
                {"id": "2", "function": {"name": "g", "arguments": "not json"}},
            ],
        }
    ]
    out = arguments_as_objects(messages)
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert out[0]["tool_calls"][1]["function"]["arguments"] == "not json"
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # not mutated


def test_content_parts_become_text_for_the_template():
    parts = [
        {"type": "text", "text": "What is "},
        {"type": "image_url"},
        {"type": "text", "text": "2?"},
    ]
    out = arguments_as_objects([{"role": "user", "content": parts}])
    assert out == [{"role": "user", "content": "What is 2?"}]


def feed_all(text: str, markers=("<|im_end|>",)) -> tuple[str, ContentStream]:
    gate = ContentStream(list(markers))
    return "".join(gate.feed(ch) for ch in text), gate


def test_content_stream_stops_at_a_tool_call_and_holds_back_partial_markers():
    text = 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>'
    sent, gate = feed_all(text)
    assert sent == "Let me check."
    assert gate.rest(parse_tool_calls(text.removesuffix("<|im_end|>")).content) == ""
    sent, gate = feed_all("The answer is 5.<|im_end|>")
    assert sent == "The answer is 5."
    sent, gate = feed_all("a <toast> b")  # looked like a tag for a while, then was not
    assert sent == "a <toast> b"
    sent, gate = feed_all("ends with space ")
    assert sent == "ends with space" and gate.rest("ends with space ") == " "
