"""A model folder is checked before a slot moves to it: what the checks accept really loads, and
what they refuse (an empty folder, truncated weights, a missing shard) really would not."""

from __future__ import annotations

import shutil

import pytest

from autoretrain.deploy.artifacts import load_problems
from autoretrain_tests.deploy.model_files import copy_model, tiny_adapter, tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return tiny_adapter(tmp_path_factory)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_what_the_checks_accept_loads_in_the_local_provider(model, adapter):
    from autoretrain.providers.local import LocalChatModel

    assert load_problems(model, None) == []
    assert load_problems(model, adapter) == []
    assert load_problems(None, adapter) == []  # the base comes from adapter_config.json
    LocalChatModel(model)
    LocalChatModel(model, adapter)
    LocalChatModel(adapter)


def test_truncated_weights_are_refused_and_really_do_not_load(model, tmp_path):
    from autoretrain.providers.local import LocalChatModel

    cut = copy_model(model, tmp_path / "cut")
    truncate(cut / "model.safetensors")
    (problem,) = load_problems(cut, None)
    assert f"{cut / 'model.safetensors'} is unreadable or truncated" in problem
    with pytest.raises(Exception, match="incomplete metadata|not fully covered"):
        LocalChatModel(cut)


def test_an_empty_folder_names_everything_it_lacks(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    problems = " | ".join(load_problems(empty, None))
    assert "config.json is missing" in problems
    assert "holds no weights" in problems and "holds no tokenizer" in problems
    assert load_problems(tmp_path / "gone", None) == [
        f"model folder {tmp_path / 'gone'} does not exist"
    ]


def test_a_broken_config_is_named(model, tmp_path):
    broken = copy_model(model, tmp_path / "broken")
    (broken / "config.json").write_text('{"hidden_size": ')
    (problem,) = load_problems(broken, None)
    assert f"{broken / 'config.json'} is unreadable" in problem
    (broken / "config.json").write_text('{"hidden_size": 64}')
    assert "names no model_type" in load_problems(broken, None)[0]


def test_adapter_without_weights_or_with_truncated_weights(model, adapter, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(adapter / "adapter_config.json", bare)
    assert "holds no adapter weights" in load_problems(model, bare)[0]
    cut = copy_model(adapter, tmp_path / "cut-adapter")
    truncate(cut / "adapter_model.safetensors", keep=0.9)
    assert "adapter_model.safetensors is unreadable or truncated" in load_problems(model, cut)[0]


def test_sharded_weights_need_every_shard_whole(model, tmp_path):
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(model).save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model / name, sharded)
    assert not (sharded / "model.safetensors").exists()
    assert load_problems(sharded, None) == []
    shards = sorted(sharded.glob("model-*.safetensors"))
    shards[0].unlink()
    assert f"lists shard {shards[0].name}, which is missing" in load_problems(sharded, None)[0]
    truncate(shards[1])
    assert any("is unreadable or truncated" in p for p in load_problems(sharded, None))
