"""bench/selfplay.py runs end to end at a tiny size on an untrained model, so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoretrain_tests.providers.tiny_models import cached_untrained_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_selfplay_bench(tmp_path, tmp_path_factory):
    model = cached_untrained_model(tmp_path_factory)
    out = tmp_path / "results"
    args = ["--n-single", "3", "--n-batched", "6", "--batch-sizes", "4", "--chunked", "4:2",
            "--workers", "4:2", "--n-workers", "12", "--http-concurrency", "1,2", "--rounds", "2", "--max-tokens", "8"]  # fmt: skip
    subprocess.run(
        [sys.executable, "bench/selfplay.py", "--model", str(model), "--out", str(out), *args],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    result = json.loads((out / "selfplay.json").read_text())
    assert (out / "selfplay.md").read_text().startswith("# Self-play throughput")
    modes = result["modes"]
    assert list(modes) == [
        "local_one_at_a_time", "transformers_one_at_a_time", "local_batched_4",
        "local_batched_4_chunk_2", "local_batched_4_workers_2", "http_concurrency_1",
        "http_concurrency_2",
    ]  # fmt: skip
    for name, mode in modes.items():
        assert [r["runs"] for r in mode["rounds"]] == [mode["runs_per_round"]] * 2, name
        assert sum(mode["by_status"].values()) == mode["runs_per_round"]
        assert mode["runs_per_s"] > 0 and mode["model_calls_per_run"] >= 1
        # Turns stop at the 8-token cap (an untrained model rarely stops before it).
        assert 0 < mode["completion_tokens_per_run"] <= 8 * mode["model_calls_per_run"] + 0.1
        assert mode["same_outcome_as_one_at_a_time"].endswith("/3")
    assert modes["local_batched_4"]["runs_per_round"] == 6
    assert modes["local_one_at_a_time"]["rows_per_call"] == 1.0
    # The decoder's time split adds up within the round's own seconds.
    first = modes["local_batched_4"]["rounds"][0]
    decoder = first["seconds_prefill"] + first["seconds_decode"]
    assert 0 < decoder <= first["seconds_generate"] <= first["seconds_in_model_calls"]
    assert first["seconds_in_model_calls"] <= first["seconds"]
    # The raw-engine mode goes through model.generate: no prefix cache to hit.
    assert modes["transformers_one_at_a_time"]["rows_per_call"] == 1.0
    assert modes["transformers_one_at_a_time"]["prefix_cache_hit_rate"] == 0
    assert "seconds_generate" not in modes["transformers_one_at_a_time"]["rounds"][0]
    assert 1.0 < modes["local_batched_4"]["rows_per_call"] <= 4
    assert modes["local_batched_4_chunk_2"]["generate_chunk"] == 2
    # Two processes played 12 runs a round; the worker's calls are not counted.
    assert modes["local_batched_4_workers_2"]["workers"] == 2
    assert modes["local_batched_4_workers_2"]["runs_per_round"] == 12
    assert modes["local_batched_4_workers_2"]["rows_per_call"] is None
    # Every mode starts with an empty prefix cache; later turns of a run reuse their first.
    assert 0 < modes["local_batched_4"]["prefix_cache_hit_rate"] < 1
    assert modes["http_concurrency_1"]["rounds"][0]["by_status"].get("error", 0) == 0
    assert set(result["ratios"]) == {
        "local_batched_4_over_one_at_a_time", "local_batched_4_chunk_2_over_one_at_a_time",
        "local_batched_4_workers_2_over_one_at_a_time", "http_concurrency_2_over_http_concurrency_1",
        "local_one_at_a_time_over_transformers_one_at_a_time",
        "local_batched_4_over_transformers_one_at_a_time",
        "local_batched_4_chunk_2_over_transformers_one_at_a_time",
        "local_batched_4_workers_2_over_transformers_one_at_a_time",
    }  # fmt: skip
    assert result["target"]["best_batched_over_transformers_one_at_a_time"] > 0
    assert result["target"]["best_with_workers_over_one_at_a_time"] > 0
    assert result["cores"] and result["torch_threads"] == 1
    assert len(result["load_average_before"]) == 3
    assert result["command"].startswith(".venv/bin/python bench/selfplay.py --model ")
