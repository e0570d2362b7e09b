"""Notifications of a chain's state changes: a command (the event as JSON on stdin and in ``KR_*`` variables)
and/or a webhook (the event POSTed as JSON). A notification that fails is reported once per target and
never stops the chain.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

NOTIFY_TIMEOUT_S = 30.0
# Fields of the event also passed to the command as KR_<NAME> variables (the JSON on stdin has all).
ENV_FIELDS = ("event", "chain", "session", "sessions", "state", "previous", "reason", "message")

Warn = Callable[[str], None]


class Notifier:
    """Sends every event to the configured targets; callable, so it plugs into ``ChainRunner(notify=...)``."""

    def __init__(
        self,
        *,
        command: str | None = None,
        url: str | None = None,
        warn: Warn | None = None,
        timeout_s: float = NOTIFY_TIMEOUT_S,
    ) -> None:
        if url is not None and not url.startswith(("http://", "https://")):
            from kaggle_runner.errors import UsageError

            raise UsageError(f"--notify-url must be an http(s) URL, got {url!r}")
        self.command = command
        self.url = url
        self.timeout_s = timeout_s
        self._warn = warn or (lambda line: None)
        self._warned: set[str] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.command or self.url)

    def __call__(self, event: dict[str, Any]) -> None:
        if self.command:
            self._guarded("--notify-cmd", lambda: run_command(self.command or "", event, self.timeout_s))
        if self.url:
            self._guarded("--notify-url", lambda: post_json(self.url or "", event, self.timeout_s))

    def _guarded(self, target: str, send: Callable[[], None]) -> None:
        try:
            send()
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the chain goes on
            if target not in self._warned:
                self._warned.add(target)
                self._warn(f"warning: {target} failed ({_one_line(exc)}); the chain goes on")


def event_env(event: dict[str, Any]) -> dict[str, str]:
    """``KR_EVENT``, ``KR_CHAIN``, ``KR_STATE``, ... for a notification command."""
    env = {}
    for name in ENV_FIELDS:
        value = event.get(name)
        env[f"KR_{name.upper()}"] = "" if value is None else str(value)
    env["KR_EVENT_JSON"] = json.dumps(event, sort_keys=True, default=str)
    return env


def run_command(command: str, event: dict[str, Any], timeout_s: float) -> None:
    """Run the user's command through the shell (it is theirs, as in a git hook) with the event on stdin."""
    completed = subprocess.run(
        command,
        shell=True,
        input=json.dumps(event, sort_keys=True, default=str).encode(),
        env={**os.environ, **event_env(event)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit code {completed.returncode} {tail[0]}".strip())


def post_json(url: str, event: dict[str, Any], timeout_s: float) -> None:
    body = json.dumps(event, sort_keys=True, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the user's URL
        if response.status >= 400:
            raise RuntimeError(f"HTTP {response.status}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
