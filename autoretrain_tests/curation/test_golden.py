"""Speed never changes results: the build and the decisions of a varied corpus are held, byte
for byte, to the output of the per-run implementation (golden files, see golden_corpus.py)."""

from __future__ import annotations

import pytest

from .golden_corpus import (
    BUILDS,
    GOLDEN,
    build,
    build_inputs,
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


def _through_workers(monkeypatch, start: str, after: int) -> list:
    """Workers of `start` ("fork" or "spawn") take a stream after its first `after` items, in
    chunks of 4; returns the list the items handed to them are appended to."""
    import multiprocessing

    from autoretrain import parallel

    if start == "spawn":
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(parallel, "PARALLEL_AFTER", after)
    monkeypatch.setattr(parallel, "CHUNK", 4)
    handed: list = []
    real = parallel._map_chunks

    def spy(work, items, *args):
        def counted():
            for item in items:
                handed.append(item)
                yield item

        return real(work, counted(), *args)

    monkeypatch.setattr(parallel, "_map_chunks", spy)
    return handed


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("name", BUILDS)
def test_a_build_in_worker_processes_writes_the_same_bytes(name, start, tmp_path, monkeypatch):
    """Past `PARALLEL_AFTER` runs the rest of the stream is checked by worker processes, in
    chunks: the files and manifest are still the golden ones (input order, positions of bad
    records, exclusions and the decisions filter all survive the hand-off). Forked where the
    platform forks; spawned (the checker's settings pickled) where it does not."""
    from autoretrain.curation import builder

    handed = _through_workers(monkeypatch, start, after=3)
    monkeypatch.setattr(builder, "workers_for", lambda setting: 2)
    path = build(name, tmp_path / "datasets")
    runs, _ = build_inputs()
    assert len(handed) == len(runs) - 3  # all but the first three went to the workers
    for file in ("train.jsonl", "eval.jsonl"):
        assert (path / file).read_bytes() == (GOLDEN / f"{name}-{file}").read_bytes(), file
    assert pinned_manifest(path) == (GOLDEN / f"{name}-manifest.json").read_text("utf-8")


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("reviewer", [False, True])
def test_decisions_in_worker_processes_match_the_golden_file(
    settings, reviewer, start, monkeypatch
):
    """Past `PARALLEL_AFTER` survivors (here none), transcripts are parsed and gated in workers:
    the same decisions, and the borderline runs come back to the parent's reviewer in the same
    order."""
    handed = _through_workers(monkeypatch, start, after=0)  # every survivor goes to a worker
    name = "decisions-reviewer.jsonl" if reviewer else "decisions.jsonl"
    expected = (GOLDEN / name).read_text("utf-8")
    assert decisions_text(decide(settings, reviewer, workers=2)) == expected
    assert len(handed) > 8  # several chunks went to the workers
