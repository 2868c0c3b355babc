"""Shared fixtures: every test gets its own data root, so nothing touches ./data."""

from __future__ import annotations

import os

import pytest

# The daily partitions start where the data starts (defs/partitions.py); the tests land runs on
# fixed days of 2026, so they pin the start before anything imports the definitions.
os.environ.setdefault("AUTORETRAIN_HISTORY_START", "2026-01-01")

from autoretrain.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("AUTORETRAIN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    # An empty configuration file of the test's own, so a developer's ./autoretrain.yaml never
    # leaks in, for code that loads settings itself (the CLI, the Dagster resource).
    config = tmp_path / "autoretrain.yaml"
    config.write_text("")
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(config))
    return load_settings(config_file=config)
