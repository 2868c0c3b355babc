"""The guides' commands, run as written, in the order written.

Each guide's fenced blocks are read from the Markdown file: bash blocks run in bash with the
project's `autoretrain` on PATH, Python blocks in the project's interpreter, YAML blocks become the
working directory's `autoretrain.yaml`. What cannot run here stands in, and only that:

- LM Studio and vLLM are replaced by `autoretrain serve` on 127.0.0.1 (an OpenAI-compatible server
  of the same model names; for vLLM, the same adapters on the same base), whose address replaces
  the guide's host and port;
- the published base model (`/models/Qwen2.5-…-Instruct`) is a tiny Qwen2 built here with a
  Qwen2.5-shaped chat template *without* generation markers, saved in bf16, as published ones are;
- `lms …` and llama.cpp's converter are not installed: the test checks that the block is that
  command, and what it reads (the merged export) is there;
- `<dataset-version>` is a dataset folder written here, and self-play is capped at a few tokens
  per reply (a test-only `selfplay.max_tokens`, merged into the guide's YAML).

A guide whose blocks change shape (a block added, removed or reordered) fails here first: update
the test with the guide.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from autoretrain_tests.servers import free_port
from autoretrain_tests.training.conftest import write_dataset
from autoretrain_tests.training.family_tokenizers import tiny_family_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
GUIDES = REPO / "docs" / "guides"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
MAX_TOKENS = 24


def blocks(guide: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, dedented (blocks inside list items are indented)."""
    text = (GUIDES / guide).read_text()
    return [(lang, textwrap.dedent(body)) for _, lang, body in FENCE.findall(text)]


def environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AUTORETRAIN_") and k != "DAGSTER_HOME"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AUTORETRAIN_SCENARIOS"] = str(REPO / "scenarios")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(lang: str, text: str, cwd: Path, env: dict[str, str]) -> str:
    command = ["bash", "-e", "-c", text] if lang == "bash" else [sys.executable, "-c", text]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{lang} block failed:\n{text}\n---\n{done.stdout}\n{done.stderr}"
    return done.stdout


def write_config(block: str, cwd: Path, **replace: str) -> dict:
    for old, new in replace.items():
        assert old in block, f"the guide's YAML no longer has {old!r}"
        block = block.replace(old, new)
    config = yaml.safe_load(block)
    config.setdefault("selfplay", {})["max_tokens"] = MAX_TOKENS  # test-only: short replies
    (cwd / "autoretrain.yaml").write_text(yaml.safe_dump(config))
    return config


@contextmanager
def stand_in_server(cwd: Path, env: dict[str, str], models: dict, adapters: dict | None = None):
    """`autoretrain serve` on 127.0.0.1 in place of LM Studio or vLLM; yields its /v1 URL."""
    port = free_port()
    args = ["serve", "--port", str(port), "--preload"]
    for name, path in models.items():
        args += ["--model", f"{name}={path}"]
    for name, path in (adapters or {}).items():
        args += ["--adapter", f"{name}={path}"]
    if "VLLM_API_KEY" in env:
        args += ["--api-key-env", "VLLM_API_KEY"]
    process = subprocess.Popen(
        [sys.executable, "-c", "from autoretrain.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "the stand-in server did not come up"
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def landed_runs(home: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((home / "landing" / "runs").rglob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


@pytest.fixture(scope="module")
def published_model(tmp_path_factory) -> Path:
    """A tiny stand-in for a published Qwen2.5 instruct folder: bf16, no generation markers."""
    path = tiny_family_model("qwen2.5", tmp_path_factory.mktemp("published") / "Qwen-Instruct")
    from transformers import AutoTokenizer

    assert "generation %}" not in AutoTokenizer.from_pretrained(path).chat_template
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    return path


def test_lm_studio_guide(tmp_path, published_model):
    guide = blocks("lm-studio.md")
    assert [lang for lang, _ in guide] == [
        "bash", "yaml", "bash", "bash", "bash", "bash", "python", "bash",
    ]  # fmt: skip
    serve_lms, config, check, train, convert, load, register, promote = (b for _, b in guide)
    env = environment()
    home = tmp_path / "data"  # the settings' default home, under the working directory

    # 1. Serve a model: LM Studio's CLI, here `autoretrain serve` under the same identifiers.
    assert serve_lms.startswith("lms server start")
    ids = re.findall(r"--identifier (\S+)", serve_lms)
    assert ids == ["agent-primary"]
    with stand_in_server(
        tmp_path, env, {"agent-primary": published_model, "agent-canary": published_model}
    ) as url:
        # 2. Point autoretrain at it, then check it.
        write_config(config, tmp_path, **{"http://localhost:1234/v1": url})
        out = run("bash", check, tmp_path, env)
    landed = landed_runs(home)
    assert len(landed) == 20, out
    assert {(r["slot"], r["model"]) for r in landed} == {("primary", "agent-primary")}
    assert "20" in out or "runs" in out

    # 3. Train with a merged export (the base's template has no markers: the trainer adds them).
    write_dataset(home / "autoretrain" / "ds-guide", n_train=8, n_eval=2)
    train = train.replace("<dataset-version>", "ds-guide").replace(
        "/models/Qwen2.5-1.5B-Instruct", str(published_model)
    )
    result = summary(run("bash", train, tmp_path, env))
    version_dir = Path(result["output_dir"])
    merged = version_dir / "merged"
    assert result["method"] == "lora" and Path(result["model_dir"]) == merged
    assert (version_dir / "adapter" / "adapter_config.json").is_file()
    # What llama.cpp's converter reads: a full Hugging Face model with its tokenizer.
    assert convert.startswith("python convert_hf_to_gguf.py models/qwen/<version>/merged")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (merged / name).is_file(), name
    from transformers import AutoTokenizer

    assert "{%- generation %}" in AutoTokenizer.from_pretrained(merged).chat_template
    assert load.startswith("lms import agent-v2.gguf")

    # 4. Record it in the registry, promote, look.
    run("python", register.replace("<version>", version_dir.name), tmp_path, env)
    out = run("bash", promote.replace("<dataset-version>", "ds-guide"), tmp_path, env)
    assert "lmstudio/canary: (empty) -> qwen-v2" in out, out
    assert "lms load" in out and "--identifier agent-canary" in out
    assert "canary: qwen-v2" in out  # `autoretrain models`

    # What the guide says about an adapter-only version: promote refuses it, nothing moves.
    adapter_only = register.replace('"qwen-v2"', '"qwen-v2-adapter"').replace(
        'model_dir="data/models/qwen/<version>/merged"',
        f'adapter_dir="{tmp_path / "bare" / "adapter"}"',
    )
    (tmp_path / "bare").mkdir()
    (version_dir / "adapter").rename(tmp_path / "bare" / "adapter")
    run("python", adapter_only, tmp_path, env)
    refused = subprocess.run(
        ["autoretrain", "promote", "qwen-v2-adapter", "--slot", "canary"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "is a LoRA adapter" in refused.stderr, refused.stderr
    assert "retrain with merge_adapter: true" in refused.stderr


def test_vllm_guide(tmp_path, published_model):
    guide = blocks("vllm.md")
    assert [lang for lang, _ in guide] == ["bash", "bash", "yaml", "bash", "python", "bash"]
    train, serve_vllm, config, check, register, promote = (
        b.replace("/srv/autoretrain", str(tmp_path / "srv" / "autoretrain")) for _, b in guide
    )
    home = tmp_path / "srv" / "autoretrain"
    # The guide's `export`s, for every later block of the session.
    env = environment(AUTORETRAIN_HOME=str(home), VLLM_API_KEY="vllm-test-key")
    assert f"export AUTORETRAIN_HOME={home}" in train

    # 1. Train the adapters (v3 and v4, the two the server block names), each with --merge.
    write_dataset(home / "autoretrain" / "ds-guide", n_train=8, n_eval=2)
    train = train.replace("<dataset-version>", "ds-guide").replace(
        "/models/Qwen2.5-7B-Instruct", str(published_model)
    )
    for version in ("v3", "v4"):
        result = summary(
            run("bash", train.replace("--version v4", f"--version {version}"), tmp_path, env)
        )
        assert result["method"] == "lora"
        assert (home / "models" / "qwen" / version / "merged" / "config.json").is_file()

    # 2. Serve the base and the adapters: vLLM's --lora-modules, here `autoretrain serve`.
    assert serve_vllm.startswith("vllm serve /models/Qwen2.5-7B-Instruct")
    modules = dict(re.findall(r"(agent-v\d)=(\S+)", serve_vllm))
    assert sorted(modules) == ["agent-v3", "agent-v4"]
    assert all(Path(path).is_dir() for path in modules.values()), modules
    with stand_in_server(
        tmp_path, env, {name: published_model for name in modules}, modules
    ) as url:
        # 3. Point autoretrain at it, then check it.
        write_config(
            config,
            tmp_path,
            **{"http://gpu-box:8000/v1": url, "device: cuda": "device: cpu"},
        )
        check = check.replace("export VLLM_API_KEY=...", "true")  # set in env, as the guide asks
        out = run("bash", check, tmp_path, env)
    landed = landed_runs(home)
    assert len(landed) == 20, out
    # canary_share 0.2: each slot reached its adapter by name through the server.
    assert {(r["slot"], r["model"]) for r in landed} == {
        ("primary", "agent-v3"),
        ("canary", "agent-v4"),
    }

    # 4. Register the adapter version, promote it, look.
    run("python", register, tmp_path, env)
    out = run("bash", promote, tmp_path, env)
    assert "vllm/canary: (empty) -> agent-v4" in out, out
    assert "canary: agent-v4" in out


def test_own_model_guide(tmp_path, published_model):
    guide = [(lang, b) for lang, b in blocks("own-model.md") if lang]  # the unlabelled one is
    assert [lang for lang, _ in guide] == ["yaml", "python", "bash", "python", "bash"]  # a shape
    config, chat, train, register, promote = (
        b.replace("/models/Qwen2.5-1.5B-Instruct", str(published_model)) for _, b in guide
    )
    env = environment()
    home = tmp_path / "data"
    write_config(config, tmp_path, **{"device: cuda": "device: cpu"})

    # Serving it to the agent: a slot's model and any directory, in-process.
    out = run("python", chat, tmp_path, env)
    assert "'role': 'assistant'" in out, out

    # Training on it: `auto` is full fine-tuning below 300M parameters (the tiny stand-in).
    write_dataset(home / "autoretrain" / "ds-guide", n_train=8, n_eval=2)
    result = summary(run("bash", train.replace("<dataset-version>", "ds-guide"), tmp_path, env))
    assert result["method"] == "full"
    assert Path(result["output_dir"]) == (home / "models" / "qwen" / "v2").resolve()
    assert (Path(result["model_dir"]) / "model.safetensors").is_file()

    # Making it the loop's incumbent: register, promote (the loop itself is not run here).
    run("python", register, tmp_path, env)
    commands = promote.strip().splitlines()
    assert commands[-1] == "autoretrain loop"
    out = run("bash", "\n".join(commands[:-1]), tmp_path, env)
    assert "local/primary: (empty) -> qwen-base" in out, out
    serving = json.loads((home / "serving.json").read_text())
    assert str(published_model) in json.dumps(serving)
