"""pytest fixtures around ``kaggle_runner.emulator``: a local Kaggle that the unmodified ``kaggle`` client talks to.

Fixtures:

- ``kaggle_emulator``: an ``Emulator`` (see its module docstring for calls and faults) started on a free
  loopback port with its own root under the test's tmp dir, fast settings (``time_scale=0.001``, short queue
  and processing delays), and stopped at the end with every kernel process it started killed. Requesting it
  also routes the official client *in this process* to it: ``KAGGLE_API_ENVIRONMENT=LOCALHOST``, the LOCAL
  endpoint of ``kagglesdk`` pointed at the emulator, ``--local`` added to ``KaggleApi.args`` (computed when
  ``kaggle`` was first imported, maybe by an earlier test), ``KaggleApi.config_dir`` moved to this test's
  ``KAGGLE_CONFIG_DIR``, fake credentials ``testuser``/``fakekey`` in its ``kaggle.json`` (0600),
  ``kaggle.api`` re-authenticated, proxies and ``NO_PROXY`` cleared. All of it is undone after the test.
  ``kaggle_emulator.client_env()`` returns the environment for a *child* process (a ``kr`` subprocess, the
  ``kaggle`` CLI): the same plus ``HTTP_PROXY``/``HTTPS_PROXY`` = the emulator (the child's client sends
  ``http://localhost/api/v1/...`` through it; nothing can reach https://api.kaggle.com).
- ``kaggle_api``: a fresh, authenticated ``KaggleApi`` talking to ``kaggle_emulator``.
- ``emulator_settings``: the ``Settings`` the emulator starts with; override it in a test module to change them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggle_runner.emulator import Emulator, Settings

USERNAME = "testuser"
KEY = "fakekey"
_PROXY_VARS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


class TestEmulator(Emulator):
    """The emulator as tests see it: ``client_env()`` for subprocesses, ``username`` of the fake account."""

    __test__ = False  # not a test class, whatever its name says
    username = USERNAME

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _PROXY_VARS}
        env.update(
            {
                "KAGGLE_API_ENVIRONMENT": "LOCALHOST",
                "HTTP_PROXY": self.url,
                "HTTPS_PROXY": self.url,
                "http_proxy": self.url,
                "https_proxy": self.url,
                "NO_PROXY": "",
                "no_proxy": "",
            }
        )
        return env


@pytest.fixture
def emulator_settings() -> Settings:
    return Settings(
        accounts={USERNAME: KEY},
        time_scale=0.001,
        queue_delay_s=0.2,
        kill_grace_s=1.0,
        dataset_processing_s=0.3,
    )


def _write_credentials(config_dir: Path) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "kaggle.json"
    path.write_text(json.dumps({"username": USERNAME, "key": KEY}))
    path.chmod(0o600)
    return path


def _route_client_here(
    monkeypatch: pytest.MonkeyPatch, url: str, config_dir: Path, credentials: Path
) -> None:
    """Make the official client in this process talk to ``url`` with the fake account."""
    import kaggle
    from kaggle.api.kaggle_api_extended import KaggleApi
    from kagglesdk import kaggle_env

    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, url)
    if "--local" not in KaggleApi.args:
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])
    monkeypatch.setattr(KaggleApi, "config_dir", str(config_dir))
    monkeypatch.setattr(KaggleApi, "config", str(credentials))
    monkeypatch.setattr(kaggle.api, "config_values", {})
    kaggle.api.authenticate()


@pytest.fixture
def kaggle_emulator(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator_settings: Settings
) -> Iterator[TestEmulator]:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    config_dir = Path(os.environ["KAGGLE_CONFIG_DIR"])
    credentials = _write_credentials(config_dir)
    emulator = TestEmulator(tmp_path / "kaggle-emulator", emulator_settings).start()
    try:
        _route_client_here(monkeypatch, emulator.url, config_dir, credentials)
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def kaggle_api(kaggle_emulator: TestEmulator) -> Any:
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api
