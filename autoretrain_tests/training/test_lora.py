from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autoretrain.training.config import TrainConfig
from autoretrain.training.lora import TrainingError, train

from .conftest import write_dataset

QUICK = dict(epochs=2, batch_size=4, learning_rate=1e-2, max_seq_len=256, seed=0, progress=False)


def test_lora_adapter_loads_back_with_peft_changes_answers_and_merges(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(
        write_dataset(tmp_path / "ds"),
        tiny_model,
        tmp_path / "models" / "m" / "v1",
        TrainConfig(method="lora", lora_r=4, lora_alpha=8, merge_adapter=True, **QUICK),
    )
    assert result.method == "lora" and result.adapter_dir and result.merged_dir
    assert result.model_dir == result.merged_dir
    saved = json.loads((result.output_dir / "train_config.json").read_text())
    assert saved["config"]["lora_r"] == 4 and saved["method"] == "lora"
    metrics = json.loads((result.output_dir / "training_metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["eval_loss"] and metrics["tokens_per_s"] > 0
    assert 0 < metrics["trainable_params"] < metrics["total_params"]

    probe = torch.tensor([list(range(3, 40))])
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), result.adapter_dir
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    with torch.no_grad():
        before, after, flat = (m(input_ids=probe).logits for m in (base, tuned, merged))
    assert (before.argmax(-1) != after.argmax(-1)).any()  # the adapter changes the answers
    assert torch.allclose(after, flat, atol=1e-5)


def test_interrupted_run_leaves_no_version_and_resumes_to_the_same_weights(tmp_path, tiny_model):
    from safetensors.torch import load_file

    dataset = write_dataset(tmp_path / "ds")
    config = TrainConfig(method="full", checkpoint_every_s=0, **QUICK)
    reference = train(dataset, tiny_model, tmp_path / "reference", config)

    def crash(step: int) -> None:
        if step == 5:
            raise KeyboardInterrupt

    target = tmp_path / "models" / "m" / "v2"
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tiny_model, target, config, on_step=crash)
    assert not target.exists()
    assert (target.parent / ".v2.partial" / "checkpoint.pt").exists()

    resumed = train(dataset, tiny_model, target, config)
    assert resumed.metrics["resumed_from_step"] == 4  # the last checkpoint before the crash
    assert resumed.metrics["steps"] == reference.metrics["steps"]
    assert not (target.parent / ".v2.partial").exists()
    a = load_file(reference.output_dir / "model.safetensors")
    b = load_file(target / "model.safetensors")
    assert all(((a[k] - b[k]).abs().max() < 1e-5) for k in a)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_step_fraction_saves_the_base_plus_that_share_of_the_step(tmp_path, tiny_model, method):
    import torch
    from safetensors.torch import load_file

    dataset = write_dataset(tmp_path / "ds")
    extra = {"lora_r": 4, "lora_alpha": 8, "merge_adapter": True} if method == "lora" else {}
    whole = train(
        dataset, tiny_model, tmp_path / "whole", TrainConfig(method=method, **extra, **QUICK)
    )
    part = train(
        dataset,
        tiny_model,
        tmp_path / "part",
        TrainConfig(method=method, step_fraction=0.25, **extra, **QUICK),
    )
    assert part.metrics["step_fraction"] == 0.25 and "step_fraction" not in whole.metrics
    base = load_file(tiny_model / "model.safetensors")
    tuned = load_file(whole.model_dir / "model.safetensors")
    mixed = load_file(part.model_dir / "model.safetensors")
    assert any((tuned[k] - base[k]).abs().max() > 1e-3 for k in base)  # it did train
    for k in base:
        assert torch.allclose(mixed[k], base[k] + 0.25 * (tuned[k] - base[k]), atol=1e-6), k


def test_a_step_fraction_on_an_adapter_alone_is_refused_before_training(tmp_path, tiny_model):
    config = TrainConfig(method="lora", step_fraction=0.5, **QUICK)
    with pytest.raises(TrainingError, match="set merge_adapter"):
        train(write_dataset(tmp_path / "ds"), tiny_model, tmp_path / "v1", config)
    assert not (tmp_path / "v1").exists()


def test_existing_version_is_never_overwritten(tmp_path, tiny_model):
    (tmp_path / "v1").mkdir()
    with pytest.raises(TrainingError, match="already exists"):
        train(write_dataset(tmp_path / "ds"), tiny_model, tmp_path / "v1", TrainConfig())


def test_qlora_without_cuda_names_the_reason(tmp_path, tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingError, match="CUDA"):
        train(
            write_dataset(tmp_path / "ds"), tiny_model, tmp_path / "q", TrainConfig(method="qlora")
        )


@pytest.mark.integration
def test_accelerate_launch_trains_on_two_cpu_processes(tmp_path, tiny_model):
    dataset = write_dataset(tmp_path / "ds", n_train=32, n_eval=8)
    target = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "autoretrain.training", str(dataset),
        "--base", str(tiny_model), "--output", str(target), "--method", "full",
        "--epochs", "2", "--batch-size", "4", "--max-seq-len", "256", "--learning-rate", "0.01",
        "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((target / "training_metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["train_loss"][-1][1] < metrics["train_loss"][0][1]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(target)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_bf16_base_exports_a_bf16_model(tmp_path, tiny_model, method):
    """Training runs in float32 on CPU; the merged (or fully fine-tuned) model is saved in the
    base's stored precision, as LM Studio and vLLM load it: half the bytes of float32."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    base = tmp_path / "bf16-base"
    shutil.copytree(tiny_model, base)
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(base)
    result = train(
        write_dataset(tmp_path / "ds"),
        base,
        tmp_path / "models" / "m" / method,
        TrainConfig(method=method, lora_r=4, lora_alpha=8, merge_adapter=True, **QUICK),
    )
    exported = result.merged_dir or result.model_dir
    config = json.loads((exported / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(exported, dtype="auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert result.metrics["steps"] > 0
