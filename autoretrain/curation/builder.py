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
import re
import shutil
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from autoretrain.curation.dedup import content_hash
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
from autoretrain.curation.redact import MARKER, Redactor, compile_extra_patterns
from autoretrain.curation.scan import parts_are_plain, scan_decoded_line, scan_text
from autoretrain.curation.split import assign_splits
from autoretrain.curation.tokens import TokenCounter
from autoretrain.curation.tool_specs import ToolSpecs
from autoretrain.curation.validate import validate_record
from autoretrain.parallel import ordered_map, workers_for
from autoretrain.runs.schema import Run
from autoretrain.settings import DatasetSettings, PromotionGates

log = logging.getLogger(__name__)

# The effective decision (a human's over the guard's, see runs/review.py) that lets a run in.
INCLUDED_DECISIONS = frozenset({"promote"})
BOM = b"\xef\xbb\xbf"


class LeakageError(RuntimeError):
    """An evaluation instance or scenario reached a written file. A bug, never bad input."""


@dataclass(slots=True)
class _Kept:
    """An example that passed every check: its line waits in the spool file, and only what
    the ordering, deduplication, split and manifest need stays in memory."""

    run_id: str
    split_key: str
    scenario_id: str | None
    instance_hash: str | None
    category: str
    model: str
    agent_version: str
    digest: str  # normalised content hash (dedup)
    offset: int  # of the line in the spool
    length: int
    crc: int  # of the line as checked, verified when it is copied out of the spool
    tokens: int
    redactions: Counter[str] | None
    cleaned: Counter[str] | None


def build_dataset(
    runs: Iterable[Run | Mapping[str, Any] | str | bytes],
    *,
    out_root: Path,
    eval_hashes: set[str],
    eval_scenario_ids: set[str],
    config: DatasetSettings,
    gates: PromotionGates,
    manifest_extra: dict[str, Any] | None = None,
    decisions: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> DatasetVersion:
    """Write one dataset version under `out_root` and return it.

    `runs` are Run objects, raw records, or records as JSON text (a record that does not
    parse is excluded as `invalid_record`); they are read once, as a stream. With `decisions`
    (run_id → decision), only runs whose decision is in INCLUDED_DECISIONS are used; without
    it every run given is taken as selected. `config` is the dataset settings, `gates` the
    promotion gates the manifest records; `manifest_extra` (catalog_hash, source_model, …) is
    merged into the manifest.

    Each example's line is validated and secret-scanned once, as the exact bytes that will be
    written, then kept in an unlinked spool file beside the dataset, so memory holds a few
    fields per example, not the examples.
    """
    compile_extra_patterns(config.extra_secret_patterns)  # a bad pattern is a config error
    checker = _Checker(config, eval_hashes, eval_scenario_ids, decisions)
    counter = checker.counter
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_root, prefix=".spool-") as spool:
        n_input, kept, exclusions = _examples(runs, spool, checker, workers_for(config.workers))
        return _write_version(
            spool,
            kept,
            exclusions,
            n_input=n_input,
            out_root=out_root,
            counter=counter,
            eval_hashes=eval_hashes,
            eval_scenario_ids=eval_scenario_ids,
            config=config,
            gates=gates,
            extra=manifest_extra or {},
            now=now,
        )


class _Checker:
    """What turning one run into a checked line needs; one per process."""

    def __init__(
        self,
        config: Any,
        eval_hashes: set[str],
        eval_scenario_ids: set[str],
        decisions: Mapping[str, str] | None,
    ):
        self.config = config
        self.eval_hashes = eval_hashes
        self.eval_scenario_ids = eval_scenario_ids
        self.decisions = decisions
        self.counter = TokenCounter.load(config.tokenizer_dir)
        self.specs = ToolSpecs()  # tool specs repeat: scrubbed and encoded once (tool_specs.py)

    def check(
        self, raw: Run | Mapping[str, Any] | str | bytes, position: int
    ) -> Exclusion | tuple[_Kept, bytes]:
        """The run's kept entry (offset not yet known) and line, or why it is excluded."""
        config, specs = self.config, self.specs
        extra = config.extra_secret_patterns
        run, excluded = _admit(
            raw, position, self.eval_hashes, self.eval_scenario_ids, self.decisions
        )
        if excluded:
            return excluded
        assert run is not None
        result, line, redactor, parts = _convert(run, config.max_tool_output_chars, extra, specs)
        if isinstance(result, Exclusion):
            return result
        # The checks read the line that will be written, decoded once for both.
        decoded = json.loads(line)
        problems = validate_record(decoded)
        if problems:
            return Exclusion(run.run_id, "invalid_example", problems[0])
        plain = parts_are_plain(parts) if parts is not None and not extra else None
        residual = scan_decoded_line(line, decoded, extra, plain)
        if residual:
            # The scrubber and the scanner disagree (a secret split across JSON structure,
            # say): drop the example rather than write what the scan would flag.
            return Exclusion(run.run_id, "residual_secret", ", ".join(residual))
        count = self.counter.count(result.record, specs)
        if config.max_example_tokens is not None and count > config.max_example_tokens:
            detail = f"{count} tokens > {config.max_example_tokens} ({self.counter.method})"
            return Exclusion(run.run_id, "too_long", detail)
        data = line.encode("utf-8") + b"\n"
        kept = _Kept(
            run_id=result.run_id,
            split_key=result.split_key,
            scenario_id=result.scenario_id,
            instance_hash=result.instance_hash,
            category=result.category,
            model=result.model,
            agent_version=result.agent_version,
            digest=content_hash(result.record, specs),
            offset=-1,
            length=len(data),
            crc=zlib.crc32(data),
            tokens=count,
            redactions=redactor.counts or None,
            cleaned=result.cleaned or None,
        )
        return kept, data


def _examples(
    runs: Iterable[Run | Mapping[str, Any] | str | bytes],
    spool: IO[bytes],
    checker: _Checker,
    workers: int,
) -> tuple[int, list[_Kept], list[Exclusion]]:
    """Every run either becomes a checked line in the spool or an exclusion, in input order."""
    exclusions: list[Exclusion] = []
    kept: list[_Kept] = []
    interned: dict[str, str] = {}  # category, model, … repeat: one string object each

    def take(result: Exclusion | tuple[_Kept, bytes]) -> None:
        if isinstance(result, Exclusion):
            exclusions.append(result)
            return
        entry, data = result
        entry.scenario_id = _intern(interned, entry.scenario_id)
        entry.category = _intern(interned, entry.category)
        entry.model = _intern(interned, entry.model)
        entry.agent_version = _intern(interned, entry.agent_version)
        entry.offset = spool.tell()
        kept.append(entry)
        spool.write(data)

    n_input = 0
    # Past the first PARALLEL_AFTER runs, in worker processes (`dataset.workers`): a run's
    # checks do not depend on another's, and the lines are written in input order either way,
    # so the files are the same bytes (test_golden.py).
    for result in ordered_map(
        _check,
        checker,
        enumerate(runs, start=1),
        workers=workers,
        make_state=_Checker,
        # Inherited by forked workers (nothing copied), pickled for spawned ones.
        args=(checker.config, checker.eval_hashes, checker.eval_scenario_ids, checker.decisions),
    ):
        n_input += 1
        take(result)
    spool.flush()
    return n_input, kept, exclusions


def _check(
    checker: _Checker, item: tuple[int, Run | Mapping[str, Any] | str | bytes]
) -> Exclusion | tuple[_Kept, bytes]:
    position, raw = item
    return checker.check(raw, position)


def _intern(seen: dict[str, str], value: str | None) -> Any:
    return value if value is None else seen.setdefault(value, value)


def _write_version(
    spool: IO[bytes],
    kept: list[_Kept],
    exclusions: list[Exclusion],
    *,
    n_input: int,
    out_root: Path,
    counter: TokenCounter,
    eval_hashes: set[str],
    eval_scenario_ids: set[str],
    config: DatasetSettings,
    gates: PromotionGates,
    extra: dict[str, Any],
    now: datetime | None,
) -> DatasetVersion:
    # Run ids are random (uuid4), so they only break ties between identical lines: the order
    # the dataset is written in (which training reads) and the copy deduplication keeps (its
    # tool call ids may differ) must follow from the runs' content, or two builds from the
    # same runs played again would train two different candidates.
    kept.sort(
        key=lambda e: (
            e.scenario_id or "",
            e.split_key,
            e.instance_hash or "",
            e.digest,
            e.crc,
            e.run_id,
        )
    )
    examples, duplicates = _deduplicate(kept)
    exclusions += [
        Exclusion(e.run_id, "duplicate", f"same content as {first}") for e, first in duplicates
    ]
    examples, capped = _cap_categories(examples, config.max_examples_per_category)
    exclusions += [Exclusion(e.run_id, "category_cap", e.category) for e in capped]

    split_of = assign_splits(
        (e.split_key for e in examples),
        config.eval_ratio,
        groups={e.split_key: e.scenario_id or "" for e in examples},
    )
    parts: dict[str, list[_Kept]] = {"train": [], "eval": []}
    for example in examples:
        parts[split_of[example.split_key]].append(example)
    leakage = _leakage(parts, eval_hashes, eval_scenario_ids)

    version, final_dir = new_version_dir(out_root, now)
    staging = out_root / f".tmp-{version}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        written = {
            TRAIN: _write_jsonl(staging / TRAIN, parts["train"], spool, config.azure_bom),
            EVAL: _write_jsonl(staging / EVAL, parts["eval"], spool, config.azure_bom),
        }
        manifest = _manifest(
            version=version,
            now=now,
            staging=staging,
            written=written,
            parts=parts,
            split_of=split_of,
            n_input=n_input,
            exclusions=exclusions,
            counter=counter,
            leakage=leakage,
            config=config,
            gates=gates,
            extra=extra,
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


def _deduplicate(kept: list[_Kept]) -> tuple[list[_Kept], list[tuple[_Kept, str]]]:
    """As dedup.deduplicate, on the content hashes computed while checking."""
    seen: dict[str, str] = {}
    unique: list[_Kept] = []
    dropped: list[tuple[_Kept, str]] = []
    for example in kept:
        if example.digest in seen:
            dropped.append((example, seen[example.digest]))
        else:
            seen[example.digest] = example.run_id
            unique.append(example)
    return unique, dropped


def _admit(
    raw: Run | Mapping[str, Any] | str | bytes,
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
            if isinstance(raw, str | bytes):
                run = Run.model_validate_json(raw)
            else:
                run = Run.model_validate(raw)
        except ValidationError as exc:
            run_id = _run_id_of(raw)
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


def _run_id_of(raw: Mapping[str, Any] | str | bytes) -> Any:
    if isinstance(raw, Mapping):
        return raw.get("run_id")
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return record.get("run_id") if isinstance(record, dict) else None


def _convert(
    run: Run, max_chars: int, extra_patterns: list[str], specs: ToolSpecs | None = None
) -> tuple[Example | Exclusion, str, Redactor, list[str] | None]:
    """The example and its JSONL line (without the newline), or why there is none; and the
    JSON parts the line was joined from, when it was (see `_line`)."""
    redactor = Redactor(list(extra_patterns))
    try:
        result = run_to_example(run, max_chars, redactor, specs)
        if isinstance(result, Exclusion):
            return result, "", redactor, None
        line, parts = _line(result.record, specs)
        # Proves the record can be written: anything unencodable is excluded here, not
        # discovered halfway through a file.
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        return Exclusion(run.run_id, "invalid_unicode", str(exc)), "", redactor, None
    except Exception as exc:  # one strange run must not stop the build; it is counted
        # A run id can hold a secret: the log gets it scrubbed, as the manifest does.
        log.warning("run %s could not be converted: %r", redactor.redact(run.run_id), exc)
        return Exclusion(run.run_id, "conversion_error", repr(exc)[:300]), "", redactor, None
    return result, line, redactor, parts


def _cap_categories(examples: list[_Kept], cap: int | None) -> tuple[list[_Kept], list[_Kept]]:
    """At most `cap` examples per category, chosen by their content hash (unique after
    deduplication) so the choice follows from the runs' content, not their random ids, and is
    spread across scenarios rather than the alphabetically first ones."""
    if cap is None:
        return examples, []
    by_category: dict[str, list[_Kept]] = defaultdict(list)
    for example in examples:
        by_category[example.category].append(example)
    keep: set[str] = set()
    for group in by_category.values():
        ranked = sorted(group, key=lambda e: e.digest)
        keep.update(e.run_id for e in ranked[:cap])
    return [e for e in examples if e.run_id in keep], [e for e in examples if e.run_id not in keep]


def _leakage(
    parts: dict[str, list[_Kept]], eval_hashes: set[str], eval_scenario_ids: set[str]
) -> dict[str, int]:
    """Overlap between what is about to be written and evaluation; raises unless all zero."""
    every = [e for part in parts.values() for e in part]
    hashes = {e.instance_hash for e in every if e.instance_hash} & eval_hashes
    scenarios = {e.scenario_id for e in every if e.scenario_id} & eval_scenario_ids
    shared = {e.split_key for e in parts["train"]} & {e.split_key for e in parts["eval"]}
    if hashes or scenarios or shared:
        raise LeakageError(
            f"the dataset would contain evaluation instances {sorted(hashes)[:5]}, eval "
            f"scenarios {sorted(scenarios)[:5]} or instances in both splits {sorted(shared)[:5]}"
        )
    return {
        "eval_hashes_checked": len(eval_hashes),
        "eval_scenarios_checked": len(eval_scenario_ids),
        "evaluation_instances_written": len(hashes),
        "eval_scenarios_written": len(scenarios),
        "instances_in_both_splits": len(shared),
    }


def _line(record: dict[str, Any], specs: ToolSpecs | None = None) -> tuple[str, list[str] | None]:
    """The record's JSONL line, and, when the build's memo encoded its tool specs, the parts
    it was joined from (each message's JSON, then the tools'): the same text json.dumps
    writes for the whole record, whose parts the secret scan's gate reads one by one."""
    tools = specs.encoded(record.get("tools"), sort_keys=False) if specs else None
    messages = record.get("messages")
    if tools is None or list(record) != ["messages", "tools"] or type(messages) is not list:
        return json.dumps(record, ensure_ascii=False, separators=(", ", ": ")), None
    parts = [json.dumps(m, ensure_ascii=False, separators=(", ", ": ")) for m in messages]
    line = f'{{"messages": [{", ".join(parts)}], "tools": {tools}}}'
    parts.append(tools)
    return line, parts


def _write_jsonl(path: Path, examples: list[_Kept], spool: IO[bytes], bom: bool) -> str:
    """Copy the examples' checked lines out of the spool; returns the sha256 of the bytes
    written. A line that is not, byte for byte, the one that was checked stops the build."""
    digest = hashlib.sha256()
    fd = spool.fileno()
    with path.open("wb") as handle:
        if bom:
            handle.write(BOM)
            digest.update(BOM)
        for example in examples:
            data = os.pread(fd, example.length, example.offset)
            if len(data) != example.length or zlib.crc32(data) != example.crc:
                raise RuntimeError(
                    f"the spooled line of run {example.run_id} is not the one that was checked"
                )
            handle.write(data)
            digest.update(data)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _manifest(
    *,
    version: str,
    now: datetime | None,
    staging: Path,
    written: dict[str, str],
    parts: dict[str, list[_Kept]],
    split_of: dict[str, str],
    n_input: int,
    exclusions: list[Exclusion],
    counter: TokenCounter,
    leakage: dict[str, int],
    config: DatasetSettings,
    gates: PromotionGates,
    extra: dict[str, Any],
) -> dict[str, Any]:
    files = {TRAIN: staging / TRAIN, EVAL: staging / EVAL}
    # Every line was validated and secret-scanned, as the bytes written, before it went into
    # the spool, and came out of it unchanged (its CRC): a file whose bytes, read back, are
    # those lines is validated and scanned. The dataset checks scan the files again on their
    # own (curation/checks.py).
    digests = {name: file_digest(path) for name, path in files.items()}
    mismatched = [name for name in files if digests[name]["sha256"] != written[name]]
    if mismatched:
        raise RuntimeError(
            f"dataset {version} failed its own checks: {mismatched} read back differ from "
            "the checked lines written"
        )
    validation = {name: {"ok": True, "errors": []} for name in files}
    tokens = {name: [e.tokens for e in part] for name, part in parts.items()}
    every = [e for part in parts.values() for e in part]
    total_redactions: Counter[str] = Counter()
    cleaned: Counter[str] = Counter()
    for example in every:
        if example.redactions:
            total_redactions.update(example.redactions)
        if example.cleaned:
            cleaned.update(example.cleaned)
    categories = sorted({e.category for e in every})
    by_category = {
        name: dict(sorted(Counter(e.category for e in part).items()))
        for name, part in parts.items()
    }
    all_tokens = [t for part in tokens.values() for t in part]
    safe = _ManifestText(config.extra_secret_patterns)
    manifest: dict[str, Any] = {
        "format": "openai-chat-jsonl",
        "version": version,
        "created_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "encoding": "utf-8-sig" if config.azure_bom else "utf-8",
        "source_models": sorted({safe(e.model) for e in every}),
        "agent_versions": sorted({safe(e.agent_version) for e in every}),
        "git_commit": git_commit(),
        "catalog_hash": "unknown",
        "gates": gates.model_dump(mode="json"),
        "dataset_settings": _settings_record(config),
        "counts": {
            "input_runs": n_input,
            "train": len(parts["train"]),
            "eval": len(parts["eval"]),
            "excluded": len(exclusions),
            "by_category": {
                name: {safe(c): n for c, n in counts.items()}
                for name, counts in by_category.items()
            },
            "categories_below_minimum": [
                safe(c)
                for c in categories
                if sum(by_category[p].get(c, 0) for p in by_category)
                < config.min_examples_per_category
            ],
        },
        "exclusions": dict(sorted(Counter(x.reason for x in exclusions).items())),
        # Details quote the run (a tool name, an error message): scrubbed like the examples.
        "excluded_runs": [
            {"run_id": safe(x.run_id), "reason": x.reason, "detail": safe(x.detail)}
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
            # Instances of a scenario, stratified by scenario (curation/split.py): a scenario
            # is on both sides, an instance on one.
            "by": "instance",
            "eval_ratio": config.eval_ratio,
            "keys": {name: sum(s == name for s in split_of.values()) for name in parts},
            "train_scenarios": sorted({safe(e.scenario_id or e.split_key) for e in parts["train"]}),
            "eval_scenarios": sorted({safe(e.scenario_id or e.split_key) for e in parts["eval"]}),
        },
        "leakage": leakage,
        "instance_hashes": {
            name: sorted({safe(e.instance_hash) for e in part if e.instance_hash})
            for name, part in parts.items()
        },
        "run_ids": {name: [safe(e.run_id) for e in part] for name, part in parts.items()},
        # Line by line beside run_ids: which scenario each example plays (None: not from the
        # catalog), so a probe can withhold scenarios (training/phrasing_slice.py).
        "scenario_ids": {
            name: [None if e.scenario_id is None else safe(e.scenario_id) for e in part]
            for name, part in parts.items()
        },
        "files": digests,
        "validation": validation,
        # Every line written was scanned (above); a line the scan flagged after scrubbing was
        # excluded as `residual_secret`, so the files hold none.
        "secret_scan": {name: 0 for name in files},
    }
    # What a run supplied went through `safe` (scrubbed, then scanned); the `no_secrets` check
    # scans the whole manifest.json again, settings and paths included.
    manifest.update(safe.value(extra))
    return manifest


def _settings_record(config: Any) -> dict[str, Any]:
    """The dataset settings as the manifest records them. Extra secret patterns are recorded
    by digest: a pattern can be a literal (a customer's id) that would match itself, and the
    scan reads the manifest too. How many processes built it is not a property of the data."""
    record = config.model_dump(mode="json", exclude={"workers"})
    record["extra_secret_patterns"] = [
        "sha256:" + hashlib.sha256(p.encode("utf-8")).hexdigest()[:16]
        for p in config.extra_secret_patterns
    ]
    return record


# A lower-case hex id with a letter in it (uuid4().hex, a digest): no builtin rule of either
# side can match one (each needs an upper-case letter, a character outside 0-9a-f, or digits
# no letter touches), so the many run ids and instance hashes skip both.
_HEX_ID = re.compile(r"(?=[0-9]*[a-f])[0-9a-f]{8,128}")


class _ManifestText:
    """Strings a run supplied (run id, model, agent version, scenario, category, exclusion
    details) on their way into the manifest: scrubbed like the examples, and, where the
    independent scan still finds something, replaced whole by a marker. So a secret in a run's
    `model` or `run_id` is never copied into manifest.json."""

    def __init__(self, extra_patterns: list[str]):
        self.redactor = Redactor(list(extra_patterns))
        self.extra = tuple(extra_patterns)
        self.seen: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        if not isinstance(text, str) or (not self.extra and _HEX_ID.fullmatch(text)):
            return text
        done = self.seen.get(text)
        if done is None:
            done = self.redactor.redact(text)
            found = scan_text(done, self.extra)
            if found:
                done = MARKER.format(kind=min(found))
            if len(self.seen) < 1_000_000:
                self.seen[text] = done
        return done

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value
