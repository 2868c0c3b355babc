"""Speed never changes results: the build and the decisions of a varied corpus are held, byte
for byte, to the output of the per-run implementation (golden files, see golden_corpus.py)."""

from __future__ import annotations

import pytest

from .golden_corpus import (
    BUILDS,
    GOLDEN,
    build,
    decide,
    decisions_text,
    pinned_manifest,
)


@pytest.mark.parametrize("name", BUILDS)
def test_build_matches_the_golden_files(name, tmp_path):
    path = build(name, tmp_path / "datasets")
    for file in ("train.jsonl", "eval.jsonl"):
        assert (path / file).read_bytes() == (GOLDEN / f"{name}-{file}").read_bytes(), file
    assert pinned_manifest(path) == (GOLDEN / f"{name}-manifest.json").read_text("utf-8")


@pytest.mark.parametrize("reviewer", [False, True])
def test_decisions_match_the_golden_file(settings, reviewer):
    name = "decisions-reviewer.jsonl" if reviewer else "decisions.jsonl"
    expected = (GOLDEN / name).read_text("utf-8")
    assert decisions_text(decide(settings, reviewer)) == expected


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("name", BUILDS)
def test_a_build_in_worker_processes_writes_the_same_bytes(name, start, tmp_path, monkeypatch):
    """Past `PARALLEL_AFTER_RUNS` the rest of the stream is checked by worker processes, in
    chunks: the files and manifest are still the golden ones (input order, positions of bad
    records, exclusions and the decisions filter all survive the hand-off). Forked where the
    platform forks; spawned (the checker's settings pickled) where it does not."""
    import multiprocessing

    from autoretrain.curation import builder

    if start == "spawn":
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])

    monkeypatch.setattr(builder, "PARALLEL_AFTER_RUNS", 3)
    monkeypatch.setattr(builder, "_CHUNK", 4)
    monkeypatch.setattr(builder, "build_workers", lambda setting: 2)
    handed_off = []
    real = builder._check_in_workers

    def spy(runs, n_input, *args):
        handed_off.append(n_input)
        return real(runs, n_input, *args)

    monkeypatch.setattr(builder, "_check_in_workers", spy)
    path = build(name, tmp_path / "datasets")
    assert handed_off == [3]
    for file in ("train.jsonl", "eval.jsonl"):
        assert (path / file).read_bytes() == (GOLDEN / f"{name}-{file}").read_bytes(), file
    assert pinned_manifest(path) == (GOLDEN / f"{name}-manifest.json").read_text("utf-8")
