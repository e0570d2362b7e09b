"""``kr`` through typer's CliRunner, for the CLI tests."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from kaggle_runner.cli import app


class Result:
    def __init__(self, raw: Any) -> None:
        self.exit_code: int = raw.exit_code
        self.stdout: str = raw.stdout
        self.stderr: str = raw.stderr

    def __repr__(self) -> str:
        return f"exit {self.exit_code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def kr(*args: str, env: dict[str, str] | None = None) -> Result:
    return Result(CliRunner().invoke(app, list(args), env=env))
