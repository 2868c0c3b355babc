"""What a training run is asked to do (TrainConfig) and what it produced (TrainResult)."""

from __future__ import annotations

import hashlib
import json
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
    time_budget_s: float | None = None
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


@dataclass
class TrainResult:
    output_dir: Path
    method: str
    metrics: dict[str, Any]
    model_dir: Path  # what a provider loads: the full model, the merged model, or the adapter
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
