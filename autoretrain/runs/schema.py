"""The canonical record of one agent run.

Messages follow the OpenAI chat shape (tool calls carry an id and JSON-*string* arguments), so a
run's transcript can become a fine-tuning example without translation. Every model here keeps
fields it does not know (`extra="allow"`): records from other agent apps round-trip intact.

Bump SCHEMA_VERSION only with a migration; ingest quarantines versions it does not know.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = frozenset({1})

# The times a run can hold: a record from before the Unix epoch or from the far future is a
# broken clock or a hostile writer, and the upper bound keeps every UTC conversion (`Run.day`)
# inside Python's datetime range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in_range(value: datetime) -> datetime:
    """A naive time is UTC (as DuckDB reads it); the result is always aware and in range."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"timestamp out of range: {EARLIEST.date()} to {LATEST.date()} (UTC)")
    return value


Timestamp = Annotated[datetime, AfterValidator(_in_range)]
# Counts, durations and money are never negative, and never infinite or NaN; a count fits the
# store's BIGINT columns.
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FunctionCall(_Record):
    name: str
    arguments: str = "{}"  # a JSON string, as OpenAI sends it; may be malformed model output

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_string(cls, value: Any) -> Any:
        # Some apps log arguments as an object; store the JSON string OpenAI would have sent.
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return value


class ToolCall(_Record):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Record):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class Usage(_Record):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


class EventType(StrEnum):
    RUN_STARTED = "run_started"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"
    MODEL_CALL = "model_call"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    VERIFICATION = "verification"
    RECOVERY = "recovery"
    ESCALATION = "escalation"
    ERROR = "error"
    RUN_FINISHED = "run_finished"


class WorkflowEvent(_Record):
    type: str  # an EventType value; other apps may add their own types
    agent: str = "executor"
    at: Timestamp = Field(default_factory=utcnow)
    duration_s: Amount | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class Verification(_Record):
    verifier: str
    passed: bool
    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    feedback: str = ""
    attempt: Count = 0


class RecoveryAction(_Record):
    attempt: Count
    reason: str
    action: str = "retry_with_feedback"
    at: Timestamp = Field(default_factory=utcnow)


class Escalation(_Record):
    reason: str
    at: Timestamp = Field(default_factory=utcnow)


RunStatus = Literal["succeeded", "failed", "escalated", "error", "running"]
Traffic = Literal["selfplay", "evaluation", "production", "import", "demo"]


class Run(_Record):
    """One agent run, from the first prompt to the final verdict."""

    schema_version: Literal[tuple(sorted(KNOWN_SCHEMA_VERSIONS))] = SCHEMA_VERSION  # type: ignore[valid-type]
    run_id: Annotated[str, Field(pattern=r"\S")]  # not empty, not only blanks
    scenario_id: str | None = None
    instance_hash: str | None = None  # hash of the rendered prompt (see scenarios.py)
    instance_seed: int | None = None
    category: str | None = None
    workflow: str = "executor"
    agent_version: str = "unknown"
    provider: str = "unknown"
    model: str = "unknown"
    slot: str | None = None
    traffic: Traffic = "production"
    status: RunStatus = "running"
    started_at: Timestamp = Field(default_factory=utcnow)
    ended_at: Timestamp | None = None
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    events: list[WorkflowEvent] = Field(default_factory=list)
    verifications: list[Verification] = Field(default_factory=list)
    recoveries: list[RecoveryAction] = Field(default_factory=list)
    escalations: list[Escalation] = Field(default_factory=list)
    final_answer: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: Amount | None = None
    cost_usd: Amount | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ends_after_it_starts(self) -> Run:
        # Runtime budgets read ended_at - started_at; a negative runtime would pass any budget.
        if self.ended_at is not None and self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        return self

    @property
    def day(self) -> str:
        """The landing-zone partition (UTC date the run started)."""
        return self.started_at.astimezone(UTC).date().isoformat()

    @property
    def verified(self) -> bool:
        return bool(self.verifications) and self.verifications[-1].passed

    def to_json(self) -> str:
        # exclude_none keeps records compact; absent and null read back the same.
        return self.model_dump_json(exclude_none=True)


def run_json_schema() -> dict[str, Any]:
    schema = Run.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://autoretrain.dev/schema/run/v{SCHEMA_VERSION}.json"
    return schema
