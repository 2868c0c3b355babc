"""What a training run is asked to do (TrainConfig) and what it produced (TrainResult, with its
TrainMetrics)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["auto", "full", "lora", "qlora"]

# Below this many parameters "auto" fine-tunes every weight: on the tiny embedded model full
# fine-tuning beat LoRA r=16 in every trial (REFERENCE.md), and optimizer state for a model this
# small is a few hundred MB at most. Above it, LoRA: full fine-tuning a 1B+ model needs ~16 bytes
# per parameter of optimizer state, which a workstation does not have.
FULL_FINETUNE_MAX_PARAMS = 300_000_000


@dataclass
class TrainConfig:
    method: Method = "auto"
    epochs: float = 3
    learning_rate: float = 1e-3
    batch_size: int = 16  # conversations per optimizer step (packed into rows of max_seq_len)
    max_seq_len: int = 512
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    seed: int = 0
    early_stopping_patience: int | None = 3  # evaluations without improvement; None: never stop
    evals_per_epoch: int = 1
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    packing: bool = True
    merge_adapter: bool = False
    # The share of the fine-tuning step the saved model keeps: base + f * (tuned - base)
    # (training/interpolate.py). Below 1 it needs whole weights: a full fine-tune or a merge.
    step_fraction: float = 1.0
    time_budget_s: float | None = None
    # Save the model at the end of every whole epoch too, under <version>/epochs/epoch-<n>
    # (the phrasing-slice probe replays each one: training/phrasing_slice.py).
    epoch_snapshots: bool = False
    checkpoint_every_s: float = 30.0
    mix_in: list[str] = field(default_factory=list)  # extra JSONL files added to the train split
    torch_threads: int | None = None  # None: torch's default (one per core)
    progress: bool | None = None  # None: a bar when stderr is a terminal, log lines otherwise

    def __post_init__(self) -> None:
        if self.method not in ("auto", "full", "lora", "qlora"):
            raise ValueError(f"method must be auto, full, lora or qlora, not {self.method!r}")
        for name in ("epochs", "learning_rate", "batch_size", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], not {self.step_fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, *parts: str) -> str:
        """Identifies a run for resuming: the config (minus what does not change the result)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("progress",)}
        blob = json.dumps([data, *parts], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_settings(cls, training: Any, **overrides: Any) -> TrainConfig:
        """Defaults from `settings.training`, then explicit overrides (None values ignored)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in training.model_dump().items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class TrainMetrics(Mapping[str, Any]):
    """What a training run reports. `record` is the whole record as written to
    training_metrics.json and the registry (a local run's and a hosted job's keys differ); the
    properties are the numbers the stages read (the UI's metadata and loss curves, the CLI's
    summary), named once here. It still reads as a mapping, key by key, like the record."""

    record: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.record)

    def __len__(self) -> int:
        return len(self.record)

    @property
    def steps(self) -> int | None:
        return self.record.get("steps")

    @property
    def stopped_by(self) -> str | None:
        return self.record.get("stopped_by")

    @property
    def final_train_loss(self) -> float | None:
        return self.record.get("final_train_loss")

    @property
    def best_eval_loss(self) -> float | None:
        return self.record.get("best_eval_loss")

    @property
    def tokens_per_s(self) -> float | None:
        return self.record.get("tokens_per_s")

    @property
    def train_seconds(self) -> float | None:
        return self.record.get("train_seconds")

    @property
    def trained_tokens(self) -> int | None:
        """Tokens trained on: a hosted job says `trained_tokens`, the local trainer `train_tokens`."""
        return self.record.get("trained_tokens") or self.record.get("train_tokens")

    @property
    def train_loss(self) -> list[tuple[int, float]]:
        """(step, loss) of every optimizer step (empty for a hosted job)."""
        return [(int(s), float(v)) for s, v in self.record.get("train_loss") or []]

    @property
    def eval_loss(self) -> list[tuple[int, float]]:
        """(step, loss) of every validation pass."""
        return [(int(s), float(v)) for s, v in self.record.get("eval_loss") or []]


@dataclass
class TrainResult:
    output_dir: Path
    method: str
    metrics: TrainMetrics
    model_dir: Path  # what a provider loads: the full model, the merged model, or the adapter
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
