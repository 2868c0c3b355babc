"""`autoretrain loop` on Azure OpenAI, end to end, against a double that refuses what Azure
refuses (autoretrain_tests/azure_double.py) and answers with a real model.

What runs, as in production:
- `autoretrain loop --iterations 1` and `autoretrain rollback`, as subprocesses, with settings
  that name an Azure OpenAI resource and `training.backend: azure`; their only credential is a
  managed identity (a loopback App Service identity endpoint: `DefaultAzureCredential` asks it
  for the management and Cognitive Services tokens, which the double checks);
- the Azure double: files, fine-tuning jobs, chat on deployments, ARM deployments (one model per
  deployment for life; `Creating` -> `Succeeded`; Developer tier);
- behind the double, the "models" Azure would run: `autoretrain serve` (a real
  OpenAI-compatible server) answering for the base model with an embedded model, and for each
  fine-tuned model with what the job trained. A job really trains: the uploaded `train.jsonl`
  (Azure's flavour, with its byte-order mark) is fine-tuned into the base with the local
  trainer, in the background, while the job reports `running`.

The loop then does what the issue asks of it: the base model's hand-made deployment is the
first incumbent (v0); self-play and the replay call deployments; the candidate is a hosted
fine-tune (submitted once, polled, its model id captured); the replay reaches the candidate
through its own Developer-tier deployment; the gate passes; the candidate's canary is that same
deployment, with a share of live traffic; primary gets a new standard deployment and the slot
file flips; `autoretrain rollback` flips it back to the hand-made deployment. No request ever
asks Azure to change a deployment's model.

What is tested is plumbing, not efficacy, so the lift must not hang on how a tiny model's
training happens to round on this CPU (a base that half-knows a behaviour, lifted by a few more
epochs, passed on one machine type and failed on another). The base model is an embedded model
bootstrapped briefly and never shown the `decline` scenarios: it fails them. Self-play confirms
that, so the dataset carries reference solutions for those unsolved scenarios
(`dataset.reference_demos_per_unsolved_scenario`), the upload carries them to the job, and the
fine-tuned model learns to decline: a lift of whole categories, not of a few instances. The
lifts are loosened to "not a collapse" (as in test_daemon_e2e.py); the default gate's verdicts
are tested in test_loop_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from autoretrain.deploy.azure import AzureDeployments
from autoretrain.deploy.serving import ServingEntry, read_serving_config, write_serving_config
from autoretrain.deploy.slot_config import read_slots, slot_file
from autoretrain.project import Project
from autoretrain.settings import Settings, TrainingSettings, load_settings
from autoretrain.training.backend import Backoff
from autoretrain.training.bootstrap import DEMOS_FILE, bootstrap_base_model
from autoretrain.training.config import TrainConfig
from autoretrain.training.lora import train
from autoretrain_tests.azure_double import AzureDouble
from autoretrain_tests.conftest import LOOSE_LIFTS
from autoretrain_tests.deploy.test_managed_identity import (
    ARM_RESOURCE,
    COGNITIVE_RESOURCE,
    OTHER_CREDENTIAL_VARIABLES,
)
from autoretrain_tests.gateway.conftest import landed, wait_for
from autoretrain_tests.gateway.test_agent_loop_e2e import Process
from autoretrain_tests.identity_server import IdentityServer
from autoretrain_tests.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[1]
BASE = "gpt-4o-mini-2024-07-18"  # the hosted base model's name, as Azure spells it
BASE_DEPLOYMENT = "agent-base"  # made by hand before autoretrain, as a team does
MIN_CANARY_RUNS = 15
BASE_DEMOS = 16
# Train scenarios the base never sees: a behaviour only the uploaded dataset can teach it.
UNTAUGHT = ("decline_password", "decline_delete_files", "decline_send_money")

SETTINGS = """
provider: azure
providers:
  azure:
    kind: azure_openai
    azure_endpoint: {double}
    api_version: "2024-10-21"
    slots:
      primary: {base_deployment}
    azure_subscription_id: sub-1
    azure_resource_group: rg-1
    azure_account: acct-1
    management_endpoint: {double}
    deployment_sku: standard
    canary_deployment_sku: developertier
    timeout_s: 120
training:
  backend: azure
  hosted_base_model: {base}
  hosted_timeout_s: 1500
  hosted_poll_max_s: 2
  hosted_price_per_1k_training_tokens: 0.008
selfplay:
  runs_per_iteration: 400
  concurrency: 64
  category_weights: {{decline: 3}}  # ~30 runs of each: enough to call it unsolved
  min_observations: 10
evaluation:
  instances_per_scenario: 5
  batch_size: 32
dataset:
  min_examples_per_category: 1
  min_new_promotable_runs: 20
  reference_demos_per_unsolved_scenario: 24
pricing:
  "*": {{input_per_mtok: 0.15, output_per_mtok: 0.60}}  # every deployment, fine-tuned or not
"""


class AzureModels:
    """The models behind the double: `autoretrain serve` over a serving.json of Azure model
    names, and the trainer a fine-tuning job runs."""

    def __init__(self, root: Path, base_dir: Path):
        self.root = root
        self.serving = root / "serving.json"
        write_serving_config(self.serving, {BASE: ServingEntry(base_dir)})
        (root / "autoretrain.yaml").write_text("{}\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.trained: dict[str, Path] = {}
        env = {
            **os.environ,
            "AUTORETRAIN_HOME": str(root),
            "AUTORETRAIN_CONFIG": str(root / "autoretrain.yaml"),
        }
        cli = [sys.executable, "-c", "from autoretrain.cli import main; main()"]
        self.server = Process(
            "azure-side serve", [*cli, "serve", "--port", str(self.port)], env, root / "serve.log"
        )
        self.server.wait_ready(f"http://127.0.0.1:{self.port}/health")
        self._lock = threading.Lock()

    def train(self, name: str, base: str, train_bytes: bytes, eval_bytes: bytes | None) -> int:
        """A fine-tuning job: the uploaded files (and nothing else: Azure sees only those) trained
        into the base model; the result is served under the job's model name."""
        base_dir = read_serving_config(self.serving)[base].model_dir
        data = self.root / "jobs" / name
        data.mkdir(parents=True)
        (data / "train.jsonl").write_bytes(train_bytes)
        # The validation file is for the job's metrics; the result is the last step's model,
        # as Azure's is (ours would keep the step with the best validation loss).
        (data / "eval.jsonl").write_bytes(b"")
        # The service's recipe (a real one is not ours to choose either). A real base model is
        # not changed much by a few hundred examples; the embedded one forgets fast, so its own
        # training data is rehearsed with the uploaded examples (what autoretrain's local
        # trainer does too).
        demos = base_dir / DEMOS_FILE
        config = TrainConfig.from_settings(
            TrainingSettings(),
            epochs=8,
            # The base's own bootstrap rate and batch: it continues where that stopped.
            learning_rate=3e-3,
            batch_size=4,
            mix_in=[str(demos)] if demos.exists() else [],
            merge_adapter=True,
            torch_threads=1,
        )
        result = train(data, base_dir, self.root / "models" / name, config)
        with self._lock:
            entries = read_serving_config(self.serving)
            entries[name] = ServingEntry(Path(result.merged_dir or result.model_dir))
            write_serving_config(self.serving, entries)
        self.trained[name] = data

        def served() -> bool:
            listed = httpx.get(f"{self.url}/models", timeout=10).json()["data"]
            return name in {m["id"] for m in listed}

        wait_for(served, timeout_s=60, what=f"serve to answer for {name}")
        return int(result.metrics.trained_tokens or 0)


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    double: AzureDouble
    identity: IdentityServer
    models: AzureModels

    def cli(self, *args: str, timeout_s: float = 2400) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", "from autoretrain.cli import main; main()", *args]
        done = subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout_s
        )
        assert done.returncode == 0, f"autoretrain {' '.join(args)}:\n{done.stderr[-4000:]}"
        return done

    def slots(self) -> dict[str, str]:
        return read_slots(slot_file(self.settings))

    def serves(self, deployment: str) -> tuple[str, str]:
        """(model, SKU) of a deployment in the double."""
        resource = self.double.deployments[deployment]
        return resource["properties"]["model"]["name"], resource["sku"]["name"].lower()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """The model behind `hosted_base_model`: the embedded model, bootstrapped here for a short
    while only, and never shown how to decline (`UNTAUGHT`)."""
    from autoretrain.scenarios import load_catalog

    target = tmp_path_factory.mktemp("azure-base") / "base"
    return bootstrap_base_model(
        load_catalog(ROOT / "scenarios"),
        target,
        demos_per_scenario=BASE_DEMOS,  # a third of the shipped 48: ~900 steps, not ~4,400
        time_budget_s=None,  # the whole (short) schedule: the same model on any machine
        evaluation_per_scenario=5,  # no evaluation prompt among its demonstrations
        demos_by_scenario=dict.fromkeys(UNTAUGHT, 0),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_model) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("azure-loop")
    (tmp / "azure-side").mkdir()
    models = AzureModels(tmp / "azure-side", base_model)
    try:
        with (
            AzureDouble(token="mi-token-azure-loop") as double,
            IdentityServer(
                {ARM_RESOURCE: double.token, COGNITIVE_RESOURCE: double.token}
            ) as identity,
        ):
            double.known_models.add(BASE)
            double.chat_upstream = models.url
            double.trainer = models.train
            # The base model's deployment, made by hand (portal, az CLI) before autoretrain.
            AzureDeployments(
                "sub-1", "rg-1", "acct-1", lambda: double.token, endpoint=double.url,
                backoff=Backoff(initial_s=0.01, max_s=0.05),
            ).create(BASE_DEPLOYMENT, BASE, sku="standard")  # fmt: skip
            home = tmp / "data"
            config = tmp / "autoretrain.yaml"
            config.write_text(
                SETTINGS.format(
                    double=double.url,
                    base=BASE,
                    base_deployment=BASE_DEPLOYMENT,
                )
                + LOOSE_LIFTS
                + f"    min_canary_runs: {MIN_CANARY_RUNS}\n"
            )
            env = {
                key: value
                for key, value in os.environ.items()
                if key not in OTHER_CREDENTIAL_VARIABLES
            }
            env.update(
                AUTORETRAIN_HOME=str(home),
                DAGSTER_HOME=str(home / "dagster"),
                AUTORETRAIN_CONFIG=str(config),
                **identity.environment(),
            )
            with pytest.MonkeyPatch.context() as mp:
                for key in OTHER_CREDENTIAL_VARIABLES:
                    mp.delenv(key, raising=False)
                for key in ("AUTORETRAIN_HOME", "DAGSTER_HOME", "AUTORETRAIN_CONFIG"):
                    mp.setenv(key, env[key])
                for key, value in identity.environment().items():  # this process calls too
                    mp.setenv(key, value)
                yield World(load_settings(), env, double, identity, models)
    finally:
        models.server.stop()


def test_autoretrain_loop_on_azure_fine_tunes_deploys_canaries_promotes_and_rolls_back(world):
    double = world.double

    # -- the loop, as a user runs it --------------------------------------------------------
    done = world.cli("loop", "--iterations", "1", "--json")
    (result,) = json.loads(done.stdout)
    candidate = result["candidate"]
    assert result["incumbent"] == "v0", result
    assert result["decision"] == "promote", result
    assert result["canary"]["passed"], result["canary"]
    assert result["primary"] == candidate and result["stopped_at"] is None, result

    project = Project(world.settings)
    with project.store(read_only=True) as store:
        registry = project.registry(store, read_only=True)
        v0, version = registry.get("v0"), registry.get(candidate)
        ledger = [
            (e.slot, e.from_version, e.to_version)
            for e in sorted(registry.ledger(), key=lambda e: e.seq)
        ]
    assert v0.kind == "hosted" and v0.hosted_model_id == BASE

    # -- the hosted fine-tune: one job, its files in Azure's flavour, its model captured ---------
    (job,) = double.jobs.values()
    assert job["status"] == "succeeded" and job["model"] == BASE
    assert version.kind == "hosted" and version.hosted_model_id == job["fine_tuned_model"]
    assert version.parent_version == "v0"
    assert version.training_metrics["job_id"] == job["id"]
    assert version.training_metrics["trained_tokens"] == job["trained_tokens"] > 0
    uploaded = double.file_contents[job["training_file"]]
    assert uploaded.startswith(b"\xef\xbb\xbf"), "Azure's JSONL flavour starts with a BOM"
    first = json.loads(uploaded.removeprefix(b"\xef\xbb\xbf").splitlines()[0])
    assert first["messages"] and first["messages"][-1]["role"] == "assistant"
    assert job["fine_tuned_model"] in world.models.trained  # trained for real behind the double
    # What lifted it: self-play found the untaught scenarios unsolved, so the upload carried
    # their reference solutions.
    manifest = json.loads(
        (world.settings.paths.datasets / version.dataset_version / "manifest.json").read_text()
    )
    assert set(UNTAUGHT) <= set(manifest["reference_demonstrations"]["by_scenario"]), manifest

    # -- deployments as Azure does them: one per version, never re-pointed -------------------
    slots = world.slots()
    developer = next(n for n in double.deployments if n.endswith("--dev"))
    standard = next(n for n in double.deployments if n not in (developer, BASE_DEPLOYMENT))
    assert world.serves(developer) == (job["fine_tuned_model"], "developertier")
    assert world.serves(standard) == (job["fine_tuned_model"], "standard")
    assert world.serves(BASE_DEPLOYMENT) == (BASE, "standard")
    assert slots == {"canary": developer, "primary": standard}, slots
    puts = Counter(r["path"].rsplit("/", 1)[-1] for r in double.requests_to("PUT", "/deployments/"))
    # The hand-made deployment once (by this test); each of the candidate's once; nothing else.
    assert puts == {BASE_DEPLOYMENT: 1, developer: 1, standard: 1}, puts
    assert ledger[-2:] == [("canary", None, candidate), ("primary", "v0", candidate)], ledger

    # -- who answered what: the replay through both versions' deployments, the canary's share --
    runs = landed(world.settings).values()
    evaluation = Counter(r.model for r in runs if r.traffic == "evaluation")
    assert evaluation["v0"] == evaluation[candidate] > 0, evaluation
    live = Counter(r.slot for r in runs if r.traffic == "selfplay")
    assert live["canary"] >= MIN_CANARY_RUNS and live["primary"] > 0, live
    assert double.chat_calls[developer] > 0 and double.chat_calls[BASE_DEPLOYMENT] > 0

    # -- rollback in one command: the slot flips back to the base model's deployment -----------
    before = dict(double.deployments)
    world.cli("rollback", "--slot", "primary", "--reason", "test: back to the base")
    assert world.slots()["primary"] == BASE_DEPLOYMENT
    assert project.slot_version("primary").id == "v0"
    assert set(double.deployments) == set(before)  # a flip: nothing created, nothing deleted
    calls = double.chat_calls[BASE_DEPLOYMENT]
    answer = (
        project.model_for("primary")
        .client()
        .chat.completions.create(
            model=BASE_DEPLOYMENT, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    )
    assert answer.model == BASE and double.chat_calls[BASE_DEPLOYMENT] == calls + 1
    # Every token came from the managed identity endpoint: management and Cognitive Services.
    assert {r["query"]["resource"] for r in world.identity.requests} == {
        ARM_RESOURCE,
        COGNITIVE_RESOURCE,
    }
