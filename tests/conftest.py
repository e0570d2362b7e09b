"""Isolation for every test: its own HOME, Kaggle config, TMPDIR and kr state, no real credentials,
and no connection to anything but loopback."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from pathlib import Path

import pytest

# The Kaggle emulator fixtures (kaggle_runner.emulator) live in their own plugin module.
pytest_plugins = ["tests.emulator_plugin"]

_CREDENTIAL_VARS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN")


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class NetworkGuardError(AssertionError):
    """A test tried to reach a non-loopback address."""


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback(host):
            raise NetworkGuardError(f"test tried to connect to non-loopback address {address!r}")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if host is not None and not _is_loopback(host if isinstance(host, str) else host.decode()):
        raise NetworkGuardError(f"test tried to resolve non-loopback host {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True)
def _network_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", _guarded_getaddrinfo)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic-data cache for the whole session: it is kr's own cache, safe to share."""
    return tmp_path_factory.mktemp("kr-cache")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache_dir: Path) -> Path:
    """A private HOME, KAGGLE_CONFIG_DIR, TMPDIR and KR_HOME; every credential variable removed."""
    root = tmp_path / "env"
    dirs = {name: root / name for name in ("home", "kaggle-config", "tmp", "kr-home")}
    for path in dirs.values():
        path.mkdir(parents=True)
    for var in list(os.environ):
        if var in _CREDENTIAL_VARS or var.startswith("KAGGLE_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(dirs["home"]))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(dirs["kaggle-config"]))
    monkeypatch.setenv("TMPDIR", str(dirs["tmp"]))
    monkeypatch.setenv("KR_HOME", str(dirs["kr-home"]))
    monkeypatch.setenv("KR_CACHE_DIR", str(shared_cache_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(dirs["home"] / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(dirs["home"] / ".local" / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["home"] / ".cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("KR_DEBUG", raising=False)
    monkeypatch.delenv("KR_DEADLINE", raising=False)
    # tempfile caches its directory: make it read TMPDIR again.
    monkeypatch.setattr(tempfile, "tempdir", None)
    return root


@pytest.fixture
def formulas_file() -> Path:
    """The 8,475 real formulas of the dataset's full validation split (shared/data beside the checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "shared" / "data", here.parent.parent / "shared" / "data"):
        path = candidate / "linxy-full-val.formulas.txt"
        if path.is_file():
            return path
    pytest.skip("shared/data/linxy-full-val.formulas.txt is not beside this checkout")
