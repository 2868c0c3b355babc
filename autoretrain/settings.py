"""Typed settings: one data root, provider profiles, gates per provider and environment.

Precedence, lowest first: built-in defaults < `autoretrain.yaml` (working directory, or the file
named by AUTORETRAIN_CONFIG) < environment variables. Secrets are never read from the YAML file:
it names the *environment variable* that holds a key, and code reads the variable when it needs it.

Gates and lifts are layered the same way: `default`, then the active provider profile's
override, then the active environment's override (see `PromotionGates.resolve`).
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CONFIG_FILE = "autoretrain.yaml"


class SettingsError(ValueError):
    """Bad configuration: the message says which file and which field."""


class _Section(BaseModel):
    # Unknown keys in a section are a typo in the user's YAML: say so instead of ignoring it.
    # NaN and infinity pass no range check honestly (nan >= 0 is false, inf <= 1 false, but
    # `max_*: .inf` would disable a gate without saying so): refuse them everywhere.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# The ranges settings are checked against at load, so a value that would silently disable a gate
# (a negative lift, a significance of 5) or break a stage (a negative size) fails with its name.
Share = Annotated[float, Field(ge=0, le=1)]  # a probability, a rate, a share of runs
Positive = Annotated[float, Field(gt=0)]  # a budget, a timeout, a ratio
PositiveInt = Annotated[int, Field(ge=1)]  # a size or a count that must be at least one
Count = Annotated[int, Field(ge=0)]  # a count where 0 means "none"


class Paths:
    """Every path the project writes, derived from one root (AUTORETRAIN_HOME)."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    @property
    def landing(self) -> Path:
        return self.root / "landing" / "runs"

    @property
    def database(self) -> Path:
        return self.root / "autoretrain.duckdb"

    @property
    def datasets(self) -> Path:
        return self.root / "autoretrain"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    def landing_day(self, day: str) -> Path:
        return self.landing / f"date={day}"


class Price(_Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


class ProviderProfile(_Section):
    """How to reach a chat model. `slots` maps slot name (primary, canary) to a model id,
    a deployment name (Azure) or, for `local`, a model directory or registry version."""

    kind: Literal["local", "openai_compatible", "azure_openai", "scripted"] = "local"
    base_url: str | None = None
    api_key_env: str | None = None
    azure_endpoint: str | None = None
    api_version: str = "2024-10-21"
    slots: dict[str, str] = Field(default_factory=dict)
    timeout_s: Positive = 60.0
    max_retries: Count = 3
    device: str = "cpu"
    # Azure OpenAI deployments are created through the management (ARM) API, which names the
    # resource by subscription, resource group and account rather than by endpoint.
    azure_subscription_id: str | None = None
    azure_resource_group: str | None = None
    azure_account: str | None = None
    management_endpoint: str = "https://management.azure.com"
    deployment_sku: str = "standard"  # or "globalstandard": the primary slot's deployments
    deployment_capacity: int = Field(default=1, ge=1)
    # Each model version gets a deployment of its own named <prefix>-<version> (Azure cannot
    # change a deployment's model); slots map to them in the slot file (deploy/slot_config.py).
    deployment_prefix: str = Field(default="autoretrain", pattern=r"^[a-z0-9][a-z0-9-]{0,29}$")
    # The canary slot's SKU when it differs: "developertier" (tokens only, no SLA, 24 hours).
    canary_deployment_sku: str | None = None
    slot_config_file: str | None = None  # default <root>/serving/<profile>-slots.env


class PromotionGates(_Section):
    """What a run must clear to become training data (PromotionGuardAgent)."""

    min_score: Share = 1.0  # verifier scores are in [0, 1]
    max_escalations: Count = 0
    max_recoveries: Count = 2
    max_runtime_s: Positive = 120.0
    max_total_tokens: PositiveInt = 8192
    categories: list[str] | None = None  # None: every category
    # The verifier's score says "right"; the quality score (verifier plus an optional LLM
    # judge, averaged over the last attempt) says "good enough to learn from".
    min_quality_score: Share = 0.0
    # Borderline runs clear every gate but only just: the optional LLM reviewer looks at
    # them. A score below min_score + margin, or at least this many recoveries (0: never).
    borderline_score_margin: Share = 0.05
    borderline_recoveries: Count = 1
    # What a borderline run gets when no reviewer is configured.
    borderline_without_reviewer: Literal["promote", "needs_human"] = "promote"

    @classmethod
    def resolve(cls, layers: dict[str, Any], provider: str, environment: str) -> PromotionGates:
        return cls(**_layered(layers, provider, environment))


class EvaluationLifts(_Section):
    """What a candidate must clear against the incumbent (regression gate)."""

    # One round on the embedded model lifts in-distribution by about 8 points (paired McNemar
    # over 1,889 instances; bench/results/loop.md). The default asks for half a point on top of
    # significance, which guards against noise. Raise it where a retrain must buy more.
    min_lift: Share = 0.005  # a pass-rate difference: a negative one would pass a worse model
    # A level above 0.5 calls a coin flip significant.
    significance: float = Field(default=0.05, gt=0, le=0.5)
    max_heldout_regression: Share = 0.02
    max_category_regression: Share = 0.05
    max_latency_ratio: Positive = 1.5
    max_cost_ratio: Positive = 1.5
    # mid-p rarely exceeds the nominal level and has more power than the exact test
    # (Fagerland, Lydersen & Laake 2013); "exact" is the conservative choice.
    significance_test: Literal["mid_p", "exact"] = "mid_p"
    # Category cells with fewer distinct instances are flagged as noisy in the comparison notes.
    small_category_instances: Count = 30
    # Canary analysis: runs each slot (canary, primary) needs in the window before a verdict.
    min_canary_runs: PositiveInt = 200
    # Canary non-inferiority margin on live traffic. The replay already proved the lift on paired
    # instances; the canary guards against a collapse outside the catalog, and proving
    # non-inferiority within 2 points on unpaired runs needs ~8,000 runs per slot, within 5
    # points a few hundred.
    canary_margin: Share = 0.05

    @classmethod
    def resolve(cls, layers: dict[str, Any], provider: str, environment: str) -> EvaluationLifts:
        return cls(**_layered(layers, provider, environment))


def _layered(layers: dict[str, Any], provider: str, environment: str) -> dict[str, Any]:
    merged: dict[str, Any] = dict(layers.get("default") or {})
    merged.update((layers.get("providers") or {}).get(provider) or {})
    merged.update((layers.get("environments") or {}).get(environment) or {})
    return merged


class IngestSettings(_Section):
    max_quarantine_rate: Share = 0.05
    max_record_bytes: PositiveInt = 10 * 1024 * 1024


class MirrorSettings(_Section):
    """Azure Blob mirror of the landing zone and artifacts. Off unless a container is set."""

    container: str | None = None
    prefix: str = "autoretrain"
    account_url: str | None = None  # used with DefaultAzureCredential
    connection_string_env: str = "AZURE_STORAGE_CONNECTION_STRING"
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)  # first retry wait; doubles per retry
    backoff_max_s: float = Field(default=10.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    workers: int = Field(default=4, ge=1)  # files uploaded in parallel
    # Azure Table mirror of run summaries and promotion decisions (runs/table_mirror.py): off
    # unless runs_table is set; same credentials as the Blob mirror, or DefaultAzureCredential
    # against table_endpoint. Table names: letters and digits, starting with a letter.
    runs_table: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9]{2,62}$")
    promotions_table: str | None = Field(
        default="autoretrainpromotions", pattern=r"^[A-Za-z][A-Za-z0-9]{2,62}$"
    )
    table_endpoint: str | None = None  # https://<account>.table.core.windows.net


class SelfPlaySettings(_Section):
    # A loop round learns from the verified runs among these; on the embedded model the lift of
    # two rounds grew with them: 8,000 runs +7.1 to +7.8 points, 16,000 +9.2 to +9.4, 24,000
    # +9.95 to +10.85 (bench/results/trials/loop_recipe.md). 24,000 take ~2 minutes on 2 cores.
    runs_per_iteration: PositiveInt = 24000
    temperature: float = Field(default=0.8, ge=0)
    # Runs in flight: the batch size of a local model (bigger batches amortise each decode
    # step: 128 ran ~1.1x the runs/s of 64 on the embedded model, 256 ~1.2x; bench/results/
    # selfplay.md), parallel requests otherwise.
    concurrency: int = Field(default=128, ge=1)
    # Processes a local model plays in, each with its own copy, taking chunks of runs as it
    # comes free. One batched decoder keeps one core busy: on 2 cores, 2 played the embedded
    # model's runs at 295/s against 158 for one process (24,000 runs at 256 in flight, start-up
    # included; bench/results/selfplay.md). Sampled runs are the same for a seed with any
    # number above 1; 1 refills its batch as runs finish instead (another sample). Other
    # providers ignore it (they run `concurrency` requests at once).
    workers: int = Field(default=2, ge=1)
    # Per model turn. A batch decodes until its longest member stops, so the cap sets self-play
    # speed; the catalog's longest reference turn is 40 tokens of the embedded tokenizer.
    max_tokens: PositiveInt = 48
    canary_share: Share = 0.0
    category_weights: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    seed: int = 0
    # How a round's runs are shared out among train scenarios (autoretrain/allocation.py):
    # `catalog`, by the catalog's `selfplay_weight`s; `measured`, by the incumbent's measured
    # pass rate per scenario (p(1 - p), a floor for solved behaviours, an exploration share for
    # unsolved ones, a boost for the categories the last rejected round regressed), after an
    # even pilot of `pilot_share` of the runs when the store knows too little of the incumbent.
    # Weights set in the catalog or in `category_weights` stay as they are either way.
    allocation: Literal["catalog", "measured"] = "catalog"
    pilot_share: Share = 0.1
    min_observations: Count = 30
    allocation_floor: Share = 0.2
    explore_share: Share = 0.1
    regression_boost: float = Field(default=3.0, ge=1)
    # A provider profile (a stronger model: Azure OpenAI, vLLM, ...) that plays the scenarios
    # the incumbent never solved, so their verified runs can train it (measured allocation).
    teacher: str | None = None

    def allocation_policy(self) -> Any:
        from autoretrain.allocation import AllocationPolicy

        return AllocationPolicy(
            pilot_share=self.pilot_share,
            min_observations=self.min_observations,
            floor=self.allocation_floor,
            explore_share=self.explore_share,
            regression_boost=self.regression_boost,
        )


class DatasetSettings(_Section):
    # Below 1: a ratio of 1 would leave nothing to train on.
    eval_ratio: float = Field(default=0.1, ge=0, lt=1)
    min_examples_per_category: Count = 5
    # REFERENCE.md's recipe caps each category, so the easy ones (declines, clarifying
    # questions) do not drown the ones the model is still learning. The catalog's self-play
    # weights already send few runs to those; at 250 the cap threw away most of the verified
    # runs of the categories being learned, and lifted a round by half as much
    # (bench/results/trials/loop_recipe.md).
    max_examples_per_category: PositiveInt | None = 3000
    min_new_promotable_runs: Count = 200
    max_tool_output_chars: PositiveInt = 4000
    extra_secret_patterns: list[str] = Field(default_factory=list)
    azure_bom: bool = False
    # The target model's tokenizer (a save_pretrained folder); without one, token counts are a
    # whitespace estimate and the manifest says so.
    tokenizer_dir: Path | None = None
    max_example_tokens: PositiveInt | None = None  # target context; longer ones are excluded
    # Reference solutions (curation/reference.py) added for each train scenario the incumbent
    # never solved in `selfplay.min_observations` runs or more: self-play cannot teach those.
    reference_demos_per_unsolved_scenario: Count = 0
    # Processes that check runs (promotion decisions, then the build's conversion and checks)
    # once a day range or build passes 50,000 runs; a loop round's stay in one. Unset: one per
    # core up to 4; 1: always in-process. Same decisions and same bytes either way
    # (autoretrain/parallel.py).
    workers: PositiveInt | None = None

    @field_validator("extra_secret_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        # The redactor compiles them with `re` too; a broken one must fail at load, not mid-build.
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"dataset.extra_secret_patterns[{index}] = {pattern!r}: not a regular "
                    f"expression ({exc})"
                ) from None
        return patterns


class TrainingSettings(_Section):
    method: Literal["auto", "full", "lora", "qlora"] = "auto"
    epochs: PositiveInt = 3
    learning_rate: Positive = 1e-3
    batch_size: PositiveInt = 16
    max_seq_len: PositiveInt = 512
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    seed: int = 0
    early_stopping_patience: PositiveInt | None = 3
    # The learning rate of a round whose incumbent's last candidate the gate rejected for a
    # category that fell (it forgot a behaviour the incumbent had): a gentler step keeps more
    # of what the incumbent does (bench/results/forgetting_trial.md measures
    # the trade). None: every round uses `learning_rate`.
    learning_rate_after_regression: Positive | None = None
    # The share of a round's fine-tuning step its candidate keeps: incumbent + f * (tuned -
    # incumbent) (WiSE-FT weight interpolation). On the shipped catalog's round 1, 0.75 kept
    # the held-out declines two training orders had dropped, for about a point of
    # in-distribution lift (bench/results/interpolation_trial.md); round 2 at 0.75 still
    # dropped them (bench/results/trials/step-fraction/), so 1, the whole step, stays.
    step_fraction: float = Field(default=1.0, gt=0, le=1)
    # Choose each round's epoch count on a slice of phrasings it did not train on: a probe
    # trains without one train scenario per category (3+ scenarios), saving every epoch, and
    # the candidate trains as many epochs as kept the slice closest to the incumbent
    # (training/phrasing_slice.py). Costs about one more training run per round. Local
    # training with the built-in workflow only.
    phrasing_slice: bool = False
    # Where a round's fine-tune starts: `base`, the root of the incumbent's lineage (v0 for the
    # embedded model), retrained each round on the round's dataset, as ReST-EM does to keep
    # iterations from drifting; `incumbent`, the model in the primary slot (each round builds
    # on the last). Either way the candidate is judged against the incumbent and registered as
    # its child. On the shipped catalog a second round from the incumbent forgot held-out
    # refusals (−11.4 points, rejected); from v0 it was promoted at +9.8 over v0, held-out
    # +6.9 (bench/results/trials/init_from_base.md).
    init_from: Literal["incumbent", "base"] = "base"
    merge_adapter: bool = False
    time_budget_s: Positive | None = None
    # The embedded base model (`autoretrain bootstrap`): demonstrations per train scenario, and
    # its training time budget. The schedule is fixed, so a build that ends within the budget is
    # reproducible: it took 96 s on the two idle cores of one machine and 275 s on another's
    # (2026-12-05), which 240 s cut off at ~3,800 of 4,368 steps. Fitting a shorter whole schedule
    # to the budget instead built no better base (bench/results/trials/bootstrap.md).
    bootstrap_demos_per_scenario: PositiveInt = 48
    bootstrap_time_budget_s: Positive = 600.0
    # Calibrate the base to the catalog (training/bootstrap.py, `Calibration`): after the uniform
    # build, probe its pass rate per category on fresh train instances, build again with twice
    # the demonstrations for categories below 10% and a quarter for those at 95% or more, and
    # keep the build that passes more per category; both builds share the time budget. On the
    # shipping catalog: base 38.6% -> 46.8% in-distribution, and the loop's round 1 from it
    # promoted at +6.2 (+2.4, rejected, from the uniform base; trials/bootstrap_calibration.md).
    # On the shipped catalog the calibrated build probed lower and the uniform one was kept, at
    # twice the bootstrap time (trials/shipped_calibration.md), and on kitchen too
    # (trials/unified_defaults.md): it helps one catalog of three, so it is off by default.
    bootstrap_calibration: bool = False
    # Where a candidate is trained: here (transformers + peft), or as an Azure OpenAI fine-tuning
    # job of the provider profile `hosted_profile` (default: the active provider).
    backend: Literal["local", "azure"] = "local"
    hosted_profile: str | None = None
    hosted_base_model: str | None = None  # the first hosted candidate's base model
    hosted_timeout_s: Positive = 24 * 3600.0  # a wait longer than this leaves the job running
    hosted_poll_max_s: Positive = 60.0  # the longest pause between two polls of a job
    hosted_price_per_1k_training_tokens: float | None = Field(default=None, ge=0)


class EvaluationSettings(_Section):
    instances_per_scenario: PositiveInt = 70
    samples_per_instance: PositiveInt = 1
    bootstrap_samples: PositiveInt = 2000
    # One greedy sample per instance by default; with several, this temperature and per-sample
    # seeds shared by both models.
    temperature: float = Field(default=0.8, ge=0)
    seed: int = 0
    batch_size: int = Field(default=128, ge=1)  # runs answered per batched call (or in flight)
    max_tokens: int = Field(default=48, ge=1)  # per model turn (see SelfPlaySettings)
    # Above this share of runs failing at the provider (after its retries), the replay failed.
    max_provider_error_rate: float = Field(default=0.01, ge=0, le=1)


class LoopSettings(_Section):
    """`autoretrain loop` (and `make demo`)."""

    iterations: int = Field(default=1, ge=1)


class ServeSettings(_Section):
    """`autoretrain serve`: what one request may cost the server (413 / 408 above it)."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)  # counted while reading
    max_message_bytes: int = Field(default=1024 * 1024, gt=0)  # one message's content
    # Prompt tokens one request may bring (400 context_length_exceeded above); None: the
    # model's own context length.
    max_prompt_tokens: int | None = Field(default=None, gt=0)
    # Requests with a body at least this big are answered alone, taking turns with batches of
    # the small ones, so a big request never holds a small one for more than its own turn.
    large_request_bytes: int = Field(default=64 * 1024, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)  # the request line and headers
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole body, from its first byte


class GatewayTarget(_Section):
    """Where the gateway forwards a slot or a registry version: an OpenAI-compatible endpoint
    (`base_url` ends in /v1) or an Azure OpenAI resource (`base_url` is its endpoint, `model`
    the deployment; Entra ID first unless `use_entra_id` is off, then the key in `api_key_env`).
    Without `model`, the name follows the registry: the slot's hosted model id or version id."""

    kind: Literal["openai_compatible", "azure_openai"] = "openai_compatible"
    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    api_version: str = "2024-10-21"
    use_entra_id: bool = True


class GatewaySettings(_Section):
    """`autoretrain gateway` (autoretrain/gateway/): the capture gateway agents point at."""

    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=1, le=65535)
    # Slot name (primary, canary) or version id -> upstream. A local registry version with no
    # entry of its own is forwarded to `serve_url` (a running `autoretrain serve`, .../v1).
    targets: dict[str, GatewayTarget] = Field(default_factory=dict)
    serve_url: str | None = None
    # A `model` that names no slot, version or target goes here (an agent that sends its own
    # model name needs no change); None answers it 404.
    default_slot: str | None = "primary"
    canary_share: Share = 0.0  # of primary traffic, per run, while canary holds a version
    run_idle_s: Positive = 300.0  # a run with no call or event for this long is written
    max_open_runs: PositiveInt = 10000  # beyond it the least recent run is written early
    max_buffered_runs: PositiveInt = 10000  # runs waiting for the landing zone; more are dropped
    flush_interval_s: Positive = 1.0
    registry_ttl_s: Positive = 1.0  # promotions and rollbacks are seen within this
    timeout_s: Positive = 600.0  # one upstream call


class AgentSettings(_Section):
    """Which agent self-play and the evaluation replay run (autoretrain/agents/http_agent.py):
    the built-in workflow, or a team's own agent behind `POST /run`."""

    kind: Literal["builtin", "http"] = "builtin"
    url: str | None = None  # the agent's /run endpoint, e.g. http://localhost:9000/run
    auth_header: str = "Authorization"
    # The header's value is read from this variable at call time (never stored in settings);
    # for `Authorization` it is sent as `Bearer <value>` unless it already names a scheme.
    auth_env: str | None = None
    timeout_s: Positive = 120.0  # one /run call, the agent's whole run
    concurrency: PositiveInt = 8  # /run calls in flight
    # The gateway's OpenAI base URL (…/v1): sent to the agent, and where autoretrain attaches
    # the scenario, verification and final answer to the run the gateway captured.
    gateway_url: str | None = None

    @model_validator(mode="after")
    def _http_needs_url(self) -> AgentSettings:
        if self.kind == "http" and not self.url:
            raise ValueError("agent.kind = 'http' needs agent.url (the agent's POST /run URL)")
        return self


class TelemetrySettings(_Section):
    """OpenTelemetry spans and metrics per run and per model call (autoretrain/telemetry.py),
    following the GenAI semantic conventions. Off unless `enabled`; then exported by OTLP/HTTP
    to `otlp_endpoint` (else the standard OTEL_EXPORTER_OTLP_ENDPOINT) and to Azure Monitor
    when the variable `azure_monitor_connection_string_env` holds a connection string."""

    enabled: bool = False
    otlp_endpoint: str | None = None  # base URL, e.g. http://collector:4318 (/v1/... appended)
    azure_monitor_connection_string_env: str = "APPLICATIONINSIGHTS_CONNECTION_STRING"
    service_name: str = "autoretrain"
    capture_content: bool = False  # gen_ai.input/output.messages on chat spans (opt-in)
    export_timeout_s: float = Field(default=10.0, gt=0)


class ToolSpec(_Section):
    """A tool by import path (autoretrain/plugins.py): it joins the catalog's tool registry, and
    scenarios may list it in `tools`. A plain string in `tools:` is the `function` alone."""

    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # module:function
    name: str | None = None  # default: the function's name
    description: str | None = None  # default: the docstring's first paragraph
    # JSON Schema of the arguments object; default: derived from the type hints and docstring.
    parameters: dict[str, Any] | None = None


class GraderSettings(_Section):
    """Who grades `rubric` scenarios: the model of a provider profile's slot (a judge). Without
    a profile, rubric answers fail with "no grader configured", so they never train a model."""

    rubric_profile: str | None = None
    rubric_slot: str = "primary"
    timeout_s: Positive = 30.0  # one grading call (rubric judge or python grader)


class Settings(_Section):
    home: Path = Path("data")
    environment: str = "local"
    provider: str = "local"
    providers: dict[str, ProviderProfile] = Field(
        default_factory=lambda: {"local": ProviderProfile(kind="local")}
    )
    pricing: dict[str, Price] = Field(default_factory=dict)
    gates: dict[str, Any] = Field(default_factory=dict)
    lifts: dict[str, Any] = Field(default_factory=dict)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    mirror: MirrorSettings = Field(default_factory=MirrorSettings)
    selfplay: SelfPlaySettings = Field(default_factory=SelfPlaySettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    loop: LoopSettings = Field(default_factory=LoopSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    scenarios_dir: Path = Path("scenarios")
    # Tools by import path that join every catalog's registry (see docs/scenarios.md).
    tools: list[ToolSpec] = Field(default_factory=list)
    graders: GraderSettings = Field(default_factory=GraderSettings)

    model_config = ConfigDict(extra="forbid", ignored_types=(cached_property,))

    @cached_property
    def paths(self) -> Paths:
        return Paths(self.home)

    @property
    def profile(self) -> ProviderProfile:
        try:
            return self.providers[self.provider]
        except KeyError:
            raise SettingsError(
                f"provider profile {self.provider!r} is not defined; "
                f"known profiles: {sorted(self.providers)}"
            ) from None

    @field_validator("gates", "lifts")
    @classmethod
    def _layers_are_valid(cls, layers: dict[str, Any], info: Any) -> dict[str, Any]:
        # A typo or a value out of range in a gate or lift must fail at load time, naming where
        # it is, not surface later inside a scoring run (or be silently ignored). A field
        # validator, so its errors are reported together with every other section's.
        name = info.field_name
        model = PromotionGates if name == "gates" else EvaluationLifts
        unknown = sorted(set(layers) - {"default", "providers", "environments"})
        if unknown:
            raise ValueError(
                f"{name}: unknown keys {unknown}; put values under {name}.default, "
                f"{name}.providers.<profile> or {name}.environments.<environment>"
            )
        places = [("default", _or_empty(layers.get("default")))]
        for kind in ("providers", "environments"):
            named = _or_empty(layers.get(kind))
            if not isinstance(named, dict):
                raise ValueError(f"{name}.{kind} = {_shown(named)}: expected a mapping of names")
            places += [(f"{kind}.{k}", _or_empty(v)) for k, v in named.items()]
        for where, values in places:
            if not isinstance(values, dict):
                raise ValueError(f"{name}.{where} = {_shown(values)}: expected a mapping")
            try:
                model(**values)
            except ValidationError as exc:
                raise ValueError(_problems(exc, prefix=f"{name}.{where}.")) from None
        return layers

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_strings(cls, tools: Any) -> Any:
        # `- mypkg.tools:weather` is shorthand for `- function: mypkg.tools:weather`.
        if isinstance(tools, list):
            return [{"function": t} if isinstance(t, str) else t for t in tools]
        return tools

    @model_validator(mode="after")
    def _rubric_profile_is_defined(self) -> Settings:
        name = self.graders.rubric_profile
        if name is not None and name not in self.providers:
            raise ValueError(
                f"graders.rubric_profile = {name!r}: no such profile; known profiles: "
                f"{sorted(self.providers)}"
            )
        return self

    @model_validator(mode="after")
    def _provider_is_defined(self) -> Settings:
        if self.provider not in self.providers:
            raise ValueError(
                f"provider = {self.provider!r}: no such profile; known profiles: "
                f"{sorted(self.providers)} (define it under providers.{self.provider})"
            )
        return self

    def promotion_gates(self) -> PromotionGates:
        return PromotionGates.resolve(self.gates, self.provider, self.environment)

    def evaluation_lifts(self) -> EvaluationLifts:
        return EvaluationLifts.resolve(self.lifts, self.provider, self.environment)


# Environment variables that override the file, and the field each sets.
_ENV_OVERRIDES = {
    "AUTORETRAIN_HOME": "home",
    "AUTORETRAIN_ENV": "environment",
    "AUTORETRAIN_PROVIDER": "provider",
    "AUTORETRAIN_SCENARIOS": "scenarios_dir",
}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from defaults, the YAML file, the environment, then explicit overrides."""
    named = os.environ.get("AUTORETRAIN_CONFIG")
    path = config_file or Path(named or CONFIG_FILE)
    if named and config_file is None and not path.exists():
        raise SettingsError(f"AUTORETRAIN_CONFIG names {path}, which does not exist")
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: expected a mapping at the top level")
    from_env = {}
    for env, field in _ENV_OVERRIDES.items():
        if os.environ.get(env):
            data[field] = os.environ[env]
            from_env[field] = env
    data.update(overrides)
    for field in overrides:
        from_env.pop(field, None)
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = path if path.exists() else "settings (no configuration file)"
        # Name the variable when the bad value came from the environment, not the file.
        env_note = "".join(
            f" ({field} comes from ${env})"
            for field, env in from_env.items()
            if any(e["loc"][:1] == (field,) or field in str(e["msg"]) for e in exc.errors())
        )
        raise SettingsError(f"{where}: {_problems(exc)}{env_note}") from exc


def _problems(exc: ValidationError, prefix: str = "") -> str:
    """Every error as `setting = bad value: what is wrong`, joined by `; `."""
    out = []
    for err in exc.errors():
        if err["type"] == "value_error":
            # Raised by our validators, whose message names the setting and its value.
            out.append(str(err["ctx"]["error"]))
            continue
        name = prefix + ".".join(str(p) for p in err["loc"])
        out.append(f"{name} = {_shown(err['input'])}: {err['msg']}")
    return "; ".join(out)


def _or_empty(value: Any) -> Any:
    return {} if value is None else value  # `default:` with nothing under it is no layer


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
