"""Dagster resources: a thin, typed handle on the project."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from autoretrain.project import Project
from autoretrain.settings import Settings, load_settings


class ProjectResource(dg.ConfigurableResource):
    """Where the project's data lives and which configuration applies.

    Empty fields mean "as the environment says" (AUTORETRAIN_HOME, autoretrain.yaml), so the
    UI, the loop and the tests resolve the same root unless told otherwise. Assets call
    `project()` and its stage methods; nothing else.
    """

    home: str = ""
    config_file: str = ""

    def settings(self) -> Settings:
        overrides = {"home": self.home} if self.home else {}
        return load_settings(Path(self.config_file) if self.config_file else None, **overrides)

    def project(self) -> Project:
        return Project(self.settings())
