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
