"""``kr quota``: the accelerator quota the backend reports."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kaggle_runner.backends.base import Quota
from kaggle_runner.cli._app import command, load_config, open_backend, print_json
from kaggle_runner.cli.launch import BackendOption


def _hours(seconds: float | None) -> str:
    return "unlimited" if seconds is None else f"{seconds / 3600:.1f} h"


def quota_json(backend: str, quota: Quota) -> dict[str, Any]:
    return {
        "backend": backend,
        "used_s": quota.used_s,
        "allowed_s": quota.allowed_s,
        "remaining_s": quota.remaining_s,
        "refresh_time": quota.refresh_time.isoformat() if quota.refresh_time else None,
    }


@command("quota")
def quota(
    backend: BackendOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Show the weekly GPU quota: used, allowed, remaining, and when it refreshes."""
    config = load_config()
    name = backend or config.backend
    current = open_backend(name, config).quota()
    if as_json:
        print_json(quota_json(name, current))
        return
    used = "unknown" if current.used_s is None else _hours(current.used_s)
    print(f"backend:   {name}")
    print(f"used:      {used}")
    print(f"allowed:   {_hours(current.allowed_s)}")
    if current.allowed_s is not None and current.used_s is not None:
        print(f"remaining: {_hours(current.remaining_s)}")
    if current.refresh_time is not None:
        print(f"refreshes: {current.refresh_time.isoformat()}")
