"""Hosted fine-tunes: Azure OpenAI and the OpenAI API, which share one shape, via the `openai` client.

A job goes: upload `train.jsonl` and `eval.jsonl` (purpose "fine-tune"), wait until the service
has processed both files, create the job (base model, suffix, seed, hyperparameters), then poll
it with growing pauses, streaming its events into the log, until it is succeeded, failed or
cancelled. Only a succeeded job yields a model id (`fine_tuned_model`); a failed or cancelled one
yields the service's reason and no candidate.

Azure wants the training files in UTF-8 with a byte-order mark; the Azure backend adds one when a
file lacks it (the bytes on disk are not changed). OpenAI has been winding down its self-serve
fine-tuning while Azure OpenAI continues (REFERENCE.md), which is why this sits behind the shared
`FineTuneBackend` interface.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoretrain.training.backend import BackendError, Backoff, EventSink, FineTuneOutcome

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
MIN_EXAMPLES = 10  # the services refuse fewer
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_SUFFIX_CHARS = 64
BOM = b"\xef\xbb\xbf"
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
CONFIG_KEYS = {"suffix", "seed", "hyperparameters", *HYPERPARAMETERS}
# Consecutive failed polls (network, 429, 5xx) tolerated before a wait gives up: a job runs for
# hours, and one bad minute on the network should not abandon it.
MAX_POLL_FAILURES = 5


class HostedFineTuneError(BackendError):
    """The service refused or could not be reached; the message says what, where and what to do."""


class HostedBackend:
    """A fine-tuning backend over an `openai.OpenAI` or `openai.AzureOpenAI` client."""

    def __init__(
        self,
        client: Any,
        *,
        name: str = "azure_openai",
        backoff: Backoff | None = None,
        file_timeout_s: float = 3600.0,
        add_bom: bool | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.name = name
        self.backoff = backoff or Backoff()
        self.file_timeout_s = file_timeout_s
        self.add_bom = name == "azure_openai" if add_bom is None else add_bom
        self._sleep = sleep
        self._clock = clock
        self._cancelled_here: set[str] = set()

    @classmethod
    def from_profile(
        cls,
        profile: Any,
        *,
        credential: Any = None,
        use_entra_id: bool = True,
        **kwargs: Any,
    ) -> HostedBackend:
        """A backend for a provider profile of kind `azure_openai` (Entra ID first, then the key
        from `api_key_env`) or `openai_compatible` (the OpenAI API: key from `api_key_env`)."""
        if profile.kind == "azure_openai":
            from autoretrain.deploy.azure import DeploymentError, azure_openai_client

            try:
                client = azure_openai_client(profile, credential, use_entra_id)
            except DeploymentError as exc:
                raise HostedFineTuneError(str(exc)) from exc
            return cls(client, name="azure_openai", **kwargs)
        if profile.kind == "openai_compatible":
            import openai

            key = os.environ.get(profile.api_key_env) if profile.api_key_env else None
            if not key:
                raise HostedFineTuneError(
                    f"no API key for {profile.base_url or 'the OpenAI API'}: set api_key_env in "
                    "the profile and export that variable"
                )
            client = openai.OpenAI(
                base_url=profile.base_url,
                api_key=key,
                timeout=profile.timeout_s,
                max_retries=profile.max_retries,
            )
            return cls(client, name="openai", **kwargs)
        raise HostedFineTuneError(
            f"profile kind {profile.kind!r} has no hosted fine-tuning; use an azure_openai or "
            "openai_compatible profile, or train locally"
        )

    # ------------------------------------------------------------ the interface

    def submit(self, dataset_dir: Path, base_model: str, config: dict) -> str:
        dataset_dir = Path(dataset_dir)
        params = _job_params(config)
        train_path, eval_path = _dataset_files(dataset_dir)
        training_file = self._upload(train_path)
        validation_file = self._upload(eval_path) if eval_path else None
        self._wait_for_files(
            {training_file: train_path, **({validation_file: eval_path} if eval_path else {})}
        )
        request: dict[str, Any] = {"model": base_model, "training_file": training_file, **params}
        if validation_file:
            request["validation_file"] = validation_file
        job = self._call(
            lambda: self.client.fine_tuning.jobs.create(**request),
            f"create a fine-tuning job for {base_model}",
        )
        log.info(
            "%s: fine-tuning job %s created (%s on %s, status %s)",
            self.name,
            job.id,
            base_model,
            dataset_dir.name,
            job.status,
        )
        return job.id

    def wait(
        self,
        job_id: str,
        on_event: EventSink | None = None,
        timeout_s: float | None = None,
    ) -> FineTuneOutcome:
        deadline = self._clock() + timeout_s if timeout_s is not None else None
        seen: set[str] = set()
        events: list[str] = []
        metrics: dict[str, Any] = {}
        delays = self.backoff.delays()
        failures = 0
        last_status = None
        while True:
            try:
                job = self.client.fine_tuning.jobs.retrieve(job_id)
                self._pull_events(job_id, seen, events, metrics, on_event)
                failures = 0
            except Exception as exc:
                if not _transient(exc):
                    raise self._error(exc, f"poll fine-tuning job {job_id}") from exc
                failures += 1
                log.warning("%s: poll %d of job %s failed: %s", self.name, failures, job_id, exc)
                if failures >= MAX_POLL_FAILURES:
                    raise self._error(exc, f"poll fine-tuning job {job_id}") from exc
                job = None
            if job is not None:
                if job.status != last_status:
                    log.info("%s: job %s is %s", self.name, job_id, job.status)
                    last_status = job.status
                if job.status in TERMINAL:
                    return self._outcome(job, events, metrics)
            if deadline is not None and self._clock() >= deadline:
                return FineTuneOutcome(
                    status="timeout",
                    reason=f"job {job_id} still {last_status or 'unknown'} after {timeout_s:g} s",
                    events=events,
                    metrics=metrics,
                    job_id=job_id,
                )
            delay = next(delays)
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - self._clock()))
            self._sleep(delay)

    def cancel(self, job_id: str) -> None:
        job = self._call(
            lambda: self.client.fine_tuning.jobs.retrieve(job_id), f"look up job {job_id}"
        )
        if job.status in TERMINAL:
            log.info("%s: job %s already %s: nothing to cancel", self.name, job_id, job.status)
            return
        self._cancelled_here.add(job_id)
        self._call(lambda: self.client.fine_tuning.jobs.cancel(job_id), f"cancel job {job_id}")
        log.info("%s: cancellation of job %s requested", self.name, job_id)

    # ------------------------------------------------------------ files

    def _upload(self, path: Path) -> str:
        data = path.read_bytes()
        if self.add_bom and not data.startswith(BOM):
            data = BOM + data
        uploaded = self._call(
            lambda: self.client.files.create(file=(path.name, data), purpose="fine-tune"),
            f"upload {path}",
        )
        log.info("%s: uploaded %s as %s (%d bytes)", self.name, path, uploaded.id, len(data))
        return uploaded.id

    def _wait_for_files(self, files: dict[str, Path]) -> None:
        pending = dict(files)
        deadline = self._clock() + self.file_timeout_s
        delays = self.backoff.delays()
        while pending:
            for file_id, path in list(pending.items()):
                record = self._call(
                    lambda file_id=file_id: self.client.files.retrieve(file_id),
                    f"check uploaded file {file_id}",
                )
                status = getattr(record, "status", None)
                # OpenAI has deprecated the field; without it, job creation does the waiting.
                if status in (None, "processed"):
                    del pending[file_id]
                elif status in ("error", "deleted", "deleting"):
                    details = getattr(record, "status_details", None) or "no details given"
                    raise HostedFineTuneError(
                        f"{self.name} rejected {path} (file {file_id}, status {status}): "
                        f"{details}. Fix the file (`autoretrain dataset validate`) and resubmit"
                    )
            if not pending:
                return
            if self._clock() >= deadline:
                names = ", ".join(f"{p.name} ({i})" for i, p in pending.items())
                raise HostedFineTuneError(
                    f"{self.name} did not finish processing {names} within "
                    f"{self.file_timeout_s:g} s; retry later or raise file_timeout_s"
                )
            self._sleep(max(0.0, min(next(delays), deadline - self._clock())))

    # ------------------------------------------------------------ jobs

    def _pull_events(
        self,
        job_id: str,
        seen: set[str],
        events: list[str],
        metrics: dict[str, Any],
        on_event: EventSink | None,
    ) -> None:
        fresh = []
        # Events come newest first; everything after the first one already seen is old.
        for event in self.client.fine_tuning.jobs.list_events(job_id, limit=50):
            if event.id in seen:
                break
            fresh.append(event)
        for event in reversed(fresh):
            seen.add(event.id)
            data = getattr(event, "data", None) or {}
            if getattr(event, "type", None) == "metrics" and isinstance(data, dict):
                metrics.update({f"last_{k}": v for k, v in data.items()})
            line = _event_line(event)
            events.append(line)
            log.info("%s job %s: %s", self.name, job_id, line)
            if on_event:
                on_event(line)

    def _outcome(self, job: Any, events: list[str], metrics: dict[str, Any]) -> FineTuneOutcome:
        metrics = {**metrics, **_job_metrics(job)}
        if job.status == "succeeded":
            if not job.fine_tuned_model:
                return FineTuneOutcome(
                    status="failed",
                    reason=f"job {job.id} succeeded but the service named no fine_tuned_model",
                    events=events,
                    metrics=metrics,
                    job_id=job.id,
                )
            return FineTuneOutcome(
                status="succeeded",
                model_id=job.fine_tuned_model,
                events=events,
                metrics=metrics,
                job_id=job.id,
            )
        if job.status == "cancelled":
            who = (
                "by this process"
                if job.id in self._cancelled_here
                else "outside this process (portal, CLI or the service)"
            )
            reason = f"job {job.id} was cancelled {who}"
        else:
            error = getattr(job, "error", None)
            if error is not None and (
                getattr(error, "message", None) or getattr(error, "code", None)
            ):
                param = f" (param {error.param})" if getattr(error, "param", None) else ""
                reason = f"job {job.id} failed: {error.code}: {error.message}{param}"
            else:
                last = events[-1] if events else "none"
                reason = (
                    f"job {job.id} failed without an error from the service; last event: {last}"
                )
        return FineTuneOutcome(
            status=job.status, reason=reason, events=events, metrics=metrics, job_id=job.id
        )

    # ------------------------------------------------------------ errors

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except Exception as exc:
            if _is_openai_error(exc):
                raise self._error(exc, what) from exc
            raise

    def _error(self, exc: Exception, what: str) -> HostedFineTuneError:
        where = getattr(self.client, "base_url", "the service")
        status = getattr(exc, "status_code", None)
        detail = getattr(exc, "message", None) or str(exc)
        hint = {
            401: "check the credential (az login / managed identity, or the API key variable)",
            403: "the identity lacks a role on the resource (Cognitive Services OpenAI Contributor)",
            404: "check the endpoint, api_version and that the resource supports fine-tuning",
            429: "the service is throttling; retry later",
        }.get(status or 0, "retry later; if it persists, check the service status")
        code = f"HTTP {status}: " if status else ""
        return HostedFineTuneError(
            f"{self.name}: could not {what} at {where}: {code}{detail}; {hint}"
        )


def register_hosted_candidate(
    registry: Any, outcome: FineTuneOutcome, dataset_version: str | None, base_model: str
) -> str | None:
    """Register a succeeded hosted fine-tune as a model version; returns its id. A failed,
    cancelled or timed-out job registers nothing and returns None (its reason is logged)."""
    if not outcome.succeeded:
        log.warning("no candidate: hosted fine-tune %s: %s", outcome.status, outcome.reason)
        return None
    version = registry.register(
        base_model=base_model,
        kind="hosted",
        hosted_model_id=outcome.model_id,
        dataset_version=dataset_version,
        training_metrics={**outcome.metrics, "job_id": outcome.job_id},
    )
    log.info("registered hosted candidate %s (%s)", version.id, outcome.model_id)
    return version.id


# ------------------------------------------------------------ helpers


def _job_params(config: dict) -> dict[str, Any]:
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise BackendError(
            f"unknown hosted fine-tuning settings {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}"
        )
    hyper = dict(config.get("hyperparameters") or {})
    hyper.update({k: config[k] for k in HYPERPARAMETERS if config.get(k) is not None})
    params: dict[str, Any] = {}
    if hyper:
        params["hyperparameters"] = hyper
    if config.get("seed") is not None:
        params["seed"] = int(config["seed"])
    suffix = config.get("suffix")
    if suffix:
        if len(suffix) > MAX_SUFFIX_CHARS:
            raise BackendError(f"suffix {suffix!r} is longer than {MAX_SUFFIX_CHARS} characters")
        params["suffix"] = suffix
    return params


def _dataset_files(dataset_dir: Path) -> tuple[Path, Path | None]:
    train_path, eval_path = dataset_dir / "train.jsonl", dataset_dir / "eval.jsonl"
    if not train_path.is_file():
        raise BackendError(f"{dataset_dir}: no train.jsonl; build the dataset first")
    for path in (train_path, eval_path):
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise BackendError(f"{path}: {path.stat().st_size} bytes, over the 512 MB upload limit")
    n_train = _count_examples(train_path)
    if n_train < MIN_EXAMPLES:
        raise BackendError(
            f"{train_path}: {n_train} examples; hosted fine-tuning needs at least {MIN_EXAMPLES}"
        )
    has_eval = eval_path.is_file() and _count_examples(eval_path) > 0
    return train_path, eval_path if has_eval else None


def _count_examples(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip(BOM + b" \t\r\n"))


def _event_line(event: Any) -> str:
    at = datetime.fromtimestamp(event.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    level = getattr(event, "level", "info")
    return f"{at} {level}: {event.message}"


def _job_metrics(job: Any) -> dict[str, Any]:
    hyper = getattr(job, "hyperparameters", None)
    out: dict[str, Any] = {
        "job_id": job.id,
        "base_model": job.model,
        "status": job.status,
        "trained_tokens": getattr(job, "trained_tokens", None),
        "result_files": list(getattr(job, "result_files", None) or []),
        "seed": getattr(job, "seed", None),
        "hyperparameters": hyper.model_dump() if hasattr(hyper, "model_dump") else hyper,
    }
    if job.created_at and getattr(job, "finished_at", None):
        out["duration_s"] = job.finished_at - job.created_at
    return out


def _is_openai_error(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


def _transient(exc: Exception) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500
