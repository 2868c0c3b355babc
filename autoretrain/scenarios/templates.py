"""The template mini-language: substitution plus a fixed set of string filters.

`{name}`, `{name.field}`, `{name|upper}`, `{{`/`}}` for literal braces (see docs/scenarios.md).
Nothing is ever evaluated as Python.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any


def _initials(text: str) -> str:
    return "".join(word[0].upper() for word in text.split())


FILTERS: dict[str, Callable[[str], Any]] = {
    "upper": str.upper,
    "lower": str.lower,
    "title": str.title,
    "capitalize": str.capitalize,
    "strip": str.strip,
    "reverse": lambda s: s[::-1],
    "reverse_words": lambda s: " ".join(reversed(s.split())),
    "sort_words": lambda s: " ".join(sorted(s.split())),
    "first_word": lambda s: (s.split() or [""])[0],
    "last_word": lambda s: (s.split() or [""])[-1],
    "initials": _initials,
    "snake": lambda s: "_".join(s.lower().split()),
    "word_count": lambda s: len(s.split()),
    "char_count": lambda s: len(s),
    "escape": re.escape,  # for a value placed inside a regex pattern
}

_PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)((?:\|[a-z_]+)*)\}"
)


class TemplateError(ValueError):
    pass


def placeholders(template: str) -> list[tuple[str, list[str]]]:
    """(name, filters) of each placeholder in `template`, in order."""
    found = []
    for match in _PLACEHOLDER.finditer(template):
        if match.group(1):
            filters = [f for f in (match.group(2) or "").split("|") if f]
            found.append((match.group(1), filters))
    return found


def _resolve(name: str, filters: list[str], env: dict[str, Any]) -> Any:
    head, *path = name.split(".")
    if head not in env:
        raise TemplateError(f"unknown name {{{name}}}; defined: {', '.join(sorted(env))}")
    value = env[head]
    for part in path:
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{{{name}}}: {head} has no field {part!r}")
        value = value[part]
    for filt in filters:
        if filt not in FILTERS:
            raise TemplateError(f"unknown filter {filt!r}; known: {', '.join(sorted(FILTERS))}")
        value = FILTERS[filt](_as_text(value))
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value == int(value) and math.isfinite(value):
        return str(int(value))
    return str(value)


def render_text(template: str, env: dict[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        filters = [f for f in (match.group(2) or "").split("|") if f]
        return _as_text(_resolve(match.group(1), filters, env))

    return _PLACEHOLDER.sub(substitute, template)


def render_value(template: Any, env: dict[str, Any]) -> Any:
    """Render strings inside a JSON-like structure. A string that is exactly one placeholder keeps
    the value's type, so `{"value": "{v}"}` becomes `{"value": 12.5}`, not `"12.5"`."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole and whole.group(1):
            filters = [f for f in (whole.group(2) or "").split("|") if f]
            return _resolve(whole.group(1), filters, env)
        return render_text(template, env)
    if isinstance(template, dict):
        return {key: render_value(value, env) for key, value in template.items()}
    if isinstance(template, list):
        return [render_value(item, env) for item in template]
    return template


def all_placeholders(template: Any) -> list[tuple[str, list[str]]]:
    if isinstance(template, str):
        return placeholders(template)
    if isinstance(template, dict):
        return [p for value in template.values() for p in all_placeholders(value)]
    if isinstance(template, list):
        return [p for item in template for p in all_placeholders(item)]
    return []


def normalized_template(template: str) -> str:
    """The template's shape: case, spacing, final punctuation and parameter names ignored, so
    'What is {x} plus {y}?' and 'what is {a}  plus {b}' count as the same template."""
    shape = _PLACEHOLDER.sub(lambda m: "{}" if m.group(1) else m.group(0), template)
    return re.sub(r"\s+", " ", shape.strip().lower()).rstrip(".?! ")
