"""``kr check [--backend kaggle|local] [--sessions N] [--json]``: everything a chain needs, before it runs.

One line per check (ok, warning, or problem with what to do), exit 0 when nothing is a problem, 1 otherwise.
The checks are in ``kaggle_runner/check.py``; no credential is ever printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from kaggle_runner.cli._app import _Options, command, open_backend, print_json
from kaggle_runner.cli.launch import BackendOption
from kaggle_runner.errors import EXIT_FAILED

MARKS = {"ok": "ok     ", "warning": "warning", "problem": "PROBLEM"}


@command("check")
def check(
    backend: BackendOption = None,
    sessions: Annotated[
        int, typer.Option("--sessions", "-n", min=1, help="Sessions the weekly quota should cover (default 1).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON only.")] = False,
) -> None:
    """Check credentials, slugs, accelerator, internet, quota and sizes without starting a session."""
    from kaggle_runner.check import configuration_checks, passed, run_checks

    checks, config = configuration_checks(_Options.config_path, backend)
    if config is not None:
        checks += run_checks(config, open_backend(config.backend, config), sessions=sessions)
    if as_json:
        print_json({"passed": passed(checks), "checks": [c.to_json() for c in checks]})
    else:
        for item in checks:
            print(f"{MARKS[item.status]}  {item.name:<12} {item.message}")
            if item.fix and item.status != "ok":
                print(f"{'':9}  {'':<12} -> {item.fix}")
    if not passed(checks):
        raise typer.Exit(EXIT_FAILED)
