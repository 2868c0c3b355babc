"""Weight interpolation between the weights a round started from and the fine-tuned candidate
(WiSE-FT, Wortsman et al. 2022: "Robust fine-tuning of zero-shot models"). A round starts from
the root of the incumbent's lineage or from the incumbent (`training.init_from`); below,
"incumbent" is that starting point.

A round fine-tunes the incumbent on its new verified runs; what it forgets of behaviours the
dataset barely touches (a refusal phrased another way) moves with the training order
(bench/results/trials/measured_allocation.md). Taking only part of the step, incumbent +
alpha * (candidate - incumbent), keeps more of the incumbent while keeping most of the lift:
the interpolated model is what the gate then compares. Both folders must be full models of one
architecture and tokenizer (a merged adapter, as `Project.train_candidate` writes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

WEIGHTS = "model.safetensors"


def interpolate_weights(incumbent: Path, candidate: Path, out: Path | None, alpha: float) -> Path:
    """Write `candidate`'s folder to `out` (None: in place) with each weight at incumbent +
    alpha * (candidate - incumbent); everything else (config, tokenizer, training metrics) is
    the candidate's. Returns the folder written."""
    import torch
    from safetensors.torch import load_file, save_file

    if not 0 <= alpha <= 1:
        raise ValueError(f"interpolation alpha must be within [0, 1], got {alpha}")
    incumbent, candidate = Path(incumbent), Path(candidate)
    out = candidate if out is None else Path(out)
    for folder in (incumbent, candidate):
        if not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"{folder / WEIGHTS}: interpolation needs a full model's weights in one file "
                "(a merged adapter)"
            )
    before = load_file(str(incumbent / WEIGHTS))
    after = load_file(str(candidate / WEIGHTS))
    if before.keys() != after.keys():
        odd = sorted(before.keys() ^ after.keys())[:5]
        raise ValueError(f"{incumbent} and {candidate} hold different weights: {odd}")
    mixed = {}
    for name, tuned in after.items():
        base = before[name]
        if base.shape != tuned.shape:
            raise ValueError(
                f"weight {name}: {tuple(base.shape)} in {incumbent}, {tuple(tuned.shape)} in "
                f"{candidate}"
            )
        if not tuned.is_floating_point():
            mixed[name] = tuned
            continue
        # In float32, then back: a float16 difference would round the small steps away.
        step = tuned.to(torch.float32) - base.to(torch.float32)
        mixed[name] = (base.to(torch.float32) + alpha * step).to(tuned.dtype).contiguous()
    del after  # in place, the file is about to be replaced
    if out != candidate:
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(candidate, out, ignore=shutil.ignore_patterns(WEIGHTS))
    save_file(mixed, str(out / WEIGHTS), metadata={"format": "pt"})
    return out
