"""Shared fixtures: every test gets its own data root, so nothing touches ./data."""

from __future__ import annotations

import pytest

from autoretrain.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    home = tmp_path / "home"
    monkeypatch.setenv("AUTORETRAIN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir(parents=True)
    return load_settings(config_file=tmp_path / "absent.yaml")
