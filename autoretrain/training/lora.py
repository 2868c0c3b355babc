"""Local trainer: full fine-tuning, LoRA or QLoRA of any Hugging Face causal LM directory.

`train()` checks the dataset and the chat template's loss mask before loading anything heavy,
trains with the shared loop (`loop.py`), and writes the version atomically: everything goes into
a hidden `.<version>.partial/` folder beside the target, renamed to the target only at the end.
An interrupted run leaves no half-written version; rerunning the same command resumes from the
partial folder's last checkpoint (when the config, data and base model are unchanged).

What "auto" picks, and why: full fine-tuning below `FULL_FINETUNE_MAX_PARAMS` (on the tiny
embedded model it beat LoRA in every trial, and the optimizer state is small), LoRA above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoretrain.training.config import (
    FULL_FINETUNE_MAX_PARAMS,
    TrainConfig,
    TrainMetrics,
    TrainResult,
)
from autoretrain.training.data import (
    DatasetError,
    Encoded,
    encode_all,
    end_of_turn_ids,
    load_splits,
)
from autoretrain.training.precision import stored_dtype
from autoretrain.training.templates import end_of_turn_ids as family_end_of_turn_ids
from autoretrain.training.templates import ensure_generation_markers

log = logging.getLogger(__name__)

METRICS_FILE = "training_metrics.json"
CONFIG_FILE = "train_config.json"
SNAPSHOTS_DIR = "epochs"  # the epoch-end models of a run with `epoch_snapshots`


class TrainingError(RuntimeError):
    """Training cannot start or finish; the message says why and what to do."""


def train(
    dataset_dir: Path,
    base_model_dir: Path,
    output_dir: Path,
    config: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> TrainResult:
    """Train a new version from `dataset_dir` on top of `base_model_dir` into `output_dir`."""
    import torch

    previous_threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        return _train(
            dataset_dir, base_model_dir, output_dir, config,
            on_step=on_step, extra_metadata=extra_metadata, extra_files=extra_files,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    dataset_dir: Path,
    base_model_dir: Path,
    output_dir: Path,
    config: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    extra_metadata: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> TrainResult:
    started = time.monotonic()
    dataset_dir, base_model_dir, output_dir = (
        Path(dataset_dir),
        Path(base_model_dir),
        Path(output_dir),
    )
    if output_dir.exists():
        raise TrainingError(
            f"{output_dir} already exists; versions are never overwritten: pick a new version"
        )
    if config.method == "qlora":
        _require_qlora()
    data = _encoded_data(dataset_dir, base_model_dir, config)
    tokenizer, train_set, eval_set = data.tokenizer, data.train_set, data.eval_set

    accelerator = _accelerator()
    partial = output_dir.with_name(f".{output_dir.name}.partial")
    fingerprint = config.fingerprint(
        _files_digest(dataset_dir, config.mix_in), str(base_model_dir.resolve())
    )
    if accelerator.is_main_process:
        _prepare_partial(partial, fingerprint)
    accelerator.wait_for_everyone()

    model, method = _load_model(base_model_dir, config)
    if config.step_fraction < 1:
        _check_interpolable(base_model_dir, method, config)
    total_params = sum(p.numel() for p in model.parameters())
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "training %s: %s, %d of %d parameters, %d train / %d eval conversations",
        base_model_dir, method, trainable_params, total_params, len(train_set), len(eval_set),
    )  # fmt: skip
    from autoretrain.training.loop import CHECKPOINT_FILE, train_loop

    metrics = train_loop(
        model,
        train_set,
        eval_set,
        config,
        pad_id=tokenizer.pad_token_id,
        workdir=partial,
        accelerator=accelerator,
        on_step=on_step,
        on_epoch=_epoch_snapshots(config, partial, tokenizer, method, base_model_dir, accelerator),
    )
    model = accelerator.unwrap_model(model)
    metrics.update(
        method=method,
        learning_rate=config.learning_rate,
        total_params=total_params,
        trainable_params=trainable_params,
        examples=data.counts(),
        trained_tokens_per_epoch=sum(e.n_trained for e in train_set),
        peak_rss_mb=_peak_rss_mb(),
    )

    if accelerator.is_main_process:
        _save_model(model, tokenizer, method, config, partial, stored_dtype(base_model_dir))
        if config.step_fraction < 1:
            from autoretrain.training.interpolate import interpolate_weights

            saved = partial if method == "full" else partial / "merged"
            interpolate_weights(base_model_dir, saved, None, config.step_fraction)
            metrics["step_fraction"] = config.step_fraction
        (partial / CHECKPOINT_FILE).unlink(missing_ok=True)
        metrics["wall_seconds"] = round(time.monotonic() - started, 3)
        record = {
            "config": config.to_dict(),
            "method": method,
            "dataset_dir": str(dataset_dir.resolve()),
            "base_model_dir": str(base_model_dir.resolve()),
            "fingerprint": fingerprint,
            "versions": _library_versions(),
            **(extra_metadata or {}),
        }
        _publish(partial, output_dir, metrics, record, extra_files or {})
    accelerator.wait_for_everyone()
    log.info("saved %s (%s) in %.1f s", output_dir, method, metrics.get("wall_seconds", 0.0))
    return _result(output_dir, method, metrics, config)


def _epoch_snapshots(
    config: TrainConfig, partial: Path, tokenizer, method: str, base_model_dir: Path, accelerator
) -> Callable[[int, Any], None] | None:
    """With `config.epoch_snapshots`: a callback that saves the model as each epoch ends, as
    the version itself is saved (whole, or adapter plus merge), into epochs/epoch-<n>."""
    if not config.epoch_snapshots:
        return None
    dtype = stored_dtype(base_model_dir)

    def save(epoch: int, model: Any) -> None:
        if accelerator.is_main_process:
            target = partial / SNAPSHOTS_DIR / f"epoch-{epoch}"
            shutil.rmtree(target, ignore_errors=True)  # a resumed run saves that epoch again
            _save_model(model, tokenizer, method, config, target, dtype)

    return save


def _result(
    output_dir: Path, method: str, metrics: dict[str, Any], config: TrainConfig
) -> TrainResult:
    """Where the published version's weights are: the folder itself for a full fine-tune,
    else the adapter (and the merged model, which providers load when there is one)."""
    adapter_dir = merged_dir = None
    if method != "full":
        adapter_dir = output_dir / "adapter"
        merged_dir = output_dir / "merged" if config.merge_adapter else None
    model_dir = merged_dir or adapter_dir or output_dir
    return TrainResult(
        output_dir, method, TrainMetrics(metrics), model_dir, adapter_dir, merged_dir
    )


@dataclass
class _EncodedData:
    tokenizer: Any
    train_set: list[Encoded]
    eval_set: list[Encoded]
    train_too_long: int  # examples dropped for being over max_seq_len
    eval_too_long: int

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train_set),
            "eval": len(self.eval_set),
            "train_too_long": self.train_too_long,
            "eval_too_long": self.eval_too_long,
        }


def _accelerator():  # -> accelerate.Accelerator
    """CPU when there is no GPU; bf16 mixed precision on a GPU that has it."""
    import torch
    from accelerate import Accelerator

    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        else "no",
    )


def _encoded_data(dataset_dir: Path, base_model_dir: Path, config: TrainConfig) -> _EncodedData:
    """The dataset's splits (plus `mix_in`) encoded with the base model's tokenizer; refused
    when no train example fits in max_seq_len."""
    train_examples, eval_examples = load_splits(dataset_dir, config.mix_in)
    tokenizer, stop_ids = _tokenizer(base_model_dir)
    train_set, train_too_long = encode_all(tokenizer, train_examples, stop_ids, config.max_seq_len)
    eval_set, eval_too_long = encode_all(tokenizer, eval_examples, stop_ids, config.max_seq_len)
    if not train_set:
        raise DatasetError(
            f"{dataset_dir}: every train example is longer than max_seq_len={config.max_seq_len} tokens"
        )
    return _EncodedData(tokenizer, train_set, eval_set, train_too_long, eval_too_long)


def _publish(
    partial: Path,
    output_dir: Path,
    metrics: dict[str, Any],
    record: dict[str, Any],
    extra_files: dict[str, Path],
) -> None:
    """The metrics, the run's record and the extra files into the partial folder, which then
    becomes `output_dir` in one rename: a crash never leaves a half-written version."""
    (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    (partial / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    for name, source in extra_files.items():
        shutil.copyfile(source, partial / name)
    (partial / ".fingerprint").unlink(missing_ok=True)
    os.replace(partial, output_dir)


def _tokenizer(base_model_dir: Path):  # -> (tokenizer, end-of-turn token ids)
    """The base model's tokenizer, ready for training: generation markers in its template (a
    marker-less template of a known family, Qwen, Llama 3, ..., gets them; else refused), a pad
    token, and the ids that end an assistant turn."""
    from transformers import AutoConfig, AutoTokenizer

    if not (base_model_dir / "config.json").is_file():
        raise TrainingError(
            f"{base_model_dir}: not a Hugging Face model directory (no config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    family = ensure_generation_markers(tokenizer, str(base_model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_config = AutoConfig.from_pretrained(base_model_dir)
    stop_ids = end_of_turn_ids(tokenizer, getattr(model_config, "eos_token_id", None))
    stop_ids |= family_end_of_turn_ids(tokenizer, family)
    return tokenizer, stop_ids


def _save_model(
    model, tokenizer, method: str, config: TrainConfig, partial: Path, dtype: Any
) -> None:
    """The trained weights into the partial folder: the whole model for a full fine-tune, else
    the adapter (and the merged model when asked). Whole models are saved in the base's stored
    precision (`dtype`): training ran in float32 on CPU, but a bf16 base exported as float32
    would double its size for LM Studio and vLLM and change what it serves."""
    if method == "full":
        _in_precision(model, dtype).save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    else:
        model.save_pretrained(partial / "adapter")
        tokenizer.save_pretrained(partial / "adapter")
        if config.merge_adapter:
            _merge(model, tokenizer, partial / "merged", dtype)


def _check_interpolable(base_model_dir: Path, method: str, config: TrainConfig) -> None:
    """Before training: a step_fraction below 1 mixes whole weights, so both the base and
    the saved model must be whole (a full fine-tune or a merged adapter, one weights file)."""
    from autoretrain.training.interpolate import WEIGHTS

    if method != "full" and not config.merge_adapter:
        raise TrainingError(
            f"step_fraction={config.step_fraction} needs whole weights, but this {method} run "
            "saves an adapter only: set merge_adapter"
        )
    if not (base_model_dir / WEIGHTS).is_file():
        raise TrainingError(
            f"step_fraction={config.step_fraction} mixes the base's weights with the trained "
            f"ones, but {base_model_dir} has no single {WEIGHTS}"
        )


def _in_precision(model, dtype: Any):
    """`model` itself when it already is in `dtype`, else a copy cast to it."""
    import copy

    if next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def resolve_method(config: TrainConfig, n_params: int) -> str:
    if config.method != "auto":
        return config.method
    return "full" if n_params <= FULL_FINETUNE_MAX_PARAMS else "lora"


def _load_model(base_model_dir: Path, config: TrainConfig):
    import torch
    from transformers import AutoModelForCausalLM

    if config.method == "qlora":
        return _load_qlora(base_model_dir, config), "qlora"
    # float32 on CPU: bf16/fp16 matmuls there are slow or missing, and AdamW on 16-bit weights
    # loses small updates. On a GPU a LoRA base is frozen, so it stays in its stored precision
    # (bf16 autocast does the compute); full fine-tuning keeps float32 master weights.
    dtype = torch.float32
    if torch.cuda.is_available() and config.method == "lora":
        dtype = stored_dtype(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
    model.config.use_cache = False
    method = resolve_method(config, sum(p.numel() for p in model.parameters()))
    if method == "full":
        model.requires_grad_(True)
        return model, method
    return _with_lora(model, config), method


def _with_lora(model, config: TrainConfig):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)  # the adapter's random init is part of the run's seed

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _require_qlora() -> None:
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise TrainingError(
            "QLoRA needs a CUDA GPU: its 4-bit weights run on bitsandbytes CUDA kernels, and "
            "torch sees no CUDA device here. Use method 'lora' (or 'full' for small models) on "
            "this machine, or run on a GPU machine."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError("QLoRA needs the 'bitsandbytes' package: pip install bitsandbytes")


def _load_qlora(base_model_dir: Path, config: TrainConfig):
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model_dir,
        quantization_config=quantization,
        device_map={"": torch.cuda.current_device()},
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model)
    return _with_lora(model, config)


def _merge(model, tokenizer, target: Path, dtype: Any) -> None:
    """A full model directory for engines that cannot load adapters (transformers serve, GGUF),
    merged in float32 and saved in the base's stored precision."""
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    _in_precision(merged, dtype).save_pretrained(target)
    tokenizer.save_pretrained(target)


def _prepare_partial(partial: Path, fingerprint: str) -> None:
    """Keep a partial folder only if it belongs to this very run (same config, data, base)."""
    marker = partial / ".fingerprint"
    if partial.exists() and not (marker.exists() and marker.read_text() == fingerprint):
        log.info("discarding %s: it belongs to a different run", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def _files_digest(dataset_dir: Path, mix_in: list[str]) -> str:
    digest = hashlib.sha256()
    for path in [dataset_dir / "train.jsonl", dataset_dir / "eval.jsonl", *map(Path, mix_in)]:
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        name: version(name)
        for name in ("torch", "transformers", "peft", "accelerate", "tokenizers")
    }
