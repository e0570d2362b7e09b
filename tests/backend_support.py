"""Helpers shared by the backend tests."""

from __future__ import annotations

import time

from kaggle_runner.backends.base import Backend, KernelState


def wait_terminal(backend: Backend, ref: str, version: int, timeout_s: float = 30.0) -> KernelState:
    """Poll a pushed version until it ends; fail the test if it does not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = backend.status(ref, version).state
        if state.is_terminal:
            return state
        time.sleep(0.1)
    raise AssertionError(f"{ref} v{version} did not finish in {timeout_s}s")
