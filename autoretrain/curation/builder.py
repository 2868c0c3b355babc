"""Build a fine-tuning dataset version from selected runs.

Selection (which runs are promotable) is the promotion guard's job; the builder takes the runs
it chose, and optionally their decisions, and turns them into train.jsonl, eval.jsonl and a
manifest. Nothing a run contains can crash a build: every run either becomes an example
(cleaned and scrubbed) or is excluded with a counted reason.

Leakage: a run from evaluation traffic, from an evaluation instance (its instance hash is in
`eval_hashes`) or from an eval scenario never enters either file, and the manifest records the
overlap computed on what was written (it is zero, or the build fails).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autoretrain.curation.dedup import deduplicate
from autoretrain.curation.examples import Example, Exclusion, run_to_example
from autoretrain.curation.manifest import (
    EVAL,
    MANIFEST,
    TRAIN,
    DatasetVersion,
    file_digest,
    git_commit,
    new_version_dir,
)
from autoretrain.curation.redact import (
    Redactor,
    compile_extra_patterns,
    scan_for_secrets,
    scan_line,
)
from autoretrain.curation.split import assign_splits
from autoretrain.curation.tokens import TokenCounter
from autoretrain.curation.validate import validate_file, validate_record
from autoretrain.runs.schema import Run
from autoretrain.settings import Settings

log = logging.getLogger(__name__)

# The effective decision (a human's over the guard's, see runs/review.py) that lets a run in.
INCLUDED_DECISIONS = frozenset({"promote"})
BOM = b"\xef\xbb\xbf"


class LeakageError(RuntimeError):
    """An evaluation instance or scenario reached a written file. A bug, never bad input."""


def build_dataset(
    runs: Iterable[Run | Mapping[str, Any]],
    *,
    out_root: Path,
    eval_hashes: set[str],
    eval_scenario_ids: set[str],
    settings: Settings,
    manifest_extra: dict[str, Any] | None = None,
    decisions: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> DatasetVersion:
    """Write one dataset version under `out_root` and return it.

    `runs` are Run objects or raw records (a record that does not parse is excluded as
    `invalid_record`). With `decisions` (run_id → decision), only runs whose decision is in
    INCLUDED_DECISIONS are used; without it every run given is taken as selected.
    `manifest_extra` (catalog_hash, source_model, …) is merged into the manifest.
    """
    config = settings.dataset
    compile_extra_patterns(config.extra_secret_patterns)  # a bad pattern is a config error
    counter = TokenCounter.load(config.tokenizer_dir)
    exclusions: list[Exclusion] = []
    examples: list[Example] = []
    tokens: dict[str, int] = {}
    redactions: dict[str, Counter[str]] = {}
    n_input = 0
    for raw in runs:
        n_input += 1
        run, excluded = _admit(raw, n_input, eval_hashes, eval_scenario_ids, decisions)
        if excluded:
            exclusions.append(excluded)
            continue
        assert run is not None
        result, redactor = _convert(run, config.max_tool_output_chars, config.extra_secret_patterns)
        if isinstance(result, Exclusion):
            exclusions.append(result)
            continue
        problems = validate_record(result.record)
        if problems:
            exclusions.append(Exclusion(run.run_id, "invalid_example", problems[0]))
            continue
        residual = scan_line(_line(result.record), config.extra_secret_patterns)
        if residual:
            # The scrubber and the scanner disagree (a secret split across JSON structure,
            # say): drop the example rather than write what the scan would flag.
            exclusions.append(Exclusion(run.run_id, "residual_secret", ", ".join(residual)))
            continue
        count = counter.count(result.record)
        if config.max_example_tokens is not None and count > config.max_example_tokens:
            detail = f"{count} tokens > {config.max_example_tokens} ({counter.method})"
            exclusions.append(Exclusion(run.run_id, "too_long", detail))
            continue
        examples.append(result)
        tokens[run.run_id] = count
        redactions[run.run_id] = redactor.counts

    examples.sort(key=lambda e: (e.split_key, e.instance_hash or "", e.run_id))
    examples, duplicates = deduplicate(examples)
    exclusions += [
        Exclusion(e.run_id, "duplicate", f"same content as {first}") for e, first in duplicates
    ]
    examples, capped = _cap_categories(examples, config.max_examples_per_category)
    exclusions += [Exclusion(e.run_id, "category_cap", e.category) for e in capped]

    split_of = assign_splits((e.split_key for e in examples), config.eval_ratio)
    parts: dict[str, list[Example]] = {"train": [], "eval": []}
    for example in examples:
        parts[split_of[example.split_key]].append(example)
    leakage = _leakage(parts, eval_hashes, eval_scenario_ids)

    out_root.mkdir(parents=True, exist_ok=True)
    version, final_dir = new_version_dir(out_root, now)
    staging = out_root / f".tmp-{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        for name, part in (("train", parts["train"]), ("eval", parts["eval"])):
            _write_jsonl(staging / (TRAIN if name == "train" else EVAL), part, config.azure_bom)
        manifest = _manifest(
            version=version,
            now=now,
            staging=staging,
            parts=parts,
            split_of=split_of,
            n_input=n_input,
            exclusions=exclusions,
            redactions=[redactions[e.run_id] for e in examples],
            tokens={name: [tokens[e.run_id] for e in part] for name, part in parts.items()},
            counter=counter,
            leakage=leakage,
            settings=settings,
            extra=manifest_extra or {},
        )
        (staging / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        staging.rename(final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "dataset %s: %d train, %d eval, %d excluded",
        version,
        len(parts["train"]),
        len(parts["eval"]),
        len(exclusions),
    )
    return DatasetVersion(
        path=final_dir,
        version=version,
        manifest=manifest,
        counts=manifest["counts"],
        exclusions=manifest["exclusions"],
        redactions=manifest["redactions"],
    )


def _admit(
    raw: Run | Mapping[str, Any],
    position: int,
    eval_hashes: set[str],
    eval_scenario_ids: set[str],
    decisions: Mapping[str, str] | None,
) -> tuple[Run | None, Exclusion | None]:
    """The run, or why it may not be used at all."""
    if isinstance(raw, Run):
        run = raw
    else:
        try:
            run = Run.model_validate(raw)
        except ValidationError as exc:
            run_id = raw.get("run_id") if isinstance(raw, Mapping) else None
            label = str(run_id) if run_id else f"<input #{position}>"
            return None, Exclusion(label, "invalid_record", str(exc).splitlines()[0])
    if decisions is not None:
        decision = decisions.get(run.run_id)
        if decision not in INCLUDED_DECISIONS:
            return None, Exclusion(run.run_id, "not_promoted", f"decision: {decision}")
    if run.traffic == "evaluation":
        return None, Exclusion(run.run_id, "evaluation_traffic")
    if run.instance_hash and run.instance_hash in eval_hashes:
        return None, Exclusion(run.run_id, "evaluation_instance", run.instance_hash)
    if run.scenario_id and run.scenario_id in eval_scenario_ids:
        return None, Exclusion(run.run_id, "eval_scenario", run.scenario_id)
    return run, None


def _convert(
    run: Run, max_chars: int, extra_patterns: list[str]
) -> tuple[Example | Exclusion, Redactor]:
    redactor = Redactor(list(extra_patterns))
    try:
        result = run_to_example(run, max_chars, redactor)
        if isinstance(result, Example):
            # Proves the record can be written: anything unencodable is excluded here, not
            # discovered halfway through a file.
            json.dumps(result.record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        return Exclusion(run.run_id, "invalid_unicode", str(exc)), redactor
    except Exception as exc:  # one strange run must not stop the build; it is counted
        log.warning("run %s could not be converted: %r", run.run_id, exc)
        return Exclusion(run.run_id, "conversion_error", repr(exc)[:300]), redactor
    return result, redactor


def _cap_categories(
    examples: list[Example], cap: int | None
) -> tuple[list[Example], list[Example]]:
    """At most `cap` examples per category, chosen by a hash of the run id so the choice is
    deterministic and spread across scenarios rather than the alphabetically first ones."""
    if cap is None:
        return examples, []
    by_category: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_category[example.category].append(example)
    keep: set[str] = set()
    for group in by_category.values():
        ranked = sorted(group, key=lambda e: hashlib.sha256(e.run_id.encode()).hexdigest())
        keep.update(e.run_id for e in ranked[:cap])
    return [e for e in examples if e.run_id in keep], [e for e in examples if e.run_id not in keep]


def _leakage(
    parts: dict[str, list[Example]], eval_hashes: set[str], eval_scenario_ids: set[str]
) -> dict[str, int]:
    """Overlap between what is about to be written and evaluation; raises unless all zero."""
    every = [e for part in parts.values() for e in part]
    hashes = {e.instance_hash for e in every if e.instance_hash} & eval_hashes
    scenarios = {e.scenario_id for e in every if e.scenario_id} & eval_scenario_ids
    shared = {e.split_key for e in parts["train"]} & {e.split_key for e in parts["eval"]}
    if hashes or scenarios or shared:
        raise LeakageError(
            f"the dataset would contain evaluation instances {sorted(hashes)[:5]}, eval "
            f"scenarios {sorted(scenarios)[:5]} or scenarios in both splits {sorted(shared)[:5]}"
        )
    return {
        "eval_hashes_checked": len(eval_hashes),
        "eval_scenarios_checked": len(eval_scenario_ids),
        "evaluation_instances_written": len(hashes),
        "eval_scenarios_written": len(scenarios),
        "scenarios_in_both_splits": len(shared),
    }


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def _write_jsonl(path: Path, examples: list[Example], bom: bool) -> None:
    with path.open("wb") as handle:
        if bom:
            handle.write(BOM)
        for example in examples:
            handle.write(_line(example.record).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _manifest(
    *,
    version: str,
    now: datetime | None,
    staging: Path,
    parts: dict[str, list[Example]],
    split_of: dict[str, str],
    n_input: int,
    exclusions: list[Exclusion],
    redactions: list[Counter[str]],
    tokens: dict[str, list[int]],
    counter: TokenCounter,
    leakage: dict[str, int],
    settings: Settings,
    extra: dict[str, Any],
) -> dict[str, Any]:
    config = settings.dataset
    files = {TRAIN: staging / TRAIN, EVAL: staging / EVAL}
    validation = {}
    secrets = {}
    for name, path in files.items():
        report = validate_file(path, max_tokens=None)
        # An empty eval split is legal (one scenario); errors here are a builder bug.
        validation[name] = {"ok": report.ok, "errors": report.errors[:20]}
        secrets[name] = scan_for_secrets(path, config.extra_secret_patterns)
    if any(not v["ok"] for v in validation.values()) or any(secrets.values()):
        # Every example passed both checks before it was written: this is a builder bug.
        raise RuntimeError(
            f"dataset {version} failed its own checks: validation {validation}, "
            f"secrets found {secrets}"
        )
    every = [e for part in parts.values() for e in part]
    total_redactions: Counter[str] = Counter()
    for counts in redactions:
        total_redactions.update(counts)
    cleaned: Counter[str] = Counter()
    for example in every:
        cleaned.update(example.cleaned)
    categories = sorted({e.category for e in every})
    by_category = {
        name: dict(sorted(Counter(e.category for e in part).items()))
        for name, part in parts.items()
    }
    all_tokens = [t for part in tokens.values() for t in part]
    scrub = Redactor(list(config.extra_secret_patterns))
    manifest: dict[str, Any] = {
        "format": "openai-chat-jsonl",
        "version": version,
        "created_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "encoding": "utf-8-sig" if config.azure_bom else "utf-8",
        "source_models": sorted({e.model for e in every}),
        "agent_versions": sorted({e.agent_version for e in every}),
        "git_commit": git_commit(),
        "catalog_hash": "unknown",
        "gates": settings.promotion_gates().model_dump(mode="json"),
        "dataset_settings": config.model_dump(mode="json"),
        "counts": {
            "input_runs": n_input,
            "train": len(parts["train"]),
            "eval": len(parts["eval"]),
            "excluded": len(exclusions),
            "by_category": by_category,
            "categories_below_minimum": [
                c
                for c in categories
                if sum(by_category[p].get(c, 0) for p in by_category)
                < config.min_examples_per_category
            ],
        },
        "exclusions": dict(sorted(Counter(x.reason for x in exclusions).items())),
        # Details quote the run (a tool name, an error message): scrubbed like the examples.
        "excluded_runs": [
            {"run_id": x.run_id, "reason": x.reason, "detail": scrub.redact(x.detail)}
            for x in sorted(exclusions, key=lambda x: (x.reason, x.run_id))
        ],
        "redactions": dict(sorted(total_redactions.items())),
        "cleaned": dict(sorted(cleaned.items())),
        "tokens": {
            "method": counter.method,
            "train": sum(tokens["train"]),
            "eval": sum(tokens["eval"]),
            "max_example": max(all_tokens, default=0),
            "template_fallbacks": counter.template_fallbacks,
        },
        "split": {
            "by": "scenario",
            "eval_ratio": config.eval_ratio,
            "train_scenarios": sorted(k for k, s in split_of.items() if s == "train"),
            "eval_scenarios": sorted(k for k, s in split_of.items() if s == "eval"),
        },
        "leakage": leakage,
        "instance_hashes": {
            name: sorted({e.instance_hash for e in part if e.instance_hash})
            for name, part in parts.items()
        },
        "run_ids": {name: [e.run_id for e in part] for name, part in parts.items()},
        "files": {name: file_digest(path) for name, path in files.items()},
        "validation": validation,
        "secret_scan": {name: len(found) for name, found in secrets.items()},
    }
    manifest.update(extra)
    return manifest
