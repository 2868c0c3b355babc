"""From fine-tuning JSONL to packed, loss-masked training rows.

The loss covers assistant tokens only, taken from the chat template's `{% generation %}` mask.
Two guards stop a run before it wastes time or produces a model that never stops talking: a
template without generation markers, and an assistant span that does not contain the
end-of-turn token. Assistant turns with `weight: 0` (failed attempts that were recovered) are
masked out; the conversation around them still gives context.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
MAX_REPORTED_ERRORS = 20


class DatasetError(ValueError):
    """The dataset cannot be trained on; the message names the file and line."""


class LossMaskError(ValueError):
    """The chat template cannot give an assistant-only loss that trains the end-of-turn token."""


@dataclass(frozen=True)
class Example:
    messages: list[dict]
    tools: list[dict] | None
    source: str  # "file:line", for error messages


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    trained: list[int]  # 1 where the token is a target of the loss

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


# ---------------------------------------------------------------------------- reading and checks


def read_jsonl(path: Path) -> list[Example]:
    """Read and check one JSONL file; every problem is reported with its line, then refused."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    examples: list[Example] = []
    errors: list[str] = []
    text = path.read_text(encoding="utf-8-sig")  # Azure-bound files carry a BOM
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        problem = _problem(record)
        if problem:
            errors.append(f"{where}: {problem}")
        else:
            examples.append(Example(record["messages"], record.get("tools") or None, where))
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
        more = f"\n  … and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > 20 else ""
        raise DatasetError(f"{path}: {len(errors)} invalid line(s):\n  {shown}{more}")
    return examples


def _problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object"
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    tools = record.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        return "'tools' must be a list of tool specs"
    call_ids: set[str] = set()
    trainable = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{i}].role {role!r} is not one of {sorted(ROLES)}"
        content = message.get("content")
        calls = message.get("tool_calls") or []
        if content is not None and not isinstance(content, str):
            return f"messages[{i}].content must be a string or null"
        if role == "assistant":
            if not content and not calls:
                return f"messages[{i}]: assistant message has neither content nor tool_calls"
            for j, call in enumerate(calls):
                problem = _call_problem(call)
                if problem:
                    return f"messages[{i}].tool_calls[{j}]: {problem}"
                call_ids.add(call["id"])
            weight = message.get("weight", 1)
            if weight not in (0, 1):
                return f"messages[{i}].weight must be 0 or 1, not {weight!r}"
            trainable += weight
        elif content is None:
            return f"messages[{i}]: {role} message has no content"
        if role == "tool" and message.get("tool_call_id") not in call_ids:
            return f"messages[{i}]: tool_call_id {message.get('tool_call_id')!r} matches no earlier call"
    if not trainable:
        return "no assistant message to train on (none, or all with weight 0)"
    return None


def _call_problem(call: object) -> str | None:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return "expected {id, type: 'function', function: {name, arguments}}"
    if not isinstance(call.get("id"), str):
        return "missing 'id'"
    function = call["function"]
    if not isinstance(function.get("name"), str) or not function["name"]:
        return "function.name must be a non-empty string"
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        return "function.arguments must be a JSON string (not an object)"
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError:
        return "function.arguments is not valid JSON"
    if not isinstance(parsed, dict):
        return "function.arguments must encode a JSON object"
    return None


def load_splits(
    dataset_dir: Path, mix_in: Sequence[str | Path] = ()
) -> tuple[list[Example], list[Example]]:
    """The dataset's train split (plus any mix-in files) and its eval split (may be empty)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: dataset folder not found")
    train = read_jsonl(dataset_dir / "train.jsonl")
    for extra in mix_in:
        train += read_jsonl(Path(extra))
    eval_path = dataset_dir / "eval.jsonl"
    evaluation = read_jsonl(eval_path) if eval_path.exists() else []
    if not train:
        raise DatasetError(f"{dataset_dir / 'train.jsonl'}: no examples to train on")
    return train, evaluation


# ----------------------------------------------------------------------------------- loss mask


def end_of_turn_ids(tokenizer, generation_eos: int | list[int] | None = None) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos:
        ids.update(generation_eos)
    return ids


def check_template(tokenizer, where: str = "the tokenizer") -> None:
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise LossMaskError(f"{where} has no chat template; assistant-only loss needs one")
    if not _GENERATION_TAG.search(template):
        raise LossMaskError(
            f"the chat template of {where} has no {{% generation %}} markers, so the assistant "
            "tokens cannot be told apart and the loss would cover every token (or none). "
            "Use a template that wraps each assistant turn, end-of-turn token included, in "
            "{% generation %}…{% endgeneration %}."
        )


def encode(tokenizer, example: Example, stop_ids: set[int]) -> Encoded:
    """Tokenize one conversation with its assistant-only loss mask, applying `weight: 0`."""
    out = tokenizer.apply_chat_template(
        example.messages,
        tools=example.tools,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    spans = _runs(mask)
    assistant = [m for m in example.messages if m["role"] == "assistant"]
    weights = [m.get("weight", 1) for m in assistant]
    if not spans:
        raise LossMaskError(f"{example.source}: the chat template marked no assistant tokens")
    if len(spans) != len(assistant):
        if 0 in weights:
            raise LossMaskError(
                f"{example.source}: the template marks {len(spans)} assistant span(s) for "
                f"{len(assistant)} assistant message(s), so per-message weights cannot be applied"
            )
        weights = [1] * len(spans)
    trained = [0] * len(ids)
    for (start, stop), weight in zip(spans, weights, strict=True):
        if not stop_ids.intersection(ids[start:stop]):
            raise LossMaskError(
                f"{example.source}: an assistant span does not contain the end-of-turn token "
                f"(ids {sorted(stop_ids)}); a model trained this way never learns to stop. Put the "
                "end-of-turn token inside {% generation %}…{% endgeneration %}."
            )
        if weight:
            trained[start:stop] = [1] * (stop - start)
    return Encoded(ids, trained)


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


def encode_all(
    tokenizer, examples: Iterable[Example], stop_ids: set[int], max_seq_len: int
) -> tuple[list[Encoded], int]:
    """Encode every example; those longer than `max_seq_len` are dropped (cutting one would
    train a truncated answer) and counted."""
    kept, too_long = [], 0
    for example in examples:
        encoded = encode(tokenizer, example, stop_ids)
        if len(encoded) > max_seq_len:
            too_long += 1
        else:
            kept.append(encoded)
    return kept, too_long


# -------------------------------------------------------------------------------------- batches


@dataclass
class Batch:
    input_ids: list[list[int]]
    labels: list[list[int]]  # -100 where not trained
    position_ids: list[list[int]] | None  # packed rows restart positions at each conversation
    attention_mask: list[list[int]] | None  # unpacked rows mask their padding
    n_tokens: int  # real (non-padding) tokens


def pack_rows(examples: Sequence[Encoded], max_seq_len: int) -> list[list[Encoded]]:
    """First-fit decreasing: few rows, little padding. Attention never crosses conversations
    because position ids restart in each one: the trainer cuts the row there and attends within
    each conversation (`segment_attention.py`); a plain transformers forward builds the
    equivalent block-diagonal mask."""
    rows: list[list[Encoded]] = []
    room: list[int] = []
    for example in sorted(examples, key=len, reverse=True):
        n = len(example)  # once: the scan below runs over every open row (an epoch re-packs)
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append(example)
                room[i] -= n
                break
        else:
            rows.append([example])
            room.append(max_seq_len - n)
    return rows


def epoch_batches(
    examples: Sequence[Encoded],
    *,
    batch_size: int,
    max_seq_len: int,
    packing: bool,
    pad_id: int,
    seed: int,
    epoch: int,
) -> list[Batch]:
    """The batches of one epoch, in an order fixed by (seed, epoch), so a resumed run sees
    exactly the batches an uninterrupted one would."""
    order = list(examples)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if not packing:
        groups = [
            [[e] for e in order[i : i + batch_size]] for i in range(0, len(order), batch_size)
        ]
        return [_collate(group, pad_id, packed=False) for group in groups]
    rows = pack_rows(order, max_seq_len)
    random.Random(seed * 1_000_003 + epoch + 1).shuffle(rows)
    # Keep an optimizer step about `batch_size` conversations, as without packing.
    mean_len = sum(len(e) for e in order) / len(order)
    rows_per_batch = max(1, round(batch_size * mean_len / max_seq_len))
    return [
        _collate(rows[i : i + rows_per_batch], pad_id, packed=True)
        for i in range(0, len(rows), rows_per_batch)
    ]


def _collate(rows: list[list[Encoded]], pad_id: int, packed: bool) -> Batch:
    width = max(sum(len(e) for e in row) for row in rows)
    input_ids, labels, positions, attention = [], [], [], []
    n_tokens = 0
    for row in rows:
        ids: list[int] = []
        lab: list[int] = []
        pos: list[int] = []
        for e in row:
            ids += e.input_ids
            # Nothing predicts a conversation's first token; in a packed row the previous
            # conversation's last token would, so it is never a target.
            lab += [-100] + [
                t if m else -100 for t, m in zip(e.input_ids[1:], e.trained[1:], strict=True)
            ]
            pos += list(range(len(e)))
        n_tokens += len(ids)
        pad = width - len(ids)
        attention.append([1] * len(ids) + [0] * pad)
        input_ids.append(ids + [pad_id] * pad)
        labels.append(lab + [-100] * pad)
        pos += list(range(pad))  # padding forms its own block, attended by nothing real
        positions.append(pos)
    return Batch(
        input_ids,
        labels,
        positions if packed else None,
        None if packed else attention,
        n_tokens,
    )
