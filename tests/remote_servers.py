"""Real servers on 127.0.0.1 for the tests of remote files, started once a session (fixtures of conftest.py).

- ``http_url``: an HTTP server with Range support (``python -m RangeHTTPServer``) serving ``served``,
  copies of the shared files and :data:`BIG`;
- ``s3_url``: moto's S3 server (``moto_server``) holding the same files in :data:`BUCKET`, reached
  through ``AWS_ENDPOINT_URL`` with dummy credentials (set for the session);
- ``proxy``: a fault-injecting proxy in front of the HTTP server (latency, 503s, dropped connections,
  no version tags), which also counts the bytes and requests it sends.

A test that needs them and a package they need (fsspec, aiohttp, s3fs, RangeHTTPServer) is not
installed is skipped.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest


def _needs_remote() -> None:
    for name in ("fsspec", "aiohttp", "s3fs", "RangeHTTPServer"):
        pytest.importorskip(name)


MRC_FILES = {f"mrc/{name}": ("mrc", "mrcz-0.6.0", name) for name in (
    "complex64_blosclz.mrcz", "float32_none.mrc", "float32_zstd.mrcz", "float32_zstd_bigendian.mrcz",
    "float32_zstd_blosc2chunks.mrcz", "float32_zstd_meta.mrcz", "int16_lz4hc.mrcz", "int16_none_meta.mrc",
    "int8_lz4.mrcz", "list_slices2_zstd.mrcz", "single_image_float32_lz4.mrcz", "uint16_zlib.mrcz",
    "uint4_mode101.mrc")}
MRC_FILES |= {f"emdb/{name}": ("mrc", "emdb", name) for name in
              ("EMD-3197.map", "emd_3197.map.gz", "EMD-3197.map.bz2")}
DM_FILES = {f"dm/{name}": ("dm", name) for name in
            ("ncempy_dmTest_3D_int16_64-65-66.dm4", "ncempy_08_carbon.dm3", "rsciio_2D_test-1.dm4")}
BIG = "big.mrcz"  # 32 frames of 512 x 512 random int8, zstd: 8 MiB that do not compress
BIG_SHAPE = (32, 512, 512)
BUCKET = "napari-mrcz-test"


# -- servers ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("HEAD", "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.1)
    from .conftest import kill_hard

    kill_hard(process)
    pytest.fail(f"no answer on port {port} within {timeout} s: {log.read_text()[-2000:]}")


def start(args: list[str], cwd: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([*args, str(port)], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    wait_until_answering(port, process, log)
    return process, port


def stop(process: subprocess.Popen) -> None:
    from .conftest import kill_hard

    kill_hard(process)
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Path:
    """A folder of copies of the shared files (:data:`MRC_FILES`, :data:`DM_FILES`) and :data:`BIG`."""
    from napari_mrcz import codec

    from .conftest import session_folder

    _needs_remote()
    folder = session_folder(tmp_path_factory.mktemp("served"), {**MRC_FILES, **DM_FILES})
    data = np.random.default_rng(7).integers(-128, 127, size=BIG_SHAPE, dtype=np.int8, endpoint=True)
    codec.writeMRC(data, str(folder / BIG), compressor="zstd", clevel=1)
    return folder


@pytest.fixture(scope="session")
def http_url(served, tmp_path_factory) -> str:
    """The range server's URL of the served folder (``http://127.0.0.1:PORT/``)."""
    log = tmp_path_factory.mktemp("logs") / "range-server.log"
    process, port = start([sys.executable, "-m", "RangeHTTPServer", "--bind", "127.0.0.1"], served, log)
    yield f"http://127.0.0.1:{port}/"
    stop(process)


@pytest.fixture(scope="session")
def s3_url(served, tmp_path_factory) -> str:
    """``s3://BUCKET/`` on moto's server, the served folder in it; the AWS variables set for the session."""
    from .conftest import script

    s3fs = pytest.importorskip("s3fs")
    logs = tmp_path_factory.mktemp("moto")
    process, port = start([script("moto_server"), "-H", "127.0.0.1", "-p"], logs, logs / "moto.log")
    env = pytest.MonkeyPatch()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                 "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        env.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(logs / "no-config"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(logs / "no-credentials")}.items():
        env.setenv(name, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(BUCKET)
    for path in served.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{BUCKET}/{path.relative_to(served).as_posix()}", path.read_bytes())
    yield f"s3://{BUCKET}/"
    env.undo()
    stop(process)


class Faults:
    """What the proxy does to each path's requests, and what it sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # One request at a time to the range server: it listens with a backlog of 5, and connections
        # past it wait a second for the SYN to be sent again (the latency this proxy adds stays concurrent).
        self.upstream = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.unavailable: collections.Counter[str] = collections.Counter()  # 503s still to answer
        self.dropped: collections.Counter[str] = collections.Counter()  # connections still to drop
        self.always: set[str] = set()  # always 503
        self.fail_after: dict[str, int] = {}  # 503 for every request after the first N (a server gone)
        self.untagged: set[str] = set()  # answered without ETag and Last-Modified
        self.no_range: set[str] = set()  # answered whole, as by a server without Range requests
        self.latency = 0.0
        self.sent: collections.Counter[str] = collections.Counter()  # body bytes
        self.requests: collections.Counter[str] = collections.Counter()

    def action(self, path: str) -> str:
        with self.lock:
            self.requests[path] += 1
            if path in self.always or self.requests[path] > self.fail_after.get(path, self.requests[path]):
                return "503"
            for kind, left in (("drop", self.dropped), ("503", self.unavailable)):
                if left[path] > 0:
                    left[path] -= 1
                    return kind
        return "forward"


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    KEPT = ("Content-Type", "Content-Range", "Last-Modified", "ETag", "Accept-Ranges")

    def do_GET(self) -> None:
        self.forward(body=True)

    def do_HEAD(self) -> None:
        self.forward(body=False)

    def forward(self, body: bool) -> None:
        faults: Faults = self.server.faults
        path = self.path.split("?", 1)[0].lstrip("/")
        action = faults.action(path)
        if faults.latency:
            time.sleep(faults.latency)
        if action == "drop":
            self.close_connection = True  # nothing sent: the client sees the connection close
            return
        if action == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with faults.upstream:
            upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=30)
            try:
                ranged = self.headers.get("Range") and path not in faults.no_range
                headers = {"Range": self.headers["Range"]} if ranged else {}
                upstream.request(self.command, self.path, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
        self.send_response(answer.status)
        for name in self.KEPT:
            if name in ("ETag", "Last-Modified") and path in faults.untagged:
                continue
            if answer.getheader(name):
                self.send_header(name, answer.getheader(name))
        self.send_header("Content-Length", answer.getheader("Content-Length") or str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
            with faults.lock:
                faults.sent[path] += len(data)

    def log_message(self, *args) -> None:
        pass


class ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent ranges connect at once


@pytest.fixture(scope="session")
def _proxy_server(http_url):
    server = ProxyServer(("127.0.0.1", 0), ProxyHandler)
    server.faults = Faults()
    server.upstream = int(http_url.rstrip("/").rsplit(":", 1)[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def proxy(_proxy_server) -> tuple[str, Faults]:
    """The proxy's URL of the served folder, and its faults (reset for each test)."""
    _proxy_server.faults.reset()
    yield f"http://127.0.0.1:{_proxy_server.server_address[1]}/", _proxy_server.faults
    _proxy_server.faults.reset()
