"""The slot file: slot -> deployment, written atomically, read by shells, Docker and the app."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from autoretrain.deploy.slot_config import (
    SlotConfigError,
    read_slots,
    resolved_slots,
    slot_deployment,
    slot_file,
    slot_variable,
    write_slot,
)
from autoretrain.settings import load_settings


def azure_settings(tmp_path, **profile):
    # Call with the `settings` fixture in the test: it points AUTORETRAIN_HOME at tmp_path/home.
    return load_settings(
        config_file=tmp_path / "absent.yaml",
        provider="azure",
        providers={"azure": {"kind": "azure_openai", **profile}},
    )


def test_write_keeps_other_slots_and_a_shell_reads_it(tmp_path):
    path = tmp_path / "serving" / "azure-slots.env"
    assert read_slots(path) == {}
    write_slot(path, "primary", "autoretrain-v1", profile="azure")
    write_slot(path, "canary", "autoretrain-v2--dev", profile="azure")
    assert write_slot(path, "primary", "autoretrain-v2", profile="azure") == {
        "canary": "autoretrain-v2--dev",
        "primary": "autoretrain-v2",
    }
    assert read_slots(path) == {"canary": "autoretrain-v2--dev", "primary": "autoretrain-v2"}
    assert slot_variable("primary") == "AUTORETRAIN_SLOT_PRIMARY"
    # What an app started with `set -a; . file` (or Docker's --env-file) sees.
    shell = subprocess.run(
        [
            "sh",
            "-c",
            f'set -a; . "{path}"; echo "$AUTORETRAIN_SLOT_PRIMARY $AUTORETRAIN_SLOT_CANARY"',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == ["autoretrain-v2", "autoretrain-v2--dev"]
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by an app running as another user


def test_readers_never_see_a_half_written_file(tmp_path):
    path = tmp_path / "slots.env"
    write_slot(path, "primary", "d-0")
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(read_slots(path).get("primary"))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(1, 300):
        write_slot(path, "primary", f"d-{i}")
    stop.set()
    thread.join()
    assert seen and all(value is not None and value.startswith("d-") for value in seen)


def test_bad_values_and_lines_are_refused(tmp_path):
    path = tmp_path / "slots.env"
    with pytest.raises(SlotConfigError, match="cannot carry unquoted"):
        write_slot(path, "primary", "x; rm -rf /")
    assert not path.exists()
    path.write_text("AUTORETRAIN_SLOT_PRIMARY=d1\nthis is not a line\n")
    with pytest.raises(SlotConfigError, match=r"slots.env:2: 'this is not a line'"):
        read_slots(path)
    path.write_text("# comment\n\nexport AUTORETRAIN_SLOT_PRIMARY='d1'\nOTHER=x\n")
    assert read_slots(path) == {"primary": "d1"}


def test_resolution_file_first_then_profile(tmp_path, settings):
    settings = azure_settings(tmp_path, slots={"primary": "hand-made", "canary": "hand-canary"})
    path = slot_file(settings)
    assert path == tmp_path / "home" / "serving" / "azure-slots.env"
    assert slot_deployment(settings, "primary") == "hand-made"
    assert slot_deployment(settings, "shadow") is None
    write_slot(path, "primary", "autoretrain-v1")
    assert slot_deployment(settings, "primary") == "autoretrain-v1"
    assert resolved_slots(settings) == {"canary": "hand-canary", "primary": "autoretrain-v1"}

    elsewhere = tmp_path / "shared" / "slots.env"
    configured = azure_settings(tmp_path, slot_config_file=str(elsewhere))
    assert slot_file(configured) == elsewhere
    write_slot(elsewhere, "canary", "d2")
    assert slot_deployment(configured, "canary") == "d2"
    assert os.environ.get("AUTORETRAIN_SLOT_CANARY") is None  # nothing leaks into this process


def test_a_damaged_slot_file_stops_the_chat_provider_with_its_location(tmp_path, settings):
    from autoretrain.providers.base import ProviderError
    from autoretrain.providers.factory import chat_model_for

    settings = azure_settings(tmp_path, azure_endpoint="http://127.0.0.1:9", slots={"primary": "d"})
    path = slot_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text("AUTORETRAIN_SLOT_PRIMARY=d1\n<<<<<<< merge\n")
    with pytest.raises(
        ProviderError, match=r"azure-slots.env:2: '<<<<<<< merge' is not NAME=value"
    ):
        chat_model_for(settings, "primary")
