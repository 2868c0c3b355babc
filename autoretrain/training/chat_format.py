"""The embedded model's chat format: Hermes/Qwen-style turns and tool calls.

`<|im_start|>role\\n…<|im_end|>\\n` turns; the tool list goes into the system turn as compact
signatures (`name(arg, …): description`: a full JSON schema per tool would triple the length of
every sequence a CPU-trained model sees, and the argument shapes are learned from the calls); an assistant
tool call is `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>`; a tool result is a
`tool` turn wrapped in `<tool_response>…</tool_response>`. Assistant spans sit inside
`{% generation %}` markers that *include* `<|im_end|>`: the end-of-turn token must be trained,
or the model never learns to stop (REFERENCE.md, training mechanics).
"""

from __future__ import annotations

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

# Control tokens that delimit turns: never produced by decoding ordinary text.
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
# Structural markers that a provider must see in decoded text to parse tool calls, so they are
# single tokens but not "special" (skip_special_tokens keeps them), as in Qwen's tokenizer.
MARKER_TOKENS = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE]

# An assistant message's tool calls after its content, one `<tool_call>` block each: the text the
# local provider parses (`providers/toolcalls.py`). The family templates (`templates.py`) use it too.
TOOL_CALLS_JINJA = (
    "{%- if message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- set call = tool_call.function if tool_call.function is defined else tool_call %}"
    '{{- \'<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' }}'
    "{%- if call.arguments is string %}{{- call.arguments }}"
    "{%- else %}{{- call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
)

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}"
    "{%- set fn = tool.function if tool.function is defined else tool %}"
    "{{- '\\n' + fn.name + '(' }}"
    "{%- if fn.parameters is defined and fn.parameters.properties is defined %}"
    "{{- fn.parameters.properties | list | join(', ') }}"
    "{%- endif %}"
    "{{- ')' }}{%- if fn.description %}{{- ': ' + fn.description }}{%- endif %}"
    "{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages and messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    + TOOL_CALLS_JINJA
    + "{{- '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render(
    messages: list[dict], tools: list[dict] | None = None, template: str = CHAT_TEMPLATE
) -> str:
    """Render one conversation to text without a tokenizer (used to build the tokenizer's corpus)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools or None, chat_template=template
    )
    return rendered[0]
