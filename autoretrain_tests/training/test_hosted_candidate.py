"""A candidate as a hosted fine-tune through `Project.train_candidate` (training.backend: azure),
against the loopback Azure OpenAI double: submitted once, re-attached after a crash or a
timeout, cancelled on interrupt, registered only when it succeeds."""

from __future__ import annotations

import json

import pytest

from autoretrain.project import Project
from autoretrain.runs.store import RunStore
from autoretrain.training.hosted import HostedBackend, HostedFineTuneError
from autoretrain.training.hosted_candidate import cancel_hosted, job_record
from autoretrain_tests.training.conftest import write_dataset
from autoretrain_tests.training.test_hosted import BASE, azure_backend, double  # noqa: F401

VERSION = "cand-ds-20261203"


@pytest.fixture
def hosted(settings):
    settings.training.backend = "azure"
    settings.training.hosted_base_model = BASE
    settings.training.hosted_price_per_1k_training_tokens = 0.008
    return settings


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds-20261203", n_train=12, n_eval=3)


def jobs_created(double) -> int:  # noqa: F811
    return len(double.requests_to("POST", "/fine_tuning/jobs"))


def registered(settings, version_id: str):
    if not settings.paths.database.exists():
        return None  # nothing was ever registered
    with RunStore.from_settings(settings, read_only=True) as store:
        return Project(settings).registry(store, read_only=True).get(version_id)


def test_a_hosted_candidate_is_submitted_recorded_and_registered(hosted, dataset, double):  # noqa: F811
    result = Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    assert result.method == "hosted" and not result.reattached
    record = json.loads(job_record(hosted.paths.models, VERSION).read_text())
    assert record["job_id"] == result.job_id and record["status"] == "succeeded"
    version = registered(hosted, VERSION)
    assert version.kind == "hosted" and version.hosted_model_id == result.model_id
    assert version.training_metrics["job_id"] == result.job_id
    assert version.training_metrics["trained_tokens"] == 4321  # the double's job
    assert version.training_metrics["training_cost_usd"] == pytest.approx(4321 / 1000 * 0.008)
    assert jobs_created(double) == 1


def test_a_second_attempt_reattaches_instead_of_submitting_again(hosted, dataset, double):  # noqa: F811
    double.polls_per_status = 10_000  # the job stays queued: the first wait times out
    hosted.training.hosted_timeout_s = 0.2
    with pytest.raises(HostedFineTuneError, match="timeout"):
        Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    assert registered(hosted, VERSION) is None
    assert json.loads(job_record(hosted.paths.models, VERSION).read_text())["status"] == "timeout"

    double.polls_per_status = 1  # the service moves on; a re-materialization attaches to it
    hosted.training.hosted_timeout_s = 20
    result = Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    assert result.reattached and jobs_created(double) == 1
    assert registered(hosted, VERSION).hosted_model_id == result.model_id
    # Once ended, the recorded outcome is used: no third submission, no new poll needed.
    again = Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    assert again.reattached and again.model_id == result.model_id and jobs_created(double) == 1


class InterruptedWait(HostedBackend):
    """The wait is interrupted (Ctrl-C, or Dagster terminating the run) after the submit."""

    def wait(self, job_id, on_event=None, timeout_s=None):
        raise KeyboardInterrupt


def test_an_interrupted_wait_cancels_the_job(hosted, dataset, double):  # noqa: F811
    double.polls_per_status = 10_000
    backend = InterruptedWait(azure_backend(double).client, backoff=azure_backend(double).backoff)
    with pytest.raises(KeyboardInterrupt):
        Project(hosted).train_hosted_candidate(dataset, VERSION, backend=backend)
    (job_id,) = double.jobs
    assert double.jobs[job_id]["status"] in ("cancelled", "cancelling")
    assert registered(hosted, VERSION) is None


def test_a_failed_job_registers_nothing_and_says_why(hosted, dataset, double):  # noqa: F811
    double.job_outcome = "failed"
    with pytest.raises(HostedFineTuneError, match="invalid_training_file"):
        Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    assert registered(hosted, VERSION) is None


def test_cancel_names_the_recorded_job(hosted, dataset, double):  # noqa: F811
    double.polls_per_status = 10_000
    hosted.training.hosted_timeout_s = 0.2
    with pytest.raises(HostedFineTuneError):
        Project(hosted).train_hosted_candidate(dataset, VERSION, backend=azure_backend(double))
    job_id = cancel_hosted(azure_backend(double), hosted.paths.models, VERSION)
    assert double.jobs[job_id]["status"] in ("cancelled", "cancelling")
    with pytest.raises(HostedFineTuneError, match="no hosted job recorded"):
        cancel_hosted(azure_backend(double), hosted.paths.models, "cand-never")


def test_the_local_backend_stays_the_default(settings):
    assert settings.training.backend == "local"
