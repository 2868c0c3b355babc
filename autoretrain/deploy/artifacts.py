"""Is a model version's folder something a server can load? Checked before a slot moves to it.

The checks read what loading reads, without loading the model (which would cost the promoting
process the model's memory and seconds of torch import): the config parses and names its
architecture, every weights file is complete (safetensors' own header check: a truncated file
does not cover its header's tensor table; a torch zip is read through), a sharded index's shards
all exist and hold the tensors it lists, a tokenizer is there, and an adapter has its config and
weights. An empty folder, a half-copied one and truncated weights all fail here, by name.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

# What transformers and peft save, in the order they look for it.
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json")
_WEIGHTS_BIN = "pytorch_model.bin"
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def load_problems(model_dir: str | Path | None, adapter_dir: str | Path | None) -> list[str]:
    """Why these folders would not load, one sentence each; empty when they would."""
    problems: list[str] = []
    adapter = Path(adapter_dir) if adapter_dir else None
    if adapter is not None:
        problems += _adapter_problems(adapter)
        if model_dir is None and not problems:
            # An adapter alone: the server loads the base its config names.
            model_dir = _adapter_base(adapter)
            if model_dir is None:
                return [f"{adapter}/adapter_config.json names no base_model_name_or_path"]
    if model_dir is not None:
        problems += _model_problems(Path(model_dir), adapter)
    return problems


def _model_problems(folder: Path, adapter: Path | None) -> list[str]:
    if not folder.is_dir():
        return [f"model folder {folder} does not exist"]
    problems = []
    config = _json_object(folder / "config.json")
    if isinstance(config, str):
        problems.append(config)
    elif not config.get("model_type"):
        problems.append(f"{folder}/config.json names no model_type (not a transformers config)")
    problems += _weights_problems(folder)
    if not any((d / name).is_file() for d in (folder, adapter) if d for name in _TOKENIZER):
        problems.append(f"{folder} holds no tokenizer ({', '.join(_TOKENIZER)})")
    return problems


def _weights_problems(folder: Path) -> list[str]:
    for name in _WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            return _sharded_problems(path)
        return _safetensors_problems(path)[1]
    if (folder / _WEIGHTS_BIN).is_file():
        return _zip_problems(folder / _WEIGHTS_BIN)
    return [f"{folder} holds no weights (model.safetensors, a sharded index or pytorch_model.bin)"]


def _sharded_problems(index_path: Path) -> list[str]:
    index = _json_object(index_path)
    if isinstance(index, str):
        return [index]
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return [f"{index_path} has no weight_map"]
    problems = []
    for shard in sorted(set(weight_map.values())):
        path = index_path.parent / str(shard)
        if not path.is_file():
            problems.append(f"{index_path} lists shard {shard}, which is missing")
            continue
        if shard.endswith(".safetensors"):
            names, found = _safetensors_problems(path)
            problems += found
            missing = [k for k, v in weight_map.items() if v == shard and k not in names]
            if names and missing:
                problems.append(f"{path} lacks {len(missing)} tensors its index lists")
        else:
            problems += _zip_problems(path)
    return problems


def _safetensors_problems(path: Path) -> tuple[set[str], list[str]]:
    """The tensor names, and why the file is unreadable or incomplete."""
    from safetensors import SafetensorError, safe_open

    try:
        # Opening checks the header and that the data covers every tensor it lists.
        with safe_open(str(path), framework="numpy") as handle:
            return set(handle.keys()), []
    except (SafetensorError, OSError) as exc:
        return set(), [f"{path} is unreadable or truncated ({exc})"]


def _zip_problems(path: Path) -> list[str]:
    """torch.save writes a zip: read it through (CRC of every member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"{path} is unreadable or truncated ({exc})"]
    return [f"{path} is corrupt (member {bad} fails its checksum)"] if bad else []


def _adapter_problems(folder: Path) -> list[str]:
    if not folder.is_dir():
        return [f"adapter folder {folder} does not exist"]
    problems = []
    config = _json_object(folder / "adapter_config.json")
    if isinstance(config, str):
        problems.append(config)
    weights = [folder / name for name in _ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        problems.append(f"{folder} holds no adapter weights ({', '.join(_ADAPTER_WEIGHTS)})")
    elif weights[0].suffix == ".safetensors":
        problems += _safetensors_problems(weights[0])[1]
    else:
        problems += _zip_problems(weights[0])
    return problems


def _adapter_base(adapter: Path) -> Path | None:
    # As the local provider resolves it (providers/local.py: adapter_base_dir), without its
    # torch import.
    base = _json_object(adapter / "adapter_config.json")
    name = base.get("base_model_name_or_path") if isinstance(base, dict) else None
    if not name:
        return None
    path = Path(name)
    return path if path.is_absolute() or path.exists() else (adapter / name).resolve()


def _json_object(path: Path) -> dict[str, Any] | str:
    """The file's JSON object, or why there is none (a sentence naming the file)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path} is unreadable ({exc})"
    return value if isinstance(value, dict) else f"{path} does not hold a JSON object"
