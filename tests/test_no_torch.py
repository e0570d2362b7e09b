"""kr's local half never imports torch: not on import, not for --help, not for kr status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs kr's entry point in a fresh interpreter, then reports which heavy modules got imported.
PROBE = """
import json, sys
from kaggle_runner.cli import main
sys.argv = ["kr", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "trainer", "datasets"))
print("KR-PROBE " + json.dumps({"code": code, "heavy": heavy}))
"""


def probe(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("KR-PROBE ")]
    assert lines, done.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("KR-PROBE "))


def test_importing_the_cli_does_not_import_torch() -> None:
    code = (
        "import sys, kaggle_runner.cli, kaggle_runner.runs, kaggle_runner.backends.local; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "--json"], ["launch", "--help"]])
def test_commands_do_not_import_torch(args: list[str]) -> None:
    result = probe(*args)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_the_kaggle_backend_does_not_import_torch() -> None:
    result = probe("quota", "--backend", "kaggle")  # no credentials here: a clean usage error, no torch
    assert result["code"] == 2
    assert result["heavy"] == []
