"""The ``kr`` application: global options, and the one place that turns a ``KrError`` into a message.

Every command registers through ``command()``, which wraps it so that a ``KrError`` prints
``error: <message>`` and ``hint: <next step>`` on stderr and exits with the error's code (1 failed run or
API call, 2 bad usage or config). Anything unexpected prints one line too; the traceback appears only with
``KR_DEBUG=1``. Usage errors found by the parser exit 2, as typer makes them.

Results go to stdout (``--json`` where a command lists things); progress and hints go to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from kaggle_runner import __version__
from kaggle_runner.errors import EXIT_FAILED, KrError

if TYPE_CHECKING:
    from kaggle_runner.backends.base import Backend
    from kaggle_runner.config import KrConfig

F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV_VAR = "KR_DEBUG"
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE

app = typer.Typer(
    name="kr",
    help="Train an image-to-LaTeX OCR model on Kaggle's free GPUs (or on this machine), across sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _Options:
    """Global options of the current invocation (set by the root callback, which runs every time)."""

    config_path: Path | None = None


def _print_version(value: bool) -> None:
    if value:
        print(f"kr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="kr.toml (or pyproject.toml with [tool.kr]); default: ./kr.toml"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print kr's version.")
    ] = False,
) -> None:
    _Options.config_path = config


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")


def report_error(exc: KrError) -> None:
    """``error: ...`` and ``hint: ...`` on stderr: the only way a KrError reaches the user."""
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def handle_errors(func: F) -> F:
    """Turn what a command raises into a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors (exit 2) keep their meaning
        except KrError as exc:
            if debug_enabled():
                traceback.print_exc()
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # The reader of stdout went away (kr status | head): stop quietly, as a killed pipe would.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if debug_enabled():
                traceback.print_exc()
            print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
            print(f"hint: rerun with {DEBUG_ENV_VAR}=1 for the traceback, and report it", file=sys.stderr)
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` with kr's error handling: use it for every command."""

    def register(func: F) -> F:
        app.command(*args, **kwargs)(handle_errors(func))
        return func

    return register


# ------------------------------------------------------------------------------------- shared helpers


def load_config() -> KrConfig:
    """The configuration named by ``--config``, or found in the current directory (defaults otherwise); its
    warnings go to stderr."""
    from kaggle_runner.config import load_config as load

    return load(_Options.config_path, warn=warn)


def open_backend(name: str, config: KrConfig | None = None) -> Backend:
    """The backend called ``name``, reporting its retries on stderr."""
    from kaggle_runner.backends import get_backend

    return get_backend(name, config, notice=progress)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    progress(f"warning: {message}")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table on stdout (no colours: it is read by people and by grep)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    for line in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())
