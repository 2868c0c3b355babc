"""Token counts for examples: the target model's tokenizer when one is given, otherwise a
whitespace estimate that says it is one (`method == "whitespace_estimate"`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WHITESPACE_ESTIMATE = "whitespace_estimate"


def example_text(record: dict[str, Any], tool_specs: Any = None) -> str:
    """Everything the model reads or writes in an example, as plain text. `tool_specs` (the
    builder's curation.tool_specs.ToolSpecs) has the tools' JSON already encoded."""
    parts: list[str] = []
    for message in record.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            parts.append(str(fn.get("name", "")))
            parts.append(str(fn.get("arguments", "")))
    if record.get("tools"):
        encoded = tool_specs.encoded(record["tools"], sort_keys=False) if tool_specs else None
        parts.append(encoded or json.dumps(record["tools"], ensure_ascii=False))
    return "\n".join(parts)


class TokenCounter:
    """Counts tokens per example. Build with `TokenCounter.load(tokenizer_dir)`."""

    def __init__(self, tokenizer: Any | None = None, source: str | None = None):
        self.tokenizer = tokenizer
        self.method = f"tokenizer:{source}" if tokenizer is not None else WHITESPACE_ESTIMATE
        self.template_fallbacks = 0

    @classmethod
    def load(cls, tokenizer_dir: Path | str | None) -> TokenCounter:
        if not tokenizer_dir:
            return cls()
        path = Path(tokenizer_dir)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {path} does not exist; set dataset.tokenizer_dir to a "
                "folder saved with save_pretrained, or leave it empty for a whitespace estimate"
            )
        from transformers import AutoTokenizer  # heavy: only when a tokenizer is asked for

        return cls(AutoTokenizer.from_pretrained(str(path)), source=str(path))

    def count(self, record: dict[str, Any], tool_specs: Any = None) -> int:
        if self.tokenizer is None:
            return len(example_text(record, tool_specs).split())
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{k: v for k, v in m.items() if k != "weight"} for m in record["messages"]]
            try:
                ids = self.tokenizer.apply_chat_template(
                    messages, tools=record.get("tools"), tokenize=True, return_dict=False
                )
                return len(ids)
            except Exception as exc:  # a template that cannot render this example
                self.template_fallbacks += 1
                log.debug("chat template failed (%s); counting plain text instead", exc)
        text = example_text(record, tool_specs)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
