"""Tool specs shared by many runs, scrubbed and encoded once per build.

Runs of one scenario (or one app) carry the same tool specs: scrubbing them run after run, and
encoding them again into each line, content hash and token text, was a fifth of a build's time
(bench/curation.py). A `ToolSpecs` memo belongs to one build (one redactor configuration): the
first run with a given set of specs scrubs it and records what that did (the redactions and
cleanings it counted); every later run with the same specs gets the same scrubbed list and has
the same counts added, so each run's example, counts and bytes are exactly what scrubbing it
alone gives.

The scrubbed list is shared between the examples of one build, which never change a record
after building it; the memo is not used outside the builder for that reason. Its JSON encodings
are kept beside it, found by the list's identity (the memo holds the list, so the identity
cannot be reused while the encoding is kept).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

# Bounded like the redactor's memo: emptied when this many distinct spec sets are held.
_MAX_ENTRIES = 4096


class ToolSpecs:
    def __init__(self) -> None:
        # specs as JSON text → (scrubbed specs, redactions counted, cleanings counted)
        self._by_key: dict[str, tuple[list[Any], Counter[str], Counter[str]]] = {}
        # id(scrubbed specs) → (the specs, {encoding: text})
        self._encoded: dict[int, tuple[list[Any], dict[str, str]]] = {}

    def scrubbed(
        self,
        tools: list[Any],
        scrub: Callable[[Counter[str], Counter[str]], list[Any]],
        redactions: Counter[str] | None,
        cleaned: Counter[str],
    ) -> list[Any]:
        """`scrub(redactions, cleaned)` on `tools`, once per distinct value: its counts are added
        to `redactions` and `cleaned` on every call, as a fresh scrub would add them. An
        exception from `scrub` (a malformed spec) propagates and nothing is kept."""
        try:
            # Exact JSON text is the key: equal text gives equal scrubbed output and counts
            # (keys are scrubbed as str(key), lists and tuples encode alike and are scrubbed
            # element by element).
            key = json.dumps(tools, ensure_ascii=False)
        except (TypeError, ValueError):  # not JSON (a Python-made run): no memo
            return scrub(redactions if redactions is not None else Counter(), cleaned)
        found = self._by_key.get(key)
        if found is None:
            counted: Counter[str] = Counter()
            cleaned_here: Counter[str] = Counter()
            specs = scrub(counted, cleaned_here)
            if len(self._by_key) >= _MAX_ENTRIES:
                self._by_key.clear()
                self._encoded.clear()
            found = (specs, counted, cleaned_here)
            self._by_key[key] = found
            self._encoded[id(specs)] = (specs, {})
        specs, counted, cleaned_here = found
        if redactions is not None:
            redactions.update(counted)
        cleaned.update(cleaned_here)
        return specs

    def encoded(self, specs: Any, sort_keys: bool) -> str | None:
        """`json.dumps(specs, ensure_ascii=False, sort_keys=sort_keys)` for specs this memo
        made, computed once; None for any other value."""
        entry = self._encoded.get(id(specs))
        if entry is None or entry[0] is not specs:
            return None
        texts = entry[1]
        name = "sorted" if sort_keys else "plain"
        text = texts.get(name)
        if text is None:
            text = texts[name] = json.dumps(specs, ensure_ascii=False, sort_keys=sort_keys)
        return text
