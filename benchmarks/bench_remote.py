"""Remote files in napari: first frame, bytes fetched, stepping gaps and the 3D fill over HTTP, with latency.

Data (``--gb``, default 2 and 4): a float32 tomogram as plain MRC (the sample
tomogram of :mod:`napari_mrcz.samples`, 1024 x 1024 per plane) and an int8
counting movie as zstd MRCZ (4096 x 4096 frames), served by
RangeHTTPServer on 127.0.0.1 behind a proxy of this script that adds a round
trip time to every request (0, 20 and 50 ms, ``--rtt``) and counts the bytes
and requests it forwards. For each file and round trip time, in a napari
window (a process of its own each, so that nothing is cached in between):

- **first frame**: ``viewer.open(url, plugin="napari-mrcz")`` and the turn of
  the event loop that draws it (beside the same file opened locally), and the
  bytes fetched by then, beside what the header and that frame hold;
- **stepping**: the longest event-loop gap while stepping frames +1 and
  jumping 7 (as bench_napari.py measures local files), beside the same file
  opened locally;
- **3D fill** (the tomogram): from switching to 3D until the coarse levels
  are complete, as throughput of the file's bytes, beside the link's
  throughput measured by a plain loop of range reads (16 concurrent 4 MiB
  ranges, what our reader issues), and beside the same fill of the file
  opened locally (its pyramid, binned in z too);
- **download, then open**: fetching the whole file through the same proxy
  (the same 16 concurrent ranges) and opening it locally.

Goals (issue 20): the first frame within a few round trips plus the frame's
transfer; bytes fetched for it at most 1.2x header + frame; the 3D fill at
80 % of the link or more; a stepping gap no worse than local plus one round
trip. Writes the table into docs/benchmarks.md::

    xvfb-run -a python benchmarks/bench_remote.py              # 2 GB tomogram, 4 GB movie
    xvfb-run -a python benchmarks/bench_remote.py --gb 0.25 0.5 --rtt 0 20
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, publish  # noqa: E402

RANGE = 4 << 20
CONCURRENT = 16


# -- the link: a range server, and a proxy that adds a round trip to each request ----------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Link:
    """Counts and delays what the proxy forwards (one per run: the proxy lives in the parent)."""

    def __init__(self) -> None:
        self.rtt = 0.0
        self.bytes = 0
        self.requests = 0
        self.lock = threading.Lock()

    def counted(self) -> tuple[int, int]:
        with self.lock:
            return self.bytes, self.requests


def start_proxy(upstream: int, link: Link) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.forward(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self.forward(False)

        def forward(self, body: bool) -> None:
            if link.rtt:
                time.sleep(link.rtt)  # the request's way there and the answer's first byte back
            conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "if-match")}
            conn.request(self.command, self.path, headers=headers)
            answer = conn.getresponse()
            data = answer.read() if body else b""
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "server", "date"):
                    self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(data)
            conn.close()
            with link.lock:
                link.bytes += len(data)
                link.requests += 1

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024  # a real server's backlog, not http.server's 5
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, port


def start_range_server(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    # RangeHTTPServer's handler on a server with a listen backlog as a real one has (http.server's is 5:
    # the proxy's many concurrent connections would wait for SYN retries, a second each).
    serve = ("import http.server, sys, RangeHTTPServer\n"
             "class Server(http.server.ThreadingHTTPServer):\n"
             "    request_queue_size = 1024\n"
             "    daemon_threads = True\n"
             "Server(('127.0.0.1', int(sys.argv[1])), RangeHTTPServer.RangeRequestHandler).serve_forever()\n")
    process = subprocess.Popen([sys.executable, "-c", serve, str(port)],
                               cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("RangeHTTPServer did not start")


def ranged_read(url: str, size: int, out: Path | None = None) -> float:
    """Seconds to read ``url`` whole as :data:`CONCURRENT` concurrent :data:`RANGE` ranges (into ``out``)."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    path = "/" + url.split("//", 1)[1].split("/", 1)[1]
    local = threading.local()
    sink = open(out, "wb") if out is not None else None  # noqa: SIM115 - closed below
    if sink is not None:
        sink.truncate(size)

    def get(start: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("GET", path, headers={"Range": f"bytes={start}-{min(size, start + RANGE) - 1}"})
        data = conn.getresponse().read()
        if sink is not None:
            os.pwrite(sink.fileno(), data, start)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        list(pool.map(get, range(0, size, RANGE)))
    seconds = time.perf_counter() - t0
    if sink is not None:
        sink.close()
    return seconds


# -- data ------------------------------------------------------------------------------------
def make_data(folder: Path, tomogram_gb: float, movie_gb: float) -> dict[str, Path]:
    from napari_mrcz import codec, samples

    folder.mkdir(parents=True, exist_ok=True)
    files = {"tomogram (MRC, float32)": folder / f"tomogram_{tomogram_gb:g}.mrc",
             "movie (MRCZ zstd, int8)": folder / f"movie_{movie_gb:g}.mrcz"}
    if not files["tomogram (MRC, float32)"].exists():
        depth = max(2, round(tomogram_gb * 1e9 / (1024 * 1024 * 4)))
        codec.writeMRC(samples.Tomogram(depth, 1024), files["tomogram (MRC, float32)"],
                       pixelsize=[10.0, 10.0, 10.0])
    movie = files["movie (MRCZ zstd, int8)"]
    if movie.exists():
        from napari_mrcz.codec.stack import MRCStack

        with MRCStack(movie) as stack:
            if not stack._index.loaded:  # written before our files carried their chunks' index
                movie.unlink()
    if not movie.exists():
        n = max(2, round(movie_gb * 1e9 / (4096 * 4096)))
        pool = samples.movie(nframes=8, size=4096)

        class Cycled:
            shape, dtype, ndim = (n, 4096, 4096), np.dtype(np.int8), 3

            def __getitem__(self, i: int) -> np.ndarray:
                return pool[i % len(pool)]

        codec.writeMRC(Cycled(), files["movie (MRCZ zstd, int8)"], compressor="zstd",
                       pixelsize=[1.0, 0.83, 0.83])
    os.sync()
    return files


def frame_and_header_bytes(path: Path) -> int:
    """What showing the first frame needs at least: the header, the extended header and the middle frame."""
    from napari_mrcz import codec

    with codec.MRCStack(path) as stack:
        h = stack.header
        middle = (stack.shape[0] - 1) // 2
        if h.is_compressed:
            frame = stack.chunk_span(middle)[1] if hasattr(stack, "chunk_span") else h.section_nbytes
        else:
            frame = h.section_nbytes
        return 1024 + h.extended_bytes + int(frame)


def serving_cpu(server: subprocess.Popen) -> float:
    """CPU seconds the range server and this process (the proxy) have used so far."""
    import psutil

    total = 0.0
    for process in (psutil.Process(server.pid), psutil.Process()):
        times = process.cpu_times()
        total += times.user + times.system
    return total


# -- one run in a napari window (a process of its own) -------------------------------------
def run_alone(kind: str, target: str) -> dict:
    """``kind`` ("frames" or "3d") measured in a process of its own, with an empty pyramid cache."""
    import tempfile

    env = {**os.environ, "NAPARI_MRCZ_CACHE_DIR": tempfile.mkdtemp(prefix="bench-remote-cache-")}
    out = subprocess.run([sys.executable, __file__, "--measure", kind, target], capture_output=True,
                         text=True, env=env, timeout=3600)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout)[-800:]}
    return json.loads(line[6:])


def measure_child(kind: str, target: str) -> None:
    import bench_napari

    if kind == "frames":
        result = bench_napari.measure(target, "napari-mrcz")  # type: ignore[arg-type]
    else:
        result = bench_napari.measure_3d(target, "napari-mrcz")  # type: ignore[arg-type]
    print("RESULT" + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, nargs=2, default=[2.0, 4.0], metavar=("TOMOGRAM", "MOVIE"))
    ap.add_argument("--rtt", type=float, nargs="+", default=[0.0, 20.0, 50.0], help="ms")
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/remote"))
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure_child(*args.measure)
        return
    files = make_data(args.data, *args.gb)
    server, upstream = start_range_server(args.data)
    link = Link()
    proxy, port = start_proxy(upstream, link)
    results: dict = {"gb": args.gb, "rtt_ms": args.rtt, "files": {}}
    try:
        for name, path in files.items():
            size = path.stat().st_size
            url = f"http://127.0.0.1:{port}/{path.name}"
            rows = results["files"][name] = {"size": size, "least_bytes": frame_and_header_bytes(path),
                                             "local": run_alone("frames", str(path)), "rtt": {}}
            if "tomogram" in name:
                rows["local_3d"] = run_alone("3d", str(path))
            for rtt in args.rtt:
                link.rtt = rtt / 1000.0
                row = rows["rtt"][str(rtt)] = {}
                # the link: a plain range-read loop; and download-then-open
                row["link_s"] = ranged_read(url, size)
                download = args.data / f"downloaded-{path.name}"
                row["download_s"] = ranged_read(url, size, download)
                opened = run_alone("frames", str(download))
                download.unlink()
                row["download_then_first_s"] = row["download_s"] + opened.get("first_frame_s", float("nan"))
                before, cpu = link.counted(), serving_cpu(server)
                row["frames"] = run_alone("frames", url)
                after = link.counted()
                row["frames_serving_cpu_s"] = serving_cpu(server) - cpu  # the same 2 cores as napari's
                row["frames_bytes"], row["frames_requests"] = after[0] - before[0], after[1] - before[1]
                if "tomogram" in name:
                    before = link.counted()
                    row["3d"] = run_alone("3d", url)
                    row["3d_bytes"] = link.counted()[0] - before[0]
                print(name, rtt, json.dumps(row)[:400], flush=True)
    finally:
        proxy.shutdown()
        server.terminate()
    publish(ROOT / "docs" / "benchmarks", "remote", "remote", results, table(results))


def table(results: dict) -> str:
    lines = ["| file | RTT | first frame (local) | fetched for it (header + frame) | download, then open "
             "| stepping gap (local) | jumping gap (local) | 3D fill (local) | link | fill / link |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["files"].items():
        local = rows["local"]
        for rtt, row in rows["rtt"].items():
            frames = row["frames"]
            if "error" in frames:
                lines.append(f"| {name} | {rtt} ms | error: {frames['error'][:80]} ||||||||")
                continue
            fill = link = ratio = "-"
            if "3d" in row and "complete_s" in row["3d"]:
                fill_rate = rows["size"] / row["3d"]["complete_s"]
                link_rate = rows["size"] / row["link_s"]
                here = rows.get("local_3d", {}).get("complete_s", float("nan"))
                fill, link = f"{row['3d']['complete_s']:.1f} s, {fill_rate / 1e6:.0f} MB/s ({here:.1f} s)", \
                    f"{link_rate / 1e6:.0f} MB/s"
                ratio = f"{fill_rate / link_rate:.0%}"
            lines.append(
                f"| {name} | {float(rtt):.0f} ms | {frames['first_frame_s'] * 1e3:.0f} ms "
                f"({local['first_frame_s'] * 1e3:.0f} ms) | "
                f"{frames.get('first_bytes', 0) / 1e6:.2f} MB ({rows['least_bytes'] / 1e6:.2f} MB) | "
                f"{row['download_then_first_s']:.1f} s | {frames['step_max_gap_s'] * 1e3:.0f} ms "
                f"({local['step_max_gap_s'] * 1e3:.0f} ms) | {frames['jump_max_gap_s'] * 1e3:.0f} ms "
                f"({local['jump_max_gap_s'] * 1e3:.0f} ms) | {fill} | {link} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
