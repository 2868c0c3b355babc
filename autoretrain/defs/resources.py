"""Dagster resources: thin, typed handles on the project's settings."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from autoretrain.settings import Settings, load_settings


class AutoretrainConfig(dg.ConfigurableResource):
    """Where the project's data lives and which configuration applies.

    Empty fields mean "as the environment says" (AUTORETRAIN_HOME, autoretrain.yaml), so the
    UI, the loop and the tests resolve the same root unless told otherwise.
    """

    home: str = ""
    config_file: str = ""

    def settings(self) -> Settings:
        overrides = {"home": self.home} if self.home else {}
        return load_settings(Path(self.config_file) if self.config_file else None, **overrides)
