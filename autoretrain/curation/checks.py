"""The gates a written dataset version must pass before anything trains on it.

Each check reads the files as written (not the builder's own bookkeeping) where it can, so a
builder bug cannot vouch for itself: evaluation-instance leakage is proven by re-hashing each
example's system and user prompt, the way the catalog hashes an instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoretrain.curation.manifest import EVAL, MANIFEST, TRAIN
from autoretrain.curation.scan import scan_dataset
from autoretrain.curation.validate import ValidationReport, validate_file
from autoretrain.scenarios import prompt_hash

OPENAI_MIN_EXAMPLES = 10  # both OpenAI and Azure refuse a training file with fewer


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    blocking: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


def _examples(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8-sig")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _prompt_hash(example: dict[str, Any]) -> str | None:
    messages = example.get("messages") or []
    if (
        len(messages) < 2
        or messages[0].get("role") != "system"
        or messages[1].get("role") != "user"
    ):
        return None
    return prompt_hash(messages[0].get("content") or "", messages[1].get("content") or "")


def check_dataset(
    dataset_dir: Path,
    evaluation_hashes: set[str],
    eval_scenario_ids: set[str],
    *,
    min_examples_per_category: int,
    extra_secret_patterns: list[str] | tuple[str, ...] = (),
) -> list[CheckOutcome]:
    manifest = json.loads((dataset_dir / MANIFEST).read_text())
    files = {TRAIN: dataset_dir / TRAIN, EVAL: dataset_dir / EVAL}
    reports = {name: validate_file(path) for name, path in files.items()}
    # Each example's prompt hash, in file order (None for an example without a system and a
    # user prompt): both the split check and the leakage check read them.
    prompts = {name: [_prompt_hash(e) for e in _examples(path)] for name, path in files.items()}
    return [
        _dataset_validates(reports),
        _splits_disjoint(manifest, prompts, eval_scenario_ids),
        _no_evaluation_instances(prompts, evaluation_hashes),
        _no_secrets(dataset_dir, extra_secret_patterns),
        _enough_examples(manifest, reports),
        _examples_per_category(manifest, min_examples_per_category),
    ]


def _dataset_validates(reports: dict[str, ValidationReport]) -> CheckOutcome:
    # Tool-aware: every called tool must be declared in the example's `tools` (examples that
    # answer without tools, e.g. a declined request, legitimately have none).
    return CheckOutcome(
        "dataset_validates",
        all(r.ok for r in reports.values()),
        "Every line is a valid, tool-aware OpenAI chat fine-tuning example.",
        metadata={
            name: {"examples": r.n_examples, "errors": r.errors[:10]} for name, r in reports.items()
        },
    )


def _splits_disjoint(
    manifest: dict[str, Any], prompts: dict[str, list[str | None]], eval_scenario_ids: set[str]
) -> CheckOutcome:
    # The split is by instance, stratified by scenario (curation/split.py): a scenario has
    # instances on both sides, and no prompt may. Proven on the files: each example's system
    # and user prompt, hashed as the catalog hashes an instance.
    shared = sorted((set(prompts[TRAIN]) & set(prompts[EVAL])) - {None})
    split = manifest.get("split", {})
    eval_in_data = sorted(
        (set(split.get("train_scenarios", [])) | set(split.get("eval_scenarios", [])))
        & eval_scenario_ids
    )
    return CheckOutcome(
        "splits_disjoint",
        not shared and not eval_in_data,
        "No prompt is in both splits, and no held-out evaluation scenario is in either.",
        metadata={"prompts_in_both": shared[:20], "heldout_scenarios_present": eval_in_data},
    )


def _no_evaluation_instances(
    prompts: dict[str, list[str | None]], evaluation_hashes: set[str]
) -> CheckOutcome:
    leaked: dict[str, list[int]] = {}
    for name, hashes in prompts.items():
        for line, h in enumerate(hashes, start=1):
            if h is not None and h in evaluation_hashes:
                leaked.setdefault(name, []).append(line)
    return CheckOutcome(
        "no_evaluation_instances",
        not leaked,
        "No example's prompt hashes to an evaluation instance (either tier).",
        metadata={
            "evaluation_hashes": len(evaluation_hashes),
            "leaked_lines": {k: v[:20] for k, v in leaked.items()},
        },
    )


def _no_secrets(
    dataset_dir: Path, extra_secret_patterns: list[str] | tuple[str, ...]
) -> CheckOutcome:
    # The scan shares no detection code with the scrubber that cleaned the examples, and reads
    # the manifest too (run ids, model names and exclusion details are copied into it).
    found = scan_dataset(dataset_dir, extra_secret_patterns)
    return CheckOutcome(
        "no_secrets",
        not any(found.values()),
        "An independent scan of train, eval and the manifest finds no secret or personal "
        "data (keys, tokens, passwords, e-mail, card and phone numbers, SSNs, IBANs).",
        metadata={
            name: [f"line {line}: {kind}" for line, kind in hits[:20]]
            for name, hits in found.items()
        },
    )


def _enough_examples(
    manifest: dict[str, Any], reports: dict[str, ValidationReport]
) -> CheckOutcome:
    counts = manifest.get("counts", {})
    n_train = int(counts.get("train", reports[TRAIN].n_examples))
    return CheckOutcome(
        "enough_examples",
        n_train >= OPENAI_MIN_EXAMPLES,
        f"At least {OPENAI_MIN_EXAMPLES} training examples (the fine-tuning APIs' minimum).",
        metadata={"train_examples": n_train, "eval_examples": int(counts.get("eval", 0))},
    )


def _examples_per_category(manifest: dict[str, Any], min_examples: int) -> CheckOutcome:
    counts = manifest.get("counts", {})
    below = counts.get("categories_below_minimum", [])
    return CheckOutcome(
        "examples_per_category",
        not below,
        f"Every category present has at least {min_examples} examples.",
        blocking=False,
        metadata={"below_minimum": below, "by_category": counts.get("by_category", {})},
    )
