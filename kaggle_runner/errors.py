"""The one error type users see. ``kaggle_runner.cli.main`` turns it into a message plus a next step."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a run failed, or an API call failed
EXIT_USAGE = 2  # bad usage, bad configuration, bad input


class KrError(Exception):
    """A failure the user can act on: ``message`` says what happened, ``hint`` what to do next."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(KrError):
    """Bad usage, configuration or input: exit code 2."""

    exit_code = EXIT_USAGE


class ApiError(KrError):
    """A Kaggle (or local backend) call failed after the retries kr allows itself."""

    exit_code = EXIT_FAILED
