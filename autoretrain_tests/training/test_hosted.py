"""Hosted fine-tunes against the loopback Azure OpenAI / OpenAI double, and the local backend."""

from __future__ import annotations

import json
import threading
import time

import duckdb
import openai
import pytest
from azure.core.credentials import AccessToken

from autoretrain.deploy.registry import ModelRegistry
from autoretrain.settings import ProviderProfile
from autoretrain.training.backend import (
    BackendError,
    Backoff,
    FineTuneBackend,
    FineTuneOutcome,
    LocalBackend,
    run_fine_tune,
)
from autoretrain.training.hosted import (
    BOM,
    HostedBackend,
    HostedFineTuneError,
    register_hosted_candidate,
)
from autoretrain_tests.azure_double import AzureDouble
from autoretrain_tests.training.conftest import write_dataset

FAST = Backoff(initial_s=0.005, max_s=0.02, factor=2)
BASE = "gpt-4o-mini-2024-07-18"


class StaticCredential:
    """A credential that always hands out the double's token (what az login would do)."""

    def __init__(self, token: str):
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def double():
    with AzureDouble() as d:
        yield d


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "ds-20260101", n_train=12, n_eval=3)


def azure_backend(double: AzureDouble, **kwargs) -> HostedBackend:
    client = openai.AzureOpenAI(
        azure_endpoint=double.url, api_key=double.api_key, api_version="2024-10-21", max_retries=0
    )
    return HostedBackend(client, backoff=FAST, **kwargs)


def registry_for(settings) -> ModelRegistry:
    return ModelRegistry.from_settings(duckdb.connect(str(settings.paths.database)), settings)


def test_succeeded_job_streams_events_and_registers_a_candidate(double, dataset, settings):
    backend = azure_backend(double)
    assert isinstance(backend, FineTuneBackend)
    job_id = backend.submit(
        dataset, BASE, {"suffix": "autoretrain", "seed": 7, "n_epochs": 2, "batch_size": 4}
    )
    streamed: list[str] = []
    outcome = backend.wait(job_id, on_event=streamed.append, timeout_s=20)

    assert outcome.status == "succeeded", outcome.reason
    assert outcome.model_id == f"{BASE}.ft-{job_id.removeprefix('ftjob-')}"
    assert outcome.reason is None and outcome.job_id == job_id
    # Every event once, oldest first, as the service recorded them.
    messages = [e["message"] for e in double.events[job_id]]
    assert [line.split(": ", 1)[1] for line in streamed] == messages
    assert streamed == outcome.events
    assert "successfully completed" in streamed[-1]
    assert outcome.metrics["trained_tokens"] == 4321
    assert outcome.metrics["last_train_loss"] == 0.5678
    assert outcome.metrics["hyperparameters"]["n_epochs"] == 2

    uploads = double.requests_to("POST", "/openai/files")
    assert len(uploads) == 2 and all(r["query"]["api-version"] == "2024-10-21" for r in uploads)
    assert all(r["api_key"] == double.api_key for r in double.requests)
    train_id = double.jobs[job_id]["training_file"]
    raw = (dataset / "train.jsonl").read_bytes()
    assert double.file_contents[train_id] == BOM + raw  # Azure gets its BOM; the disk is unchanged
    assert not raw.startswith(BOM)
    created = json.loads(double.requests_to("POST", "/fine_tuning/jobs")[0]["body"])
    assert created["model"] == BASE and created["suffix"] == "autoretrain"
    assert created["seed"] == 7 and created["hyperparameters"] == {"n_epochs": 2, "batch_size": 4}
    assert created["validation_file"] == double.jobs[job_id]["validation_file"] is not None
    # The job was only created after both files were processed.
    order = [(r["method"], r["path"].split("/")[2]) for r in double.requests]
    first_job = order.index(("POST", "fine_tuning"))
    assert {f["status"] for f in double.files.values()} == {"processed"}
    assert sum(1 for m, p in order[:first_job] if (m, p) == ("GET", "files")) >= 2

    registry = registry_for(settings)
    version_id = register_hosted_candidate(registry, outcome, "ds-20260101", BASE)
    version = registry.get(version_id)
    assert version.kind == "hosted" and version.hosted_model_id == outcome.model_id
    assert version.dataset_version == "ds-20260101" and version.base_model == BASE
    assert version.training_metrics["job_id"] == job_id


def test_failed_job_gives_the_service_reason_and_no_candidate(double, dataset, settings):
    double.job_outcome = "failed"
    outcome = run_fine_tune(azure_backend(double), dataset, BASE, {}, timeout_s=20)
    assert outcome.status == "failed" and outcome.model_id is None
    assert "invalid_training_file" in outcome.reason and "line 7" in outcome.reason
    assert any("error: The job failed" in e for e in outcome.events)
    registry = registry_for(settings)
    assert register_hosted_candidate(registry, outcome, "ds-20260101", BASE) is None
    assert registry.versions() == []


def test_a_job_that_trains_runs_until_its_training_ends(double, dataset):
    """The double's training hook (used by test_loop_azure_e2e.py): the job stays `running`
    while it trains, is given the uploaded files without Azure's byte-order mark, and reports
    what it trained on; a training that raises fails the job with its error."""
    release, seen = threading.Event(), {}

    def trainer(name, base, train, validation):
        seen.update(name=name, base=base, train=train, validation=validation)
        release.wait(10)
        return 777

    double.trainer = trainer
    backend = azure_backend(double)
    job_id = backend.submit(dataset, BASE, {})
    for _ in range(6):  # many polls: without the training done, it never leaves running
        status = backend.client.fine_tuning.jobs.retrieve(job_id).status
    assert status == "running"
    release.set()
    outcome = backend.wait(job_id, timeout_s=20)
    assert outcome.status == "succeeded" and outcome.model_id == seen["name"]
    assert outcome.model_id.startswith(f"{BASE}.ft-") and seen["base"] == BASE
    assert seen["train"] == (dataset / "train.jsonl").read_bytes().removeprefix(BOM)
    assert double.jobs[job_id]["trained_tokens"] == 777

    def broken(name, base, train, validation):
        raise ValueError("out of quota")

    double.trainer = broken
    outcome = run_fine_tune(backend, dataset, BASE, {}, timeout_s=20)
    assert outcome.status == "failed" and "ValueError: out of quota" in outcome.reason


def test_job_cancelled_by_the_service(double, dataset, settings):
    double.job_outcome = "cancelled"
    outcome = run_fine_tune(azure_backend(double), dataset, BASE, {}, timeout_s=20)
    assert outcome.status == "cancelled" and outcome.model_id is None
    assert "outside this process" in outcome.reason
    assert register_hosted_candidate(registry_for(settings), outcome, None, BASE) is None


def test_cancel_while_waiting(double, dataset):
    double.polls_per_status = 1000  # the job stays queued until cancelled
    backend = azure_backend(double)
    job_id = backend.submit(dataset, BASE, {})
    result: list[FineTuneOutcome] = []
    waiter = threading.Thread(target=lambda: result.append(backend.wait(job_id, timeout_s=20)))
    waiter.start()
    time.sleep(0.1)
    backend.cancel(job_id)
    waiter.join(10)
    assert result and result[0].status == "cancelled"
    assert "by this process" in result[0].reason
    assert double.jobs[job_id]["status"] == "cancelled"
    assert len(double.requests_to("POST", "/cancel")) == 1
    backend.cancel(job_id)  # a finished job: nothing to do, no error
    assert len(double.requests_to("POST", "/cancel")) == 1


def test_timeout_cancels_the_job(double, dataset):
    double.polls_per_status = 1000
    outcome = run_fine_tune(azure_backend(double), dataset, BASE, {}, timeout_s=0.2)
    assert outcome.status == "timeout" and outcome.model_id is None
    assert "still" in outcome.reason and "cancelled" in outcome.reason
    (job,) = double.jobs.values()
    assert job["status"] == "cancelled"


def test_rejected_file_stops_before_a_job_exists(double, dataset):
    double.file_status = "error"
    with pytest.raises(HostedFineTuneError, match=r"train\.jsonl.*line 3 is not a JSON object"):
        azure_backend(double).submit(dataset, BASE, {})
    assert double.jobs == {}


def test_service_error_is_clear(double, dataset):
    client = openai.AzureOpenAI(
        azure_endpoint=double.url, api_key="wrong-key", api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(HostedFineTuneError) as caught:
        HostedBackend(client, backoff=FAST).submit(dataset, BASE, {})
    message = str(caught.value)
    assert "HTTP 401" in message and "upload" in message and "credential" in message
    assert "wrong-key" not in message


def test_bad_input_is_refused_before_any_request(double, tmp_path):
    backend = azure_backend(double)
    small = write_dataset(tmp_path / "small", n_train=9, n_eval=1)
    with pytest.raises(BackendError, match="9 examples.*at least 10"):
        backend.submit(small, BASE, {})
    with pytest.raises(BackendError, match="unknown hosted fine-tuning settings.*epochs"):
        backend.submit(write_dataset(tmp_path / "ok"), BASE, {"epochs": 3})
    with pytest.raises(BackendError, match="no train.jsonl"):
        backend.submit(tmp_path / "missing", BASE, {})
    assert double.requests == []


def test_openai_api_shape_without_eval_file(double, tmp_path):
    dataset = write_dataset(tmp_path / "ds", n_train=10, n_eval=0)
    client = openai.OpenAI(base_url=f"{double.url}/v1", api_key=double.api_key, max_retries=0)
    backend = HostedBackend(client, name="openai", backoff=FAST)
    outcome = run_fine_tune(backend, dataset, "gpt-4o-mini", {"seed": 1}, timeout_s=20)
    assert outcome.status == "succeeded" and outcome.model_id.startswith("gpt-4o-mini.ft-")
    assert all(r["path"].startswith("/v1/") for r in double.requests)
    assert all(r["authorization"] == f"Bearer {double.api_key}" for r in double.requests)
    (only_file,) = double.file_contents.values()
    assert only_file == (dataset / "train.jsonl").read_bytes()  # no BOM for OpenAI
    (job,) = double.jobs.values()
    assert job["validation_file"] is None


def test_from_profile_prefers_entra_id_then_the_key(double, dataset, monkeypatch):
    profile = ProviderProfile(
        kind="azure_openai", azure_endpoint=double.url, api_key_env="DOUBLE_KEY", max_retries=0
    )
    credential = StaticCredential(double.token)
    backend = HostedBackend.from_profile(profile, credential=credential, backoff=FAST)
    backend.submit(dataset, BASE, {})
    assert credential.scopes[0] == "https://cognitiveservices.azure.com/.default"
    assert {r["authorization"] for r in double.requests} == {f"Bearer {double.token}"}

    with pytest.raises(HostedFineTuneError, match="DOUBLE_KEY is not set"):
        HostedBackend.from_profile(profile, use_entra_id=False)
    monkeypatch.setenv("DOUBLE_KEY", double.api_key)
    double.requests.clear()
    HostedBackend.from_profile(profile, use_entra_id=False, backoff=FAST).submit(dataset, BASE, {})
    assert {r["api_key"] for r in double.requests} == {double.api_key}
    with pytest.raises(HostedFineTuneError, match="no hosted fine-tuning"):
        HostedBackend.from_profile(ProviderProfile(kind="local"))


def test_local_backend_reports_a_failed_training_as_an_outcome(tmp_path):
    dataset = write_dataset(tmp_path / "ds", n_train=4, n_eval=1)
    backend = LocalBackend(tmp_path / "models")
    assert isinstance(backend, FineTuneBackend)
    job_id = backend.submit(dataset, str(tmp_path / "no-such-model"), {"epochs": 1})
    seen: list[str] = []
    outcome = backend.wait(job_id, on_event=seen.append)
    assert outcome.status == "failed" and outcome.model_id is None
    assert "not a Hugging Face model directory" in outcome.reason
    assert seen == outcome.events and seen[-1].startswith("failed:")
    with pytest.raises(BackendError, match="unknown training settings"):
        backend.submit(dataset, str(tmp_path), {"n_epochs": 1})
    with pytest.raises(BackendError, match="unknown local job"):
        backend.wait("local-nope")


def test_local_backend_trains_a_tiny_model(tmp_path, tiny_model):
    dataset = write_dataset(tmp_path / "ds", n_train=8, n_eval=2)
    backend = LocalBackend(tmp_path / "models")
    outcome = run_fine_tune(
        backend,
        dataset,
        str(tiny_model),
        {"epochs": 1, "batch_size": 4, "max_seq_len": 256, "method": "full", "progress": False},
    )
    assert outcome.status == "succeeded", outcome.reason
    assert (tmp_path / "models" / outcome.job_id / "config.json").is_file()
    assert outcome.model_id == str(tmp_path / "models" / outcome.job_id)
    assert outcome.metrics["method"] == "full"
    backend.cancel(outcome.job_id)  # finished: a no-op
