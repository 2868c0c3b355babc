"""`autoretrain selfplay` on a local model in two processes, through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from autoretrain.cli import cli
from autoretrain.runs.archive import RunArchive
from autoretrain.settings import load_settings
from autoretrain_tests.providers.tiny_models import cached_untrained_model


def test_selfplay_cli_plays_in_worker_processes(settings, tmp_path_factory):
    model = cached_untrained_model(tmp_path_factory)
    config = Path(os.environ["AUTORETRAIN_CONFIG"])  # the `settings` fixture's own file
    config.write_text(
        f"providers:\n  local:\n    kind: local\n    slots:\n      primary: {model}\n"
        "selfplay:\n  max_tokens: 6\n  temperature: 0.0\n"
    )
    result = CliRunner().invoke(
        cli, ["selfplay", "--n", "12", "--concurrency", "4", "--workers", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["finished"] == report["requested"] == 12
    archive = RunArchive(load_settings(config_file=config).paths.landing)
    landed = [
        json.loads(line)
        for day in archive.days()
        for f in archive.files(day)
        for line in f.read_text().splitlines()
    ]
    assert len(landed) == 12 and {r["slot"] for r in landed} == {"primary"}
    assert sorted(report["files"]) == sorted(
        str(f) for d in archive.days() for f in archive.files(d)
    )
