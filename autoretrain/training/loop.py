"""One small training loop for every local run: the base-model bootstrap, full fine-tuning and
LoRA. Plain torch plus `accelerate` for data parallelism (`accelerate launch` runs the same code
on two CPU processes or many GPUs).

Per step: the learning rate from a warmup + cosine schedule, one packed batch per process,
backward, clip, step. Packed rows run with segment attention (`segment_attention.py`: each
conversation attends only to itself, without the cost of the other conversations' scores) and
the output layer only at labelled positions (`LabelledHead`). Every `eval_every` steps the
eval split's loss decides early stopping and the best weights are kept; every
`checkpoint_every_s` seconds the state goes to a checkpoint that a rerun resumes from. Data
order depends only on (seed, epoch), so a resumed run ends with the weights an uninterrupted
one would have.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoretrain.training.config import TrainConfig
from autoretrain.training.data import Batch, Encoded, epoch_batches
from autoretrain.training.segment_attention import segments_attention

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class LoopState:
    step: int = 0
    train_loss: list[list[float]] = field(default_factory=list)  # [step, loss]
    eval_loss: list[list[float]] = field(default_factory=list)  # [step, loss]
    best_eval: float = math.inf
    best_step: int | None = None
    evals_without_improvement: int = 0
    tokens: int = 0  # real tokens trained on, all processes together
    train_seconds: float = 0.0


def learning_rate(step: int, total: int, config: TrainConfig) -> float:
    warmup = max(1, int(total * config.warmup_ratio))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = config.learning_rate * config.min_lr_ratio
    return floor + (config.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _in_segment_attention(loop: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Packed rows run with segment attention (each conversation attends only to itself,
    without computing the other conversations' masked-out scores); the model gets its own
    attention back when the loop ends."""

    @functools.wraps(loop)
    def wrapped(model, train_set, eval_set, config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
        with segments_attention(model) if config.packing else contextlib.nullcontext():
            return loop(model, train_set, eval_set, config, **kwargs)

    return wrapped


@_in_segment_attention
def train_loop(
    model,
    train_set: Sequence[Encoded],
    eval_set: Sequence[Encoded],
    config: TrainConfig,
    *,
    pad_id: int,
    workdir: Path,
    accelerator=None,
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Train `model` in place (its best weights restored at the end) and return the metrics.
    `on_epoch(epoch, model)` is called on every process at the end of each whole epoch, with the
    weights as they are then (not the best so far)."""
    import torch
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    trainable_names = [
        n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad
    ]
    head = LabelledHead(accelerator.unwrap_model(model))

    batches = functools.partial(_rank_batches, train_set, config, pad_id, rank, world)
    first_epoch = batches(0)
    steps_per_epoch = len(first_epoch)
    total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    eval_every = max(1, steps_per_epoch // max(1, config.evals_per_epoch))
    checkpoint = workdir / CHECKPOINT_FILE
    state, best, resumed_from = _resume(checkpoint, accelerator, model, optimizer, total_steps)

    progress = _progress(config, total_steps, state.step, accelerator.is_main_process)
    stopped_by = "completed"
    cached_epoch, epoch_list = 0, first_epoch  # packing an epoch takes a moment: once
    last_checkpoint = time.monotonic()
    started = time.monotonic() - state.train_seconds
    model.train()
    while state.step < total_steps:
        epoch, index = divmod(state.step, steps_per_epoch)
        if epoch != cached_epoch:
            cached_epoch, epoch_list = epoch, batches(epoch)
        batch = epoch_list[index]
        lr = learning_rate(state.step, total_steps, config)
        loss = _optimizer_step(model, head, optimizer, params, batch, lr, accelerator, config)
        state.step += 1
        state.tokens += batch.n_tokens * world
        state.train_loss.append([state.step, round(_mean(accelerator, loss.detach()), 5)])
        progress.update(state.step, state.train_loss[-1][1])

        if state.step % eval_every == 0 or state.step == total_steps:
            if eval_set and _evaluate(model, head, eval_set, config, pad_id, accelerator, state):
                best = _trainable_copy(accelerator.unwrap_model(model), trainable_names)
            model.train()
            if _out_of_patience(config, state):
                stopped_by = "early_stopping"
        state.train_seconds = time.monotonic() - started
        if _over_time_budget(config, state, accelerator):
            stopped_by = "time_budget"
        if on_step is not None:
            on_step(state.step)
        if on_epoch is not None and state.step % steps_per_epoch == 0:
            on_epoch(state.step // steps_per_epoch, accelerator.unwrap_model(model))
            model.train()
        if stopped_by != "completed":
            break
        if (
            time.monotonic() - last_checkpoint >= config.checkpoint_every_s
            and state.step < total_steps
        ):
            _checkpoint(checkpoint, accelerator, state, best, model, optimizer, trainable_names)
            last_checkpoint = time.monotonic()
    progress.close()
    head.close()

    if best is not None:
        _restore(accelerator.unwrap_model(model), best, trainable_names)
    shape = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "world_size": world}
    return _loop_metrics(state, stopped_by, resumed_from, **shape)


def _out_of_patience(config: TrainConfig, state: LoopState) -> bool:
    patience = config.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience


def _over_time_budget(config: TrainConfig, state: LoopState, accelerator) -> bool:
    """Decided by every process together (see `_any`); None: no budget."""
    return config.time_budget_s is not None and _any(
        accelerator, state.train_seconds >= config.time_budget_s
    )


def _resume(
    checkpoint: Path, accelerator, model, optimizer, total_steps: int
) -> tuple[LoopState, dict[str, Any] | None, int | None]:
    """(state, best weights, the step resumed from): from the checkpoint a crashed run left,
    else a fresh start."""
    if not checkpoint.exists():
        return LoopState(), None, None
    state, best = _load_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer)
    log.info("resuming from step %d of %d (%s)", state.step, total_steps, checkpoint)
    return state, best, state.step


def _checkpoint(
    path: Path, accelerator, state: LoopState, best, model, optimizer, names: list[str]
) -> None:
    """The main process saves; every process waits for it."""
    if accelerator.is_main_process:
        _save_checkpoint(path, state, best, accelerator.unwrap_model(model), optimizer, names)
    accelerator.wait_for_everyone()


def _rank_batches(
    train_set: Sequence[Encoded],
    config: TrainConfig,
    pad_id: int,
    rank: int,
    world: int,
    epoch: int,
) -> list[Batch]:
    """This process's share of one epoch's packed batches (the order depends only on the seed
    and the epoch, so a resumed run sees what an uninterrupted one would)."""
    every = epoch_batches(
        train_set,
        batch_size=config.batch_size,
        max_seq_len=config.max_seq_len,
        packing=config.packing,
        pad_id=pad_id,
        seed=config.seed,
        epoch=epoch,
    )
    per_rank = max(1, len(every) // world)
    return [every[(i * world + rank) % len(every)] for i in range(per_rank)]


def _optimizer_step(model, head, optimizer, params, batch: Batch, lr: float, accelerator, config):
    """One step at learning rate `lr`: loss over the labelled tokens, backward, clip, step.
    Returns the (mean per-token) loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total, count = head.loss(model, _tensors(batch, accelerator.device))
    loss = total / count.clamp(min=1)
    accelerator.backward(loss)
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _trainable_copy(model, names: list[str]) -> dict[str, Any]:
    """The trainable weights, copied (the best so far, restored when training ends)."""
    return {n: p.detach().clone() for n, p in _named_trainable(model, names)}


def _restore(model, weights: dict[str, Any], names: list[str]) -> None:
    import torch

    with torch.no_grad():
        for name, param in _named_trainable(model, names):
            param.copy_(weights[name])


def _loop_metrics(
    state: LoopState,
    stopped_by: str,
    resumed_from: int | None,
    *,
    total_steps: int,
    steps_per_epoch: int,
    world_size: int,
) -> dict[str, Any]:
    """The loop's part of training_metrics.json."""
    wall = state.train_seconds
    return {
        "steps": state.step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "epochs_done": round(state.step / steps_per_epoch, 3),
        "stopped_by": stopped_by,
        "resumed_from_step": resumed_from,
        "world_size": world_size,
        "train_seconds": round(wall, 3),
        "train_tokens": state.tokens,
        "tokens_per_s": round(state.tokens / wall, 1) if wall > 0 else None,
        "final_train_loss": _tail_mean(state.train_loss),
        "best_eval_loss": None if state.best_step is None else round(state.best_eval, 5),
        "best_step": state.best_step,
        "train_loss": state.train_loss,
        "eval_loss": state.eval_loss,
    }


class LabelledHead:
    """The output layer computed only at positions that have a label.

    Assistant tokens are a minority of a chat transcript, and the output layer is as wide as
    the vocabulary: on the embedded model it is a quarter of a training step's arithmetic, on a
    real one (150k-token vocabularies) the [batch, sequence, vocabulary] logits are gigabytes.
    A pre-hook on the output embeddings hands it only the hidden states whose next token is
    labelled; the model is still called as a whole, so accelerate's wrappers (DDP) and peft see
    an ordinary forward pass. The loss is the same as transformers' (mean cross-entropy over
    labelled next tokens) up to float rounding.
    """

    def __init__(self, model: Any):
        self.index = None
        output = model.get_output_embeddings()
        self.handle = output.register_forward_pre_hook(self._select) if output else None

    def _select(self, module: Any, args: tuple) -> tuple | None:
        if self.index is None:
            return None
        hidden = args[0]
        return (hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.index), *args[1:])

    def loss(self, model: Any, tensors: dict[str, Any]) -> tuple[Any, Any]:
        """(summed cross-entropy, number of labelled tokens) for one batch."""
        import torch

        labels = tensors.pop("labels")
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != -100
        if self.handle is None:  # no separate output layer to select for: full logits
            logits = model(**tensors).logits[:, :-1][keep]
        else:
            rows, cols = keep.nonzero(as_tuple=True)
            self.index = rows * labels.shape[1] + cols
            try:
                logits = model(**tensors).logits
            finally:
                self.index = None
        total = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
        return total, keep.sum()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _tensors(batch: Batch, device) -> dict[str, Any]:
    import torch

    # No KV cache: with one, transformers ignores the restarting position ids and lets packed
    # conversations attend to each other.
    out: dict[str, Any] = {
        "use_cache": False,
        "input_ids": torch.tensor(batch.input_ids, device=device),
        "labels": torch.tensor(batch.labels, device=device),
    }
    if batch.position_ids is not None:
        out["position_ids"] = torch.tensor(batch.position_ids, device=device)
    if batch.attention_mask is not None:
        out["attention_mask"] = torch.tensor(batch.attention_mask, device=device)
    return out


def _evaluate(
    model,
    head: LabelledHead,
    eval_set,
    config: TrainConfig,
    pad_id: int,
    accelerator,
    state: LoopState,
) -> bool:
    """Token-weighted eval loss over the whole eval split; True when it is the best so far."""
    import torch

    batches = epoch_batches(
        eval_set,
        batch_size=config.batch_size,
        max_seq_len=config.max_seq_len,
        packing=config.packing,
        pad_id=pad_id,
        seed=config.seed,
        epoch=0,
    )
    mine = batches[accelerator.process_index :: accelerator.num_processes]
    total = torch.zeros(2, device=accelerator.device)
    model.eval()
    with torch.no_grad():
        for batch in mine:
            loss, count = head.loss(model, _tensors(batch, accelerator.device))
            total += torch.stack([loss, count.float()])
    total = accelerator.reduce(total, reduction="sum")
    value = (total[0] / total[1].clamp(min=1)).item()
    state.eval_loss.append([state.step, round(value, 5)])
    # Improvement must be real, not rounding noise, to reset the patience counter.
    if value < state.best_eval * (1 - 1e-3):
        state.best_eval, state.best_step, state.evals_without_improvement = value, state.step, 0
        return True
    state.evals_without_improvement += 1
    return False


def _named_trainable(model, names: list[str]):
    wanted = set(names)
    return [(n, p) for n, p in model.named_parameters() if n in wanted]


def _mean(accelerator, value) -> float:
    if accelerator.num_processes == 1:
        return value.item()
    return accelerator.reduce(value, reduction="mean").item()


def _any(accelerator, flag: bool) -> bool:
    """All processes must take the same decision, or DDP deadlocks on the next step."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return accelerator.reduce(value, reduction="sum").item() > 0


def _tail_mean(curve: list[list[float]], share: float = 0.05) -> float | None:
    if not curve:
        return None
    tail = curve[-max(1, int(len(curve) * share)) :]
    return round(sum(loss for _, loss in tail) / len(tail), 5)


# -------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(
    path: Path, state: LoopState, best, model, optimizer, names: list[str]
) -> None:
    import torch

    payload = {
        "state": state.__dict__,
        "best": best,
        "weights": {n: p.detach().cpu() for n, p in _named_trainable(model, names)},
        "optimizer": optimizer.state_dict(),
    }
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)  # a crash mid-write leaves the previous checkpoint intact


def _load_checkpoint(path: Path, model, optimizer) -> tuple[LoopState, dict | None]:
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in payload["weights"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(payload["optimizer"])
    return LoopState(**payload["state"]), payload["best"]


# ----------------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar on a terminal, a log line every ~10% otherwise."""

    def __init__(self, bar, total: int, start: int, silent: bool = False):
        self.bar, self.total, self.last_logged, self.silent = bar, total, start, silent

    def update(self, step: int, loss: float) -> None:
        if self.silent:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.refresh()
        elif step - self.last_logged >= max(1, self.total // 10) or step == self.total:
            log.info("step %d/%d loss %.4f", step, self.total, loss)
            self.last_logged = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(config: TrainConfig, total: int, start: int, main: bool) -> _Progress:
    show_bar = config.progress if config.progress is not None else sys.stderr.isatty()
    if not main:
        return _Progress(None, total, start, silent=True)  # only the main process reports
    if show_bar:
        from tqdm.auto import tqdm

        return _Progress(
            tqdm(total=total, initial=start, desc="training", unit="step"), total, start
        )
    return _Progress(None, total, start)
