from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from autoretrain.training.interpolate import WEIGHTS, interpolate_weights


def _model(folder, weights, config="{}"):
    folder.mkdir()
    save_file(weights, str(folder / WEIGHTS))
    (folder / "config.json").write_text(config)
    return folder


@pytest.fixture
def pair(tmp_path):
    incumbent = _model(
        tmp_path / "v0",
        {"w": torch.zeros(2, 3), "h": torch.full((4,), 2.0, dtype=torch.float16)},
        '{"from": "v0"}',
    )
    candidate = _model(
        tmp_path / "cand",
        {"w": torch.ones(2, 3), "h": torch.full((4,), 3.0, dtype=torch.float16)},
        '{"from": "candidate"}',
    )
    return incumbent, candidate


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_each_weight_takes_alpha_of_the_step_and_the_rest_is_the_candidates(pair, tmp_path, alpha):
    incumbent, candidate = pair
    out = interpolate_weights(incumbent, candidate, tmp_path / "mixed", alpha)
    mixed = load_file(str(out / WEIGHTS))
    assert torch.allclose(mixed["w"], torch.full((2, 3), alpha))
    assert mixed["h"].dtype == torch.float16
    assert torch.allclose(mixed["h"].float(), torch.full((4,), 2.0 + alpha), atol=1e-3)
    assert (out / "config.json").read_text() == '{"from": "candidate"}'


def test_models_that_do_not_match_are_refused_with_what_differs(pair, tmp_path):
    incumbent, _ = pair
    other = _model(tmp_path / "other", {"w": torch.ones(3, 2), "h": torch.ones(4)})
    with pytest.raises(ValueError, match=r"weight w: \(2, 3\)"):
        interpolate_weights(incumbent, other, tmp_path / "mixed", 0.5)
    extra = _model(tmp_path / "extra", {"w": torch.ones(2, 3), "x": torch.ones(1)})
    with pytest.raises(ValueError, match="different weights"):
        interpolate_weights(incumbent, extra, tmp_path / "mixed", 0.5)
    with pytest.raises(ValueError, match="within"):
        interpolate_weights(incumbent, incumbent, tmp_path / "mixed", 1.5)
