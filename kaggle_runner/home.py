"""kr's one state home: ``$KR_HOME`` (``~`` expanded), else the platform's user data folder.

Every command and module finds its state through here: run records and chains under ``runs/``, the local
backend's kernels and datasets under ``local/`` (docs/architecture.md §5). Nothing else reads ``KR_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV_VAR = "KR_HOME"
APP_NAME = "kaggle-runner"


def kr_home() -> Path:
    """The state folder. Read at every call, so a test or a long-lived process sees the current setting."""
    explicit = os.environ.get(HOME_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME))


def runs_dir(home: Path | None = None) -> Path:
    """Run records (``<run id>/record.json``) and chains (``<chain id>/chain.json``)."""
    return (home or kr_home()) / "runs"


def local_dir(home: Path | None = None) -> Path:
    """The local backend's kernels and dataset versions."""
    return (home or kr_home()) / "local"
