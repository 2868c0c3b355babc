"""A candidate trained as a hosted fine-tune (Azure OpenAI), resumable and cancellable.

A hosted job runs for hours outside this process, so the job id is written down the moment
the service accepts the job (`<models>/hosted/<version>/job.json`, atomically): a run that
crashes, is killed or is re-materialized attaches to the same job instead of submitting (and
paying for) a second one. A job that already ended is not polled again: its recorded outcome is
used. Interrupting the wait (Ctrl-C, a terminated Dagster run) cancels the job, so it stops
billing; a crash does not, and the next attempt re-attaches.

Only a succeeded job becomes a registered version (kind "hosted", its fine-tuned model id);
the record keeps the job's trained tokens and, with a configured price, its cost.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoretrain.training.backend import FineTuneBackend, FineTuneOutcome
from autoretrain.training.hosted import HostedFineTuneError

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


@dataclass
class HostedCandidate:
    version_id: str
    job_id: str
    outcome: FineTuneOutcome
    reattached: bool
    record: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def job_record(models_dir: Path, version_id: str) -> Path:
    return Path(models_dir) / "hosted" / version_id / JOB_FILE


def read_job(record: Path) -> dict[str, Any] | None:
    try:
        return json.loads(record.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise HostedFineTuneError(
            f"{record} is not valid JSON ({exc}); it names the hosted job of this candidate: "
            "repair it, or cancel the job by hand and delete the file to submit again"
        ) from exc


def _write(record: Path, data: dict[str, Any]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    partial.replace(record)


def train_hosted(
    backend: FineTuneBackend,
    dataset_dir: Path,
    base_model: str,
    version_id: str,
    models_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    timeout_s: float | None = None,
    price_per_1k_training_tokens: float | None = None,
) -> HostedCandidate:
    """Submit (or re-attach to) the candidate's hosted job and wait for its outcome."""
    record = job_record(models_dir, version_id)
    job = read_job(record)
    reattached = job is not None
    if job is None:
        job_id = backend.submit(Path(dataset_dir), base_model, dict(config or {}))
        job = {
            "version_id": version_id,
            "job_id": job_id,
            "backend": backend.name,
            "base_model": base_model,
            "dataset": str(dataset_dir),
            "submitted_at": datetime.now(UTC).isoformat(),
            "status": "submitted",
        }
        _write(record, job)  # before the long wait: a crash from here on re-attaches
    else:
        log.info("%s: re-attaching to job %s (%s)", backend.name, job["job_id"], record)
    if job.get("outcome"):
        outcome = FineTuneOutcome(**job["outcome"])
    else:
        outcome = _wait(backend, job["job_id"], timeout_s)
        job.update(status=outcome.status, outcome=outcome.to_dict())
        job["ended_at"] = datetime.now(UTC).isoformat() if outcome.status != "timeout" else None
        if outcome.status == "timeout":
            job.pop("outcome")  # still running at the service: the next attempt waits again
        _write(record, job)
    metrics = dict(outcome.metrics)
    tokens = metrics.get("trained_tokens")
    if tokens is not None and price_per_1k_training_tokens is not None:
        metrics["training_cost_usd"] = round(tokens / 1000 * price_per_1k_training_tokens, 6)
    return HostedCandidate(version_id, job["job_id"], outcome, reattached, record, metrics)


def _wait(backend: FineTuneBackend, job_id: str, timeout_s: float | None) -> FineTuneOutcome:
    try:
        return backend.wait(job_id, on_event=lambda line: log.info("%s", line), timeout_s=timeout_s)
    except BaseException as exc:
        # Ctrl-C, or Dagster terminating the run (its interrupt is a BaseException too): the
        # person or the orchestrator asked to stop, so the job stops billing.
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__.endswith("InterruptedError"):
            log.warning("interrupted: cancelling %s job %s", backend.name, job_id)
            backend.cancel(job_id)
        raise


def cancel_hosted(backend: FineTuneBackend, models_dir: Path, version_id: str) -> str:
    """Cancel the candidate's recorded job (`autoretrain train DATASET --backend azure --version VERSION --cancel`)."""
    record = job_record(models_dir, version_id)
    job = read_job(record)
    if job is None:
        raise HostedFineTuneError(f"no hosted job recorded for {version_id} ({record})")
    backend.cancel(job["job_id"])
    job.update(status="cancel requested", cancel_requested_at=datetime.now(UTC).isoformat())
    _write(record, job)
    return job["job_id"]
