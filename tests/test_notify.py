"""Notifications: a command gets the event on stdin and in KR_* variables, a webhook gets it POSTed; failures
warn once and never raise."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from kaggle_runner.errors import UsageError
from kaggle_runner.notify import Notifier, event_env

EVENT = {"event": "chain.state", "chain": "chain-1", "session": 2, "sessions": 4, "state": "running",
         "previous": "pushing", "reason": "pushed", "message": "owner/k version 7"}  # fmt: skip


def test_command_gets_the_event_on_stdin_and_in_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "event.json"
    script = f"import json, os, sys; e = json.load(sys.stdin); e['env_state'] = os.environ['KR_STATE']; json.dump(e, open({str(out)!r}, 'w'))"
    Notifier(command=f'{sys.executable} -c "{script}"')(EVENT)
    received = json.loads(out.read_text())
    assert received["chain"] == "chain-1" and received["env_state"] == "running"


def test_event_env_names() -> None:
    env = event_env(EVENT)
    assert env["KR_CHAIN"] == "chain-1" and env["KR_SESSION"] == "2" and env["KR_PREVIOUS"] == "pushing"
    assert json.loads(env["KR_EVENT_JSON"]) == EVENT


class _Recorder(BaseHTTPRequestHandler):
    received: list[Any] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Any:
    _Recorder.received, _Recorder.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Recorder
    server.shutdown()
    server.server_close()


def test_webhook_gets_the_event_as_json(webhook: Any) -> None:
    url, recorder = webhook
    Notifier(url=url)(EVENT)
    assert recorder.received == [("application/json", EVENT)]


def test_failures_warn_once_and_never_raise(webhook: Any) -> None:
    url, recorder = webhook
    recorder.status = 500
    warnings: list[str] = []
    notifier = Notifier(command="exit 3", url=url, warn=warnings.append)
    notifier(EVENT)
    notifier(EVENT)
    assert len(recorder.received) == 2  # it keeps trying at every event
    assert len(warnings) == 2  # but says so once per target
    assert any("--notify-cmd failed (exit code 3" in w for w in warnings)
    assert any("--notify-url failed (HTTP 500)" in w for w in warnings)
    assert all(url not in w for w in warnings)  # a webhook URL may carry a token: never echoed


def test_unreachable_webhook_does_not_raise() -> None:
    warnings: list[str] = []
    Notifier(url="http://127.0.0.1:9/hook", warn=warnings.append, timeout_s=2)(EVENT)
    assert len(warnings) == 1


def test_a_non_http_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="http"):
        Notifier(url="file:///etc/passwd")
