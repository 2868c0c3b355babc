"""The precision a model directory was saved in, read from its config.json.

Serving loads a model in that precision (a bf16 checkpoint stays bf16: half the memory of
float32, and the numbers it was trained with) instead of transformers' float32 default.
"""

from __future__ import annotations

import json
from pathlib import Path

_NAMES = {
    "float32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
}


def stored_dtype(model_dir: str | Path):  # -> torch.dtype
    """`dtype` (transformers >= 4.56) or `torch_dtype` from config.json; float32 when the
    config names none (or something that is not a floating type, e.g. a quantized layout)."""
    import torch

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if isinstance(value, str):
            name = _NAMES.get(value.removeprefix("torch."))
            if name:
                return getattr(torch, name)
    return torch.float32
