"""The HTTP layer: routing, authentication, fault injection, the RPC JSON and the plain-HTTP endpoints."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from kaggle_runner.emulator.faults import Fault
from kaggle_runner.emulator.wire import ApiFailure, error_body, version_number

if TYPE_CHECKING:
    from kaggle_runner.emulator import Emulator

Rpc = Callable[["Emulator", str, dict[str, Any], str], dict[str, Any]]


def _kernel_of(body: dict[str, Any]) -> str | None:
    if body.get("userName") and body.get("kernelSlug"):
        return f"{body['userName']}/{body['kernelSlug']}"
    return str(body["slug"]) if body.get("slug") and "/" in str(body["slug"]) else None


def _dataset_version(emu: Emulator, user: str, body: dict[str, Any], base: str) -> dict[str, Any]:
    dataset = emu.datasets.find(str(body.get("ownerSlug") or ""), str(body.get("datasetSlug") or ""))
    return emu.datasets.create_version(dataset, body.get("body") or {}, base)


def _dataset_version_by_id(emu: Emulator, user: str, body: dict[str, Any], base: str) -> dict[str, Any]:
    dataset = emu.datasets.by_id(int(body.get("id") or 0))
    return emu.datasets.create_version(dataset, body.get("body") or {}, base)


def _introspect(emu: Emulator, user: str, body: dict[str, Any], base: str) -> dict[str, Any]:
    username = emu.settings.tokens.get(str(body.get("token") or ""))
    return {"active": True, "username": username} if username else {"active": False}


RPCS: dict[str, Rpc] = {
    "SaveKernel": lambda emu, user, b, base: emu.kernels.save(user, b, base),
    "GetKernelSessionStatus": lambda emu, user, b, base: emu.kernels.status(
        b.get("userName", ""), b.get("kernelSlug", ""), b.get("versionLabel")
    ),
    "ListKernelSessionOutput": lambda emu, user, b, base: emu.kernels.outputs(
        b.get("userName", ""),
        b.get("kernelSlug", ""),
        b.get("versionLabel"),
        b.get("pageSize"),
        b.get("pageToken"),
        base,
    ),
    "GetKernel": lambda emu, user, b, base: emu.kernels.get(
        b.get("userName", ""), b.get("kernelSlug", ""), b.get("versionLabel")
    ),
    "ListKernels": lambda emu, user, b, base: emu.kernels.list(b, user),
    "GetAcceleratorQuotaStatistics": lambda emu, user, b, base: emu.kernels.quota_statistics(),
    "GetDatasetStatus": lambda emu, user, b, base: emu.datasets.status(
        b.get("ownerSlug", ""), b.get("datasetSlug", "")
    ),
    "GetDataset": lambda emu, user, b, base: emu.datasets.get(
        b.get("ownerSlug", ""), b.get("datasetSlug", ""), base
    ),
    "StartBlobUpload": lambda emu, user, b, base: emu.blobs.start(b, base),
    "CreateDataset": lambda emu, user, b, base: emu.datasets.create(user, b, base),
    "CreateDatasetVersion": _dataset_version,
    "CreateDatasetVersionById": _dataset_version_by_id,
    "IntrospectToken": _introspect,
}
_CREATE_CALLS = ("CreateDataset", "CreateDatasetVersion", "CreateDatasetVersionById")


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        super().__init__(address, Handler)
        self.emulator = emulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (a dropped or abandoned stream) is normal, not an error."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the emulator records calls in ``Emulator.calls`` instead of printing them."""

    @property
    def emu(self) -> Emulator:
        return self.server.emulator

    # ------------------------------------------------------------------------------------------ routing

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        """Path segments without the ``/api`` prefix; absolute-form request lines (proxy mode) accepted."""
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if segments[:1] == ["api"]:
            segments = segments[1:]
        return segments, parse_qs(parts.query)

    def do_POST(self) -> None:
        segments, _ = self._route()
        body = self._read_body()
        if len(segments) != 3 or segments[0] != "v1" or segments[2] not in RPCS:
            self._send_json(404, error_body(404, f"no such method: {self.path}"))
            return
        self._rpc(segments[2], body)

    def do_GET(self) -> None:
        segments, query = self._route()
        if segments[:1] == ["kernel-output"] and len(segments) >= 5:
            self._download(segments[1], segments[2], segments[3], "/".join(segments[4:]))
        elif segments[:4] == ["v1", "kernels", "logs", "stream"] and len(segments) == 6:
            self._logs_stream(segments[4], segments[5], query.get("versionLabel", [""])[0] or None)
        else:
            self._send_json(404, error_body(404, f"not found: {self.path}"))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_PUT(self) -> None:
        segments, _ = self._route()
        data = self._read_body_bytes()
        if len(segments) != 2 or segments[0] != "upload":
            self._send_json(404, error_body(404, f"not found: {self.path}"))
            return
        self._upload(segments[1], data)

    def do_CONNECT(self) -> None:
        # An https request routed through the emulator as a proxy: never tunnel anywhere.
        self._send_json(405, error_body(405, "the Kaggle emulator does not tunnel https"))
        self.close_connection = True

    # ---------------------------------------------------------------------------------------- RPC calls

    def _rpc(self, name: str, raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, error_body(400, "request body is not JSON"))
            return
        user = self._user() if name != "IntrospectToken" else ""
        if user is None:
            self._record(name, 401)
            self._send_json(401, error_body(401, "Unauthenticated"))
            return
        fault = self.emu.faults.take(name, _kernel_of(body))
        if fault is not None and self._inject(name, fault):
            return
        try:
            answer = RPCS[name](self.emu, user, body, self._base_url())
        except ApiFailure as failure:
            self._record(name, failure.status)
            self._send_json(failure.status, error_body(failure.status, failure.message))
            return
        self._record(name, 200)
        self._send_json(200, answer)

    def _user(self) -> str | None:
        """The caller: HTTP Basic ``username:key`` of a known account, or a known Bearer token."""
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return self.emu.settings.tokens.get(value)
        if scheme != "Basic":
            return None
        try:
            username, _, key = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        return username if self.emu.settings.accounts.get(username) == key else None

    def _inject(self, name: str, fault: Fault) -> bool:
        """Answer with the fault; False when the fault does not apply to this call (let it through)."""
        if fault.drop:
            self._record(name, 0)
            self.close_connection = True  # no answer at all: the client sees the connection drop
            return True
        if fault.in_band is not None:
            self._record(name, 200)
            if name in _CREATE_CALLS:
                self._send_json(200, {"status": "error", "error": fault.in_band})
            else:
                self._send_json(200, {"error": fault.in_band})
            return True
        status = int(fault.status or 500)
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        message = fault.message or _REASONS.get(status, "Injected failure")
        self._record(name, status)
        self._send_json(status, error_body(status, message, fault.envelope), headers)
        return True

    # ---------------------------------------------------------------------------------- plain endpoints

    def _download(self, owner: str, slug: str, number: str, name: str) -> None:
        ref = f"{owner}/{slug}"
        fault = self.emu.faults.take("DownloadOutput", ref)
        if fault is not None and fault.status == 403 and not fault.message:
            fault.message = "ExpiredToken: Invalid argument. The provided token has expired."
        if fault is not None and self._inject("DownloadOutput", fault):
            return
        try:
            path = self.emu.kernels.output_path(owner, slug, int(number), name)
        except (ApiFailure, ValueError):
            self._record("DownloadOutput", 404)
            self._send_json(404, error_body(404, f"no output file {name}"))
            return
        self._send_file(path)
        self._record("DownloadOutput", 200)

    def _send_file(self, path: Path) -> None:
        stat = path.stat()
        size = stat.st_size
        etag = f'"{size:x}-{stat.st_mtime_ns:x}"'
        last_modified = formatdate(stat.st_mtime, usegmt=True)
        start, end = 0, size - 1
        byte_range = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        partial = bool(byte_range) and (not if_range or if_range in (etag, last_modified))
        if partial:
            parsed = _parse_range(str(byte_range), size)
            if parsed is None:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            start, end = parsed
        headers = {
            "Content-Type": "application/octet-stream",
            "Last-Modified": last_modified,
            "ETag": etag,
            "Accept-Ranges": "bytes",
        }
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        with open(path, "rb") as handle:
            handle.seek(start)
            self._send(206 if partial else 200, handle.read(end - start + 1), headers)

    def _upload(self, token: str, data: bytes) -> None:
        fault = self.emu.faults.take("BlobUpload")
        keep = None
        if fault is not None and fault.status == 503 and "Content-Range" not in self.headers:
            keep = int(len(data) * fault.partial)  # part of the body arrived before the failure
        elif fault is not None and self._inject("BlobUpload", fault):
            return
        status, headers = self.emu.blobs.put(token, self.headers.get("Content-Range"), data, keep)
        self._record("BlobUpload", status)
        self._send(status, b"", headers)

    def _logs_stream(self, owner: str, slug: str, label: str | None) -> None:
        """Live: SSE ``data: {json}`` events ending with ``END_OF_LOG``; finished: the whole log as JSON."""
        if self._user() is None:
            self._send_json(401, error_body(401, "Unauthenticated"))
            return
        fault = self.emu.faults.take("LogsStream", f"{owner}/{slug}")
        if fault is not None and self._inject("LogsStream", fault):
            return
        try:
            kernel = self.emu.kernels.kernel(owner, slug)
            version = kernel.version(version_number(label))
        except ApiFailure as failure:
            self._send_json(failure.status, error_body(failure.status, failure.message))
            return
        self._record("LogsStream", 200)
        if self.emu.kernels.is_over(owner, slug, version.number):
            self._send_json(200, self.emu.kernels.log_events(version))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = 0
        while not self.emu.stopping.is_set():
            over = self.emu.kernels.is_over(owner, slug, version.number)
            events = self.emu.kernels.log_events(version)
            for event in events[sent:]:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            sent = len(events)
            self.wfile.flush()
            if over:
                break
            time.sleep(0.1)
        self.wfile.write(b"data: END_OF_LOG\n\n")
        self.wfile.flush()

    # ----------------------------------------------------------------------------------------- plumbing

    def _base_url(self) -> str:
        return self.emu.url

    def _record(self, name: str, status: int) -> None:
        with self.emu.calls_lock:
            self.emu.calls.append((name, status))

    def _read_body_bytes(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_body(self) -> bytes:
        return self._read_body_bytes()

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send(status, data, {"Content-Type": "application/json", **(headers or {})})

    def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


_REASONS = {
    429: "TooManyRequests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    403: "Permission denied",
}


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end), None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.split(",")[0].strip().partition("-")
    try:
        if unit.strip() != "bytes":
            return None
        if not first:
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
    except ValueError:
        return None
    return (start, end) if start <= end and start < size else None


def serve(emulator: Emulator, host: str, port: int) -> tuple[EmulatorServer, threading.Thread]:
    server = EmulatorServer((host, port), emulator)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return server, thread
