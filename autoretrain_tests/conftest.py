"""Shared fixtures: every test gets its own data root, so nothing touches ./data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# The daily partitions start where the data starts (defs/partitions.py); the tests land runs on
# fixed days of 2026, so they pin the start before anything imports the definitions.
os.environ.setdefault("AUTORETRAIN_HISTORY_START", "2026-01-01")
# Two test workers share two cores, and the bootstraps pin two torch threads each (their thread
# count is part of the seed's result). OpenMP's threads spin while they wait for each other:
# two such trainings at once ran ~6x slower each (two 15 s loops of a tiny model's steps, 71
# steps/s each against 455 alone); waiting passively, 236 and 297. The wait policy changes no
# arithmetic. Read when torch loads OpenMP, so set before anything imports torch; `make test`
# also exports it, for the processes tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from autoretrain.settings import Settings, load_settings

# --- Running on several cores (pytest-xdist, `make test`) ---------------------------------------
# Most of the suite's time is a few long trainings that leave a core idle (one torch thread), so
# `make test` runs two workers. Work is handed out in groups: each module stays on one worker
# (its module fixtures are built once), and the modules of the shared loop (`loop_run`) are one
# group, so the loop runs once. The long groups go first, so the other worker fills the wait
# with the short tests instead of starting a long one at the end.
# (xdist's own `--dist loadgroup` renames node ids, which pytest 9.2 no longer lets it do, so the
# groups are read off the node ids by a scheduler of our own, below.)
SHARED_LOOP = "shared-loop"
SHARED_LOOP_MODULES = (
    "autoretrain_tests/gateway/test_agent_loop_e2e.py",
    "autoretrain_tests/test_daemon_e2e.py",
    "autoretrain_tests/test_loop_e2e.py",
    "autoretrain_tests/test_ui_browser.py",
)
LONG_FIRST = (
    SHARED_LOOP,
    "autoretrain_tests/test_loop_azure_e2e.py",
    "autoretrain_tests/test_loop_new_catalog_e2e.py",
)


def group_of(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return SHARED_LOOP if module in SHARED_LOOP_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with `group_of` for the scope."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        # `shared_loop` marks a module that asks for `loop_run` at run time (getfixturevalue).
        reads_loop = "loop_run" in item.fixturenames or item.get_closest_marker("shared_loop")
        if reads_loop and group_of(item.nodeid) != SHARED_LOOP:
            raise pytest.UsageError(
                f"{item.nodeid} reads the shared loop (loop_run): add its module to "
                "SHARED_LOOP_MODULES in autoretrain_tests/conftest.py, or a second test worker "
                "runs the whole loop again"
            )

    def rank(item: pytest.Item) -> int:
        group = group_of(item.nodeid)
        return LONG_FIRST.index(group) if group in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: within a rank, collection order (a module's order) holds


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


# --- The end-to-end loop, run once per session -------------------------------------------------
# The loop (bootstrap, self-play, training, evaluation, canary) takes minutes: every end-to-end
# module (test_loop_e2e.py, test_ui_browser.py) reads the same run instead of looping again.

LOOP_CONFIG = Path(__file__).parent / "loop.yaml"


def _point_env_at(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("AUTORETRAIN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("AUTORETRAIN_CONFIG", str(LOOP_CONFIG))


@dataclass(frozen=True)
class LoopRun:
    home: Path  # the run's AUTORETRAIN_HOME; its Dagster instance is under home/dagster
    settings: Settings
    results: list

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def config(self) -> Path:
        return LOOP_CONFIG


@pytest.fixture(scope="session")
def loop_run(tmp_path_factory) -> LoopRun:
    """One full loop on the embedded default, into a data root of its own. The environment
    points at it only while the loop runs; a test that needs it asks for `loop_env`."""
    from autoretrain.loop import run_loop  # imported here: only end-to-end tests pay for it

    home = tmp_path_factory.mktemp("loop") / "data"
    with pytest.MonkeyPatch.context() as mp:
        _point_env_at(mp, home)
        settings = load_settings()
        results = run_loop(settings, iterations=settings.loop.iterations, progress=False)
    return LoopRun(home, settings, results)


@pytest.fixture
def loop_env(loop_run, monkeypatch) -> Path:
    """The shared loop run's AUTORETRAIN_HOME, DAGSTER_HOME and AUTORETRAIN_CONFIG, for one
    test."""
    _point_env_at(monkeypatch, loop_run.home)
    return loop_run.home


@pytest.fixture
def looped(loop_run, loop_env):
    """(settings, results) of the shared loop run, with the environment pointing at it."""
    return loop_run.settings, loop_run.results


@pytest.fixture
def looped_copy(loop_run, tmp_path, monkeypatch):
    """(settings, results) of a copy of the shared loop's data root, for a test that adds
    candidates, runs or Dagster runs the other end-to-end tests must not see."""
    import shutil

    home = tmp_path / "data"
    shutil.copytree(loop_run.home, home, symlinks=True)
    _point_env_at(monkeypatch, home)
    return load_settings(), loop_run.results


def merged_config(base: str, *overrides: str) -> str:
    """YAML settings `base` with each of `overrides` merged in, section by section (a plain
    concatenation would let a repeated top-level key replace the whole section)."""
    import yaml

    def merge(into: dict, extra: dict) -> dict:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    merged: dict = yaml.safe_load(base) or {}
    for override in overrides:
        merge(merged, yaml.safe_load(override) or {})
    return yaml.safe_dump(merged, sort_keys=False)


# A round of the shared loop's settings made cheaper, for end-to-end tests of automation and of
# the gate's refusals (test_daemon_e2e.py, test_loop_e2e.py's poisoned dataset), not of efficacy.
# On a slow CI machine the defaults cost a candidate 7 to 12 minutes of training (three epochs)
# and a canary round 3 to 5 (half an iteration's self-play: 12,000 runs); here one epoch, a
# smaller replay, and a canary round of 1,000 runs. The loop's own candidate keeps the defaults.
CHEAP_ROUND = """
training:
  epochs: 1
evaluation:
  instances_per_scenario: 30
selfplay:
  runs_per_iteration: 2000
lifts:
  default:
    min_canary_runs: 80
"""


# Gates that let any working candidate through: for end-to-end tests of automation and
# plumbing (test_daemon_e2e.py, gateway/test_agent_loop_e2e.py), not of efficacy.
LOOSE_LIFTS = """
lifts:
  default:
    min_lift: 0.0
    significance: 0.5
    max_heldout_regression: 0.5
    max_category_regression: 1.0
    max_latency_ratio: 10.0
    max_cost_ratio: 10.0
    canary_margin: 0.5
"""
