"""Where the official Kaggle client finds its credentials, and the one thing kr reads from them: the username.

The secret beside it is never kept, returned, logged or printed; kr lets the client authenticate itself.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kaggle_runner.errors import UsageError

if TYPE_CHECKING:
    from kaggle_runner.config import KrConfig

TOKEN_FILES = ("access_token", "access_token.txt")


def kaggle_config_dir() -> Path:
    """The folder the official client reads kaggle.json from (same rules as kaggle 2.2.5)."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg) / "kaggle"
    return legacy


def _username_from_json(path: Path) -> str | None:
    """The ``username`` field of a credentials file; the secret beside it is not kept."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    username = data.get("username") if isinstance(data, dict) else None
    return username if isinstance(username, str) and username else None


def has_access_token() -> bool:
    home_kaggle = Path.home() / ".kaggle"
    return bool(os.environ.get("KAGGLE_API_TOKEN")) or any((home_kaggle / name).is_file() for name in TOKEN_FILES)


def credentials_username() -> str | None:
    """The user the credentials name (``KAGGLE_USERNAME``, kaggle.json, ~/.kaggle/credentials.json), if any."""
    from_env = os.environ.get("KAGGLE_USERNAME")
    if from_env:
        return from_env
    for path in (kaggle_config_dir() / "kaggle.json", Path.home() / ".kaggle" / "credentials.json"):
        username = _username_from_json(path)
        if username:
            return username
    return None


def has_credentials() -> bool:
    """Whether anything the client would authenticate with exists (the key is looked at, never read out)."""
    key_file = kaggle_config_dir() / "kaggle.json"
    return bool(os.environ.get("KAGGLE_KEY") and os.environ.get("KAGGLE_USERNAME")) or key_file.is_file() \
        or has_access_token()


def resolve_username(config: KrConfig) -> str:
    """The Kaggle account to use: ``username`` in the config, else what the official client would find.
    Only the name is read: no secret is kept, returned or printed. An access token alone does not name its
    user offline, so it needs ``username``."""
    if config.username:
        return config.username
    username = credentials_username()
    if username:
        return username
    if has_access_token():
        raise UsageError(
            "found a Kaggle access token, but it does not say which user it belongs to",
            'set username = "<your Kaggle username>" in kr.toml, or export KAGGLE_USERNAME',
        )
    raise UsageError(
        "no Kaggle credentials found (KAGGLE_USERNAME, kaggle.json, access token)",
        f"create an API token at https://www.kaggle.com/settings and save it as {kaggle_config_dir() / 'kaggle.json'}, "
        "or use --backend local",
    )
