"""``kr init``: write kr.toml, asking for each setting, or non-interactively with ``--yes`` and one flag per key.

The flags are made from ``kaggle_runner.config.init_keys()``, so a new setting gets its flag for free:
``kernel_slug`` is ``--kernel-slug``, ``trainer.model_size`` is ``--model-size``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from kaggle_runner import config as kr_config
from kaggle_runner.cli._app import command, progress, warn


def flag_name(key: str) -> str:
    """``trainer.model_size`` -> ``--model-size`` (no top-level key shares a name with a trainer key)."""
    return "--" + key.removeprefix("trainer.").replace("_", "-")


def _param_name(key: str) -> str:
    return "set_" + key.removeprefix("trainer.")


Prompt = Callable[[str, str], str]


def _prompt(key: str, default: str) -> str:
    return str(typer.prompt(key, default=default, show_default=True, err=True))


def ask_missing(values: Mapping[str, object], prompt: Prompt = _prompt) -> dict[str, Any]:
    """Ask ``prompt(key, default_text)`` for every setting not given; an empty answer keeps the default. The
    defaults shown follow earlier answers (backend and kernel_slug are asked first)."""
    parsed = kr_config.parse_init_values(values)
    for key in kr_config.init_keys():
        if key not in parsed and key != "trainer.extra_args":
            answer = prompt(key, kr_config.shown_default(parsed, key))
            if answer.strip():
                parsed[key] = kr_config.parse_value(key, answer)
    return parsed


def init(**options: Any) -> None:
    """Write kr.toml in a folder (default: here). Every value is validated before anything is written."""
    directory: Path = options.pop("directory")
    yes: bool = options.pop("yes")
    force: bool = options.pop("force")
    values: dict[str, object] = {
        key: options[_param_name(key)]
        for key in kr_config.init_keys()
        if options[_param_name(key)] is not None
    }
    if not yes:
        kr_config.init_target(directory, force=force)  # an existing kr.toml stops before any question
        values = ask_missing(values)
    path, written = kr_config.init_project(directory, values, force=force, warn=warn)
    progress(f"wrote {path} (backend {written.backend}, kernel {written.kernel_slug})")
    print(path)


def _signature() -> inspect.Signature:
    """``init``'s parameters as typer reads them: fixed options, then one string option per setting."""
    fixed = [
        (
            "directory",
            Path,
            typer.Option(Path("."), "--dir", help="Folder to write kr.toml into.", file_okay=False),
        ),
        ("yes", bool, typer.Option(False, "--yes", "-y", help="Do not ask: unset keys take their defaults.")),
        ("force", bool, typer.Option(False, "--force", help="Overwrite an existing kr.toml.")),
    ]
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, kind, option in fixed
    ]
    for key in kr_config.init_keys():
        option = typer.Option(None, flag_name(key), help=f"Value of {key} (validated like kr.toml).")
        params.append(
            inspect.Parameter(
                _param_name(key), inspect.Parameter.KEYWORD_ONLY, default=option, annotation=str | None
            )
        )
    return inspect.Signature(params)


def _register() -> None:
    signature = _signature()
    init.__signature__ = signature  # type: ignore[attr-defined]
    init.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    command("init")(init)


_register()
