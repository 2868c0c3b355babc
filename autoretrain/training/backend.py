"""One interface for every fine-tuning backend: local training and hosted fine-tunes alike.

A backend takes a dataset folder (`train.jsonl`, `eval.jsonl`, `manifest.json`) and a base model,
and returns a job id; `wait` turns the job into a `FineTuneOutcome`. Only a succeeded outcome
carries a `model_id`, so a failed, cancelled or timed-out job can never become a candidate.

`LocalBackend` wraps the local trainer (`lora.train`). Training on this machine is synchronous:
`submit` trains and records the outcome, `wait` hands it back (replaying its events).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

log = logging.getLogger(__name__)

Status = Literal["succeeded", "failed", "cancelled", "timeout"]
EventSink = Callable[[str], None]


@dataclass
class Backoff:
    """Pauses between polls: `initial_s`, growing by `factor` up to `max_s`."""

    initial_s: float = 5.0
    max_s: float = 60.0
    factor: float = 1.5

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


class BackendError(RuntimeError):
    """A backend cannot do what was asked (unknown job, bad dataset, service error)."""


@dataclass
class FineTuneOutcome:
    status: Status
    model_id: str | None = None  # set only when status is "succeeded"
    reason: str | None = None  # why it did not succeed; None on success
    events: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None

    def __post_init__(self) -> None:
        if self.status == "succeeded" and not self.model_id:
            raise ValueError("a succeeded fine-tune must name its model")
        if self.status != "succeeded" and self.model_id:
            raise ValueError(f"a {self.status} fine-tune has no model, got {self.model_id!r}")
        if self.status != "succeeded" and not self.reason:
            raise ValueError(f"a {self.status} fine-tune needs a reason")

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "model_id": self.model_id,
            "reason": self.reason,
            "events": list(self.events),
            "metrics": dict(self.metrics),
            "job_id": self.job_id,
        }


@runtime_checkable
class FineTuneBackend(Protocol):
    name: str

    def submit(self, dataset_dir: Path, base_model: str, config: dict) -> str: ...

    def wait(
        self,
        job_id: str,
        on_event: EventSink | None = None,
        timeout_s: float | None = None,
    ) -> FineTuneOutcome: ...

    def cancel(self, job_id: str) -> None: ...


def run_fine_tune(
    backend: FineTuneBackend,
    dataset_dir: Path,
    base_model: str,
    config: dict,
    *,
    on_event: EventSink | None = None,
    timeout_s: float | None = None,
    cancel_on_timeout: bool = True,
) -> FineTuneOutcome:
    """Submit and wait. A job still running at the timeout is cancelled (by default) so it does
    not keep billing; Ctrl-C cancels it too before the interrupt goes on."""
    job_id = backend.submit(Path(dataset_dir), base_model, config)
    try:
        outcome = backend.wait(job_id, on_event=on_event, timeout_s=timeout_s)
    except KeyboardInterrupt:
        log.warning("interrupted: cancelling %s job %s", backend.name, job_id)
        backend.cancel(job_id)
        raise
    if outcome.status == "timeout" and cancel_on_timeout:
        log.warning("%s job %s timed out: cancelling it", backend.name, job_id)
        backend.cancel(job_id)
        outcome.reason = f"{outcome.reason}; the job was cancelled"
    return outcome


class LocalBackend:
    """The local trainer behind the backend interface. `base_model` is a model directory; each
    job trains into `<models_dir>/<job id>` (never overwritten). `config` holds `TrainConfig`
    fields; unknown keys are an error, not silently ignored."""

    name = "local"

    def __init__(self, models_dir: Path, *, job_prefix: str = "local"):
        self.models_dir = Path(models_dir)
        self.job_prefix = job_prefix
        self._outcomes: dict[str, FineTuneOutcome] = {}

    def submit(self, dataset_dir: Path, base_model: str, config: dict) -> str:
        from autoretrain.training.config import TrainConfig
        from autoretrain.training.data import DatasetError
        from autoretrain.training.lora import TrainingError, train

        job_id = f"{self.job_prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        events: list[str] = []

        def note(message: str) -> None:
            events.append(message)
            log.info("%s: %s", job_id, message)

        unknown = set(config) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise BackendError(
                f"unknown training settings {sorted(unknown)}; known: "
                f"{sorted(TrainConfig.__dataclass_fields__)}"
            )
        train_config = TrainConfig(**config)
        output_dir = self.models_dir / job_id
        note(f"training {base_model} on {dataset_dir} into {output_dir}")
        try:
            result = train(Path(dataset_dir), Path(base_model), output_dir, train_config)
        except (TrainingError, DatasetError, OSError, ValueError) as exc:
            note(f"failed: {exc}")
            self._outcomes[job_id] = FineTuneOutcome(
                status="failed", reason=str(exc), events=events, job_id=job_id
            )
            return job_id
        except KeyboardInterrupt:
            note("cancelled by interrupt")
            self._outcomes[job_id] = FineTuneOutcome(
                status="cancelled", reason="interrupted (Ctrl-C)", events=events, job_id=job_id
            )
            raise
        metrics = dict(result.metrics)
        metrics.update(
            method=result.method,
            output_dir=str(result.output_dir),
            adapter_dir=str(result.adapter_dir) if result.adapter_dir else None,
            merged_dir=str(result.merged_dir) if result.merged_dir else None,
        )
        note(f"succeeded: {result.method} model in {result.model_dir}")
        self._outcomes[job_id] = FineTuneOutcome(
            status="succeeded",
            model_id=str(result.model_dir),
            events=events,
            metrics=metrics,
            job_id=job_id,
        )
        return job_id

    def wait(
        self,
        job_id: str,
        on_event: EventSink | None = None,
        timeout_s: float | None = None,
    ) -> FineTuneOutcome:
        outcome = self._outcome(job_id)
        if on_event:
            for event in outcome.events:
                on_event(event)
        return outcome

    def cancel(self, job_id: str) -> None:
        # Local jobs finish inside submit(): by the time anyone can cancel, there is nothing
        # running. Cancelling a finished job changes nothing, as with the hosted services.
        outcome = self._outcome(job_id)
        log.info("local job %s already finished (%s): nothing to cancel", job_id, outcome.status)

    def _outcome(self, job_id: str) -> FineTuneOutcome:
        try:
            return self._outcomes[job_id]
        except KeyError:
            raise BackendError(
                f"unknown local job {job_id!r}: this backend ran {sorted(self._outcomes) or 'none'}"
            ) from None
