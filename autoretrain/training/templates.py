"""Chat templates of common model families, with the assistant-span markers the trainer needs.

The trainer's loss covers assistant tokens only, from the mask that `{% generation %}` markers in
the chat template produce (`data.encode`). Published instruct models ship templates without
those markers, so fine-tuning one would stop at `data.check_template`. `ensure_generation_markers`
recognises the family a marker-less template belongs to by the control tokens its turns are made
of, and swaps in this module's template for that family: the same turn framing (a plain
conversation's prompt renders byte for byte as the reference template of the family renders it:
Qwen2, Qwen2.5, Qwen3, Llama 3.0, Mistral v0.1/v0.2, Phi-3.5, Gemma 2), with each assistant
turn, end-of-turn token included, inside `{% generation %}…{% endgeneration %}` (REFERENCE.md:
with `{% endgeneration %}` before the end-of-turn token the model never learns to stop). A
template of no known family is refused, naming what was looked for: training on every token, or
on none, would be silent and wrong.

Families: ChatML (Qwen2, Qwen2.5, Qwen3 and others on `<|im_start|>`), Llama 3
(`<|start_header_id|>` … `<|eot_id|>`), Mistral (`[INST]` … `[/INST]`, turns end with the eos
token), Phi-3 (`<|user|>` … `<|end|>`), Gemma (`<start_of_turn>` … `<end_of_turn>`).

What the replacement renders that a family's own template may render differently: tool
definitions and calls are Hermes/Qwen text (`<tool_call>{"name": …, "arguments": …}</tool_call>`,
which the local provider parses, see `providers/toolcalls.py`; Qwen's own template writes them
the same way), tool results are `<tool_response>` blocks in the family's tool (or user) turn,
reasoning traces (`reasoning_content`) are not rendered, and details of later revisions are not
reproduced (Llama 3.1's date preamble in the system turn, Mistral v0.3's `[INST]` spacing and
tool tokens). The tokenizer saved with the trained version carries the replacement, so the
served model is prompted as it was trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from autoretrain.training.chat_format import TOOL_CALLS_JINJA
from autoretrain.training.data import _GENERATION_TAG, LossMaskError, check_template

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------- shared pieces

# Hermes/Qwen2.5 tool instructions (the text the local provider's parser expects calls in).
_TOOLS_BLOCK = (
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>\' }}'
)


def _assistant_body(eot: str, trim: bool = False) -> str:
    """`{% generation %}` content, calls (the embedded model's Hermes/Qwen call text) and the
    end-of-turn token `{% endgeneration %}`; `trim` for families whose template trims."""
    content = "message.content | trim" if trim else "message.content"
    return (
        "{%- generation %}"
        f"{{%- if message.content %}}{{{{- {content} }}}}{{%- endif %}}"
        f"{TOOL_CALLS_JINJA}"
        f"{{{{- {eot} }}}}"
        "{%- endgeneration %}"
    )


def _system_text(default: str | None) -> str:
    """Jinja that sets `system` to the first system message, else `default` (or '')."""
    fallback = repr(default or "")
    return (
        "{%- if messages and messages[0].role == 'system' %}"
        "{%- set system = messages[0].content %}{%- set rest = messages[1:] %}"
        f"{{%- else %}}{{%- set system = {fallback} %}}{{%- set rest = messages %}}"
        "{%- endif %}"
    )


def _chatml(default_system: str | None) -> str:
    """Qwen2/2.5/3 ChatML: tool results grouped into one user turn, as Qwen's template does."""
    return (
        _system_text(default_system) + "{%- if tools %}"
        "{{- '<|im_start|>system\\n' }}{%- if system %}{{- system + '\\n\\n' }}{%- endif %}"
        + _TOOLS_BLOCK
        + "{{- '<|im_end|>\\n' }}"
        "{%- elif system %}{{- '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for message in rest %}"
        "{%- if message.role == 'assistant' %}"
        "{{- '<|im_start|>assistant\\n' }}" + _assistant_body("'<|im_end|>'") + "{{- '\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{%- if loop.first or rest[loop.index0 - 1].role != 'tool' %}"
        "{{- '<|im_start|>user' }}{%- endif %}"
        "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
        "{%- if loop.last or rest[loop.index0 + 1].role != 'tool' %}"
        "{{- '<|im_end|>\\n' }}{%- endif %}"
        "{%- else %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


def _llama3() -> str:
    header = "'<|start_header_id|>' + {role} + '<|end_header_id|>\\n\\n'"
    return (
        "{{- bos_token if bos_token else '' }}"
        + _system_text(None)
        + "{%- if system or tools %}"
        + "{{- "
        + header.format(role="'system'")
        + " }}{{- system | trim }}"
        "{%- if tools %}{%- if system %}{{- '\\n\\n' }}{%- endif %}" + _TOOLS_BLOCK + "{%- endif %}"
        "{{- '<|eot_id|>' }}"
        "{%- endif %}"
        "{%- for message in rest %}"
        "{%- if message.role == 'assistant' %}"
        "{{- "
        + header.format(role="'assistant'")
        + " }}"
        + _assistant_body("'<|eot_id|>'", trim=True)
        + "{%- elif message.role == 'tool' %}"
        "{{- "
        + header.format(role="'ipython'")
        + " + '<tool_response>\\n' + message.content + '\\n</tool_response><|eot_id|>' }}"
        "{%- else %}"
        "{{- " + header.format(role="message.role") + " + message.content | trim + '<|eot_id|>' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- "
        + header.format(role="'assistant'")
        + " }}{%- endif %}"
    )


def _mistral() -> str:
    """`[INST] … [/INST]` turns; an assistant turn ends with the eos token. The system prompt
    (and the tool list) open the first user turn, as Mistral's templates put them in an
    instruction."""
    return (
        "{{- bos_token if bos_token else '' }}"
        + _system_text(None)
        + "{%- set ns = namespace(first=true) %}"
        "{%- for message in rest %}"
        "{%- if message.role == 'user' %}"
        "{{- '[INST] ' }}"
        "{%- if ns.first %}"
        "{%- if system %}{{- system + '\\n\\n' }}{%- endif %}"
        "{%- if tools %}" + _TOOLS_BLOCK + "{{- '\\n\\n' }}{%- endif %}"
        "{%- set ns.first = false %}"
        "{%- endif %}"
        "{{- message.content + ' [/INST]' }}"
        "{%- elif message.role == 'assistant' %}"
        + _assistant_body("eos_token")
        + "{%- elif message.role == 'tool' %}"
        "{{- '[INST] <tool_response>\\n' + message.content + '\\n</tool_response> [/INST]' }}"
        "{%- endif %}"
        "{%- endfor %}"
    )


def _phi3() -> str:
    return (
        _system_text(None) + "{%- if system or tools %}{{- '<|system|>\\n' + system }}"
        "{%- if tools %}{%- if system %}{{- '\\n\\n' }}{%- endif %}" + _TOOLS_BLOCK + "{%- endif %}"
        "{{- '<|end|>\\n' }}{%- endif %}"
        "{%- for message in rest %}"
        "{%- if message.role == 'assistant' %}"
        "{{- '<|assistant|>\\n' }}" + _assistant_body("'<|end|>'") + "{{- '\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{{- '<|user|>\\n<tool_response>\\n' + message.content + '\\n</tool_response><|end|>\\n' }}"
        "{%- else %}"
        "{{- '<|' + message.role + '|>\\n' + message.content + '<|end|>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
    )


def _gemma() -> str:
    """Gemma has no system role: the system prompt (and tool list) open the first user turn."""
    return (
        "{{- bos_token if bos_token else '' }}"
        + _system_text(None)
        + "{%- set ns = namespace(first=true) %}"
        "{%- for message in rest %}"
        "{%- if message.role == 'assistant' %}"
        "{{- '<start_of_turn>model\\n' }}"
        + _assistant_body("'<end_of_turn>'", trim=True)
        + "{{- '\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{{- '<start_of_turn>user\\n<tool_response>\\n' + message.content"
        " + '\\n</tool_response><end_of_turn>\\n' }}"
        "{%- else %}"
        "{{- '<start_of_turn>user\\n' }}"
        "{%- if ns.first %}"
        "{%- if system %}{{- system + '\\n\\n' }}{%- endif %}"
        "{%- if tools %}" + _TOOLS_BLOCK + "{{- '\\n\\n' }}{%- endif %}"
        "{%- set ns.first = false %}"
        "{%- endif %}"
        "{{- message.content | trim + '<end_of_turn>\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
    )


# -------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    name: str
    signature: tuple[str, ...]  # every one appears in a template of this family
    end_of_turn: str | None  # the token that closes an assistant turn; None: the eos token
    template: str  # with generation markers

    def end_of_turn_token(self, tokenizer) -> str:
        return self.end_of_turn or tokenizer.eos_token


# Most specific first: a Qwen2.5 template is also ChatML.
FAMILIES: tuple[Family, ...] = (
    Family(
        "qwen2.5",
        ("<|im_start|>", "<|im_end|>", "created by Alibaba Cloud"),
        "<|im_end|>",
        _chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ),
    Family(
        "qwen2",
        ("<|im_start|>", "<|im_end|>", "You are a helpful assistant."),
        "<|im_end|>",
        _chatml("You are a helpful assistant."),
    ),
    Family("chatml", ("<|im_start|>", "<|im_end|>"), "<|im_end|>", _chatml(None)),
    Family("llama3", ("<|start_header_id|>", "<|eot_id|>"), "<|eot_id|>", _llama3()),
    Family("phi3", ("<|user|>", "<|assistant|>", "<|end|>"), "<|end|>", _phi3()),
    Family("gemma", ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>", _gemma()),
    Family("mistral", ("[INST]", "[/INST]"), None, _mistral()),
)


def detect_family(template: str) -> Family | None:
    for family in FAMILIES:
        if all(marker in template for marker in family.signature):
            return family
    return None


def family_template(name: str) -> str:
    for family in FAMILIES:
        if family.name == name:
            return family.template
    raise KeyError(f"no chat template family {name!r}; known: {[f.name for f in FAMILIES]}")


# ----------------------------------------------------------------------------------- the trainer

PROBE = [
    {"role": "system", "content": "probe system"},
    {"role": "user", "content": "probe question"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "probe_tool", "arguments": '{"x": 1}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_0", "content": "probe result"},
    {"role": "assistant", "content": "probe answer"},
]
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe_tool",
            "description": "a probe",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
        },
    }
]


def ensure_generation_markers(tokenizer, where: str = "the tokenizer") -> Family | None:
    """Make `tokenizer` give an assistant-only mask that trains the end-of-turn token.

    A template that already has `{% generation %}` markers is kept (None is returned; the
    trainer's own checks judge it). A marker-less template of a known family is replaced by the
    family's template with markers (the family is returned, so the caller can count its
    end-of-turn token as a stop token); any other template is refused with `LossMaskError`."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        check_template(tokenizer, where)  # raises, saying there is no template
    if _GENERATION_TAG.search(template):
        return None
    family = detect_family(template)
    if family is None:
        head = " ".join(template.split())[:160]
        raise LossMaskError(
            f"the chat template of {where} has no {{% generation %}} markers and is of no "
            f"family autoretrain knows ({', '.join(f.name for f in FAMILIES)}; recognised by "
            f"the control tokens {[list(f.signature[:2]) for f in FAMILIES]}), so the "
            "assistant tokens cannot be told apart and the loss would cover every token (or "
            f"none). Its template begins: {head!r}. Add {{% generation %}}…{{% endgeneration %}} "
            "around each assistant turn, end-of-turn token included (see "
            "docs/guides/own-model.md), in a copy of the model directory."
        )
    eot = family.end_of_turn_token(tokenizer)
    if eot is None or tokenizer.convert_tokens_to_ids(eot) in (None, tokenizer.unk_token_id):
        raise LossMaskError(
            f"{where}: its chat template is of the {family.name} family, whose assistant turns "
            f"end with {eot!r}, but the tokenizer has no such token"
        )
    tokenizer.chat_template = family.template
    _check_probe(tokenizer, family, where)
    log.warning(
        "%s: the chat template had no {%% generation %%} markers; training with autoretrain's "
        "%s template (assistant turns and %s marked), which is saved with the trained version",
        where,
        family.name,
        eot,
    )
    return family


def end_of_turn_ids(tokenizer, family: Family | None) -> set[int]:
    """The id of the family's end-of-turn token (empty when no family template was applied)."""
    if family is None:
        return set()
    return {tokenizer.convert_tokens_to_ids(family.end_of_turn_token(tokenizer))}


def _check_probe(tokenizer, family: Family, where: str) -> None:
    """The mask of a probe conversation: one span per assistant turn, each ending with the
    end-of-turn token, and none of the other turns' text."""
    out = tokenizer.apply_chat_template(
        PROBE,
        tools=PROBE_TOOLS,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    eot_id = tokenizer.convert_tokens_to_ids(family.end_of_turn_token(tokenizer))
    spans, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            spans.append(ids[start:i])
            start = None
    texts = [tokenizer.decode(span) for span in spans]
    problem = None
    if len(spans) != 2:
        problem = f"{len(spans)} assistant span(s) for 2 assistant turns"
    elif any(span[-1] != eot_id for span in spans):
        problem = "an assistant span does not end with the end-of-turn token"
    elif any(word in text for text in texts for word in ("probe system", "probe question")):
        problem = "a span covers another turn's text"
    elif "probe result" in "".join(texts) or "probe answer" not in texts[1]:
        problem = "the spans are not the assistant turns"
    if problem:
        raise LossMaskError(
            f"{where}: autoretrain's {family.name} template gave a wrong loss mask on a probe "
            f"conversation ({problem}); report it with the model's tokenizer_config.json"
        )
