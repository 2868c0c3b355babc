"""The Dagster UI in a real browser, after the real loop.

`dagster-webserver` serves the shared loop run's instance (conftest `loop_run`: one loop for every
end-to-end module) and Debian's Chromium, headless, driven by Playwright, loads it the way a user
would. The tests assert what must render, against what the instance recorded: the loop's
lineage, the gate's checks with their latest outcome, and the latest evaluation's decision. They
leave the layout, wording and styling of the UI alone.

Screenshots of each page go to the test's temporary folder; with AUTORETRAIN_UI_SCREENSHOTS set to
a folder (docs/images/ for the README and docs/operations.md) they are written there instead.
`make test` installs Chromium when it is missing; elsewhere: `apt-get install chromium`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(4800)]

PROJECT = Path(__file__).resolve().parents[1]

# From a landed run to the primary slot; the lead's stages may add assets in between, so the
# test asks that these are in primary's upstream lineage, not that they are all there is.
LOOP_ASSETS = (
    "raw_runs",
    "scored_runs",
    "promotion_decisions",
    "training_dataset",
    "candidate_model",
    "candidate_evaluation",
    "canary_deployment",
    "primary_deployment",
)
GATE_CHECKS = ("regression_gate", "canary_analysis")

# Every wait is bounded: a page, a locator, the whole browser start.
WAIT_MS = 60_000
# Chromium on a closed network: without these it keeps trying to reach update, sync and
# metrics services, and QUIC, and some connections are refused. Playwright adds --headless
# and a new, empty --user-data-dir of its own on each launch.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The lineage graph is fitted to the page: this wide, it draws full asset nodes (whole names,
# latest event, checks) rather than zoomed-out boxes with truncated names.
WIDE = {"width": 3000, "height": 1600}
READABLE = {"width": 1600, "height": 1000}
SCREENSHOTS_ENV = "AUTORETRAIN_UI_SCREENSHOTS"


# Session-scoped like `loop_run`, and named before it, so pytest looks for the browser before
# it runs the loop: a missing browser fails in seconds, not minutes.
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (never a browser build Playwright downloads: there is no network)."""
    path = os.environ.get("AUTORETRAIN_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        pytest.fail(
            f"the browser test needs Debian's Chromium ({path or 'no chromium on PATH'} "
            "not found; AUTORETRAIN_CHROMIUM names another): `make test` installs it as "
            "root; otherwise run `apt-get install -y --no-install-recommends chromium`",
            pytrace=False,
        )
    return path


@dataclass
class UI:
    """A browser context on one running webserver; `open` loads a page of it."""

    url: str
    context: Any  # playwright's BrowserContext
    shots: Path

    def open(self, path: str, viewport: dict = READABLE):
        page = self.context.new_page()
        page.set_viewport_size(viewport)
        page.goto(self.url + path, wait_until="domcontentloaded")
        return page

    def screenshot(self, page, name: str, clip: dict | None = None) -> Path:
        target = self.shots / f"{name}.png"
        page.screenshot(path=str(target), clip=clip)
        return target


@pytest.fixture(scope="module")
def ui(chromium, loop_run, tmp_path_factory) -> Iterator[UI]:
    from playwright.sync_api import sync_playwright

    from autoretrain_tests.servers import DagsterWebserver

    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path_factory.mktemp("ui_screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    server = DagsterWebserver(
        PROJECT,
        {
            "AUTORETRAIN_HOME": str(loop_run.home),
            "DAGSTER_HOME": str(loop_run.dagster_home),
            "AUTORETRAIN_CONFIG": str(loop_run.config),
        },
    )
    server.start()
    try:
        _assert_code_location_loaded(server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_FLAGS, timeout=WAIT_MS
            )
            context = browser.new_context(viewport=READABLE)
            context.set_default_timeout(WAIT_MS)
            context.set_default_navigation_timeout(WAIT_MS)
            # The "join the community" dialog covers the page on a first visit; a user
            # dismisses it once and the UI remembers that in local storage.
            context.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
            try:
                yield UI(server.url, context, shots)
            finally:
                context.close()
                browser.close()
    finally:
        server.stop()


def _assert_code_location_loaded(server) -> None:
    """A definitions error shows in the UI as an empty graph: say so plainly instead."""
    data = server.graphql(
        """{ workspaceOrError { ... on Workspace { locationEntries { name
        locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    )
    for entry in data["workspaceOrError"]["locationEntries"]:
        loaded = entry["locationOrLoadError"]
        assert loaded["__typename"] == "RepositoryLocation", (
            f"code location {entry['name']} failed to load: {loaded.get('message')}"
        )


def test_the_lineage_graph_shows_the_loop(ui):
    # Upstream of the primary slot, at full depth: the whole loop, as one connected graph.
    page = ui.open(
        f"/assets/{LOOP_ASSETS[-1]}?view=lineage&lineageScope=upstream&lineageDepth=50", WIDE
    )
    nodes = page.locator("svg foreignObject [data-tooltip]")
    nodes.first.wait_for()
    for name in LOOP_ASSETS:
        try:
            page.locator(f'svg foreignObject [data-tooltip="{name}"]').first.wait_for()
        except Exception as exc:  # playwright's TimeoutError: say what the graph did draw
            shown = sorted(set(nodes.evaluate_all("els => els.map(e => e.dataset.tooltip)")))
            ui.screenshot(page, "lineage-failed")
            raise AssertionError(
                f"{name} is not drawn in the lineage graph; drawn: {shown}"
            ) from exc
    page.wait_for_timeout(1_000)  # the graph eases into its fitted zoom; only for the picture
    ui.screenshot(page, "lineage", clip=_graph_box(page))


def _graph_box(page) -> dict | None:
    """The drawn part of the graph (the page around it is mostly empty canvas), padded."""
    return page.evaluate(
        """() => {
        const boxes = [...document.querySelectorAll('svg foreignObject')]
          .map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
        if (!boxes.length) return null;
        const pad = 24;
        const x = Math.max(0, Math.min(...boxes.map(r => r.left)) - pad);
        const y = Math.max(0, Math.min(...boxes.map(r => r.top)) - pad);
        const right = Math.min(window.innerWidth, Math.max(...boxes.map(r => r.right)) + pad);
        const bottom = Math.min(window.innerHeight, Math.max(...boxes.map(r => r.bottom)) + pad);
        return {x, y, width: right - x, height: bottom - y};
      }"""
    )


def _latest_check_executions() -> dict[str, tuple[str, str | None]]:
    """check name -> (owning asset, latest execution status or None), from the instance."""
    with dg.DagsterInstance.get() as instance:
        from autoretrain.definitions import defs

        keys = {
            key.name: key
            for key in defs.resolve_asset_graph().asset_check_keys
            if key.name in GATE_CHECKS
        }
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            list(keys.values())
        )
    return {
        name: (key.asset_key.to_user_string(), latest[key].status.value if key in latest else None)
        for name, key in keys.items()
    }


# The UI's words for an execution's outcome: "Succeeded" in the check list, "Passed" in the
# check's panel; "Failed" in both.
OUTCOME = {"SUCCEEDED": re.compile(r"\b(Succeeded|Passed)\b"), "FAILED": re.compile(r"\bFailed\b")}


@pytest.mark.parametrize("check", GATE_CHECKS)
def test_the_gate_checks_show_their_latest_outcome(ui, loop_env, check):
    executions = _latest_check_executions()
    assert check in executions, f"{check} is not defined on any asset"
    asset, status = executions[check]
    assert status in OUTCOME, f"the loop left {check} {status or 'never executed'}"
    page = ui.open(f"/assets/{asset}?view=checks")
    # The check's entry in the list (its name, then its latest status), then its own panel.
    entry = page.locator(f'[title="{check}"]').first.locator("xpath=..")
    entry.wait_for()
    shown = entry.inner_text()
    assert OUTCOME[status].search(shown), f"{asset}'s checks list shows {shown!r}, not {status}"
    entry.click()
    result = page.get_by_text("Evaluation result", exact=True).first.locator("xpath=..")
    result.wait_for()
    shown = result.inner_text()
    assert OUTCOME[status].search(shown), f"{check}'s panel shows {shown!r}, not {status}"
    ui.screenshot(page, f"check-{check}")


def test_the_latest_evaluation_decision_shows(ui, loop_env):
    with dg.DagsterInstance.get() as instance:
        records = instance.fetch_materializations(
            dg.AssetKey("candidate_evaluation"), limit=1
        ).records
    assert records, "the loop never materialized candidate_evaluation"
    event = records[0].asset_materialization
    decision = str(event.metadata["decision"].value)
    page = ui.open("/assets/candidate_evaluation?view=events")
    # The newest event is selected first; its metadata table has a `decision` row. Rows of
    # tables nested in the report (markdown) are not the metadata's own.
    row = page.locator(
        "xpath=//tr[td[1][normalize-space()='decision'] and not(ancestor::td)]/td[2]"
    ).first
    row.wait_for()
    assert row.inner_text().strip() == decision, (
        f"the UI shows decision {row.inner_text().strip()!r}, the instance recorded {decision!r}"
    )
    if event.partition:
        page.get_by_text(event.partition).first.wait_for()
    ui.screenshot(page, "evaluation")
