"""Files over https:// and s3://, from real servers on 127.0.0.1 that the session starts and stops.

The servers are fixtures of conftest.py (tests/remote_servers.py):

- an HTTP server with Range support (``python -m RangeHTTPServer``) serving copies of the shared files;
- moto's S3 server (``moto_server``), reached through ``AWS_ENDPOINT_URL`` with dummy credentials;
- a fault-injecting proxy in front of the HTTP server (latency, 503s, dropped connections), which
  also counts the bytes it sends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("RangeHTTPServer")

from napari_mrcz import codec  # noqa: E402
from napari_mrcz.cli import describe  # noqa: E402
from napari_mrcz.codec import remote  # noqa: E402
from napari_mrcz.codec.dm import DMFile  # noqa: E402
from napari_mrcz.codec.source import open_image  # noqa: E402
from napari_mrcz.codec.stack import MRCStack  # noqa: E402

from .remote_servers import BIG, BIG_SHAPE, BUCKET, DM_FILES, MRC_FILES, free_port  # noqa: E402


@pytest.fixture(params=["http", "s3"])
def base(request) -> str:
    """Each server's URL of the served folder in turn: ``http://127.0.0.1:PORT/``, ``s3://BUCKET/``."""
    return request.getfixturevalue(f"{request.param}_url")


# -- helpers ------------------------------------------------------------------------------
def same(a, b) -> bool:
    """Equal, recursively: arrays by value (NaN equal to NaN), dicts and lists item by item."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not isinstance(a, np.ndarray):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        nan = a.dtype.kind in "fc"
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=nan)
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def chunk_spans(path: Path, stop: int) -> list[tuple[int, int]]:
    with MRCStack(path) as stack:
        return [stack.chunk_span(i)[:2] for i in range(stop)]


# -- the shared files, remote and local ----------------------------------------------------
def test_every_shared_file_reads_the_same_remotely_as_locally(base, served):
    for rel in MRC_FILES:
        image, meta = codec.readMRC(base + rel)
        local_image, local_meta = codec.readMRC(str(served / rel))
        assert same(image, local_image) and same(meta, local_meta), rel
    for rel in DM_FILES:
        dm, local = codec.readDM4(base + rel), codec.readDM4(str(served / rel))
        assert len(dm.im) == len(local.im) and str(dm.tags) == str(local.tags), rel
        for a, b in zip(dm.im, local.im, strict=True):
            assert same(a.imageData, b.imageData) and same(a.imageInfo, b.imageInfo), rel
        with DMFile(base + rel) as remote_dm, DMFile(served / rel) as local_dm:
            assert same(remote_dm.read(), local_dm.read()), rel


def test_open_image_serves_frames_lazily_and_says_the_stored_size(base, served):
    rel = "dm/ncempy_dmTest_3D_int16_64-65-66.dm4"
    source = open_image(base + rel)
    try:
        assert source.cache is not None, "a DM stack on a server is fetched frame by frame"
        with DMFile(served / rel) as dm:
            assert same(source.cache.get(3), dm.read(None, 3, 4)[0])
        assert source.mrcz["size_on_disk"] == (served / rel).stat().st_size
    finally:
        source.handle.close()
    gz = open_image(base + "emdb/emd_3197.map.gz")
    assert gz.mrcz["size_on_disk"] == (served / "emdb/emd_3197.map.gz").stat().st_size
    gz.handle.close()
    assert describe(base + "mrc/float32_zstd.mrcz")["shape"] == [4, 64, 48]


def test_info_of_a_url_on_the_command_line(base, served):
    urls = [base + "mrc/float32_zstd_meta.mrcz", base + "dm/ncempy_08_carbon.dm3"]
    done = subprocess.run([sys.executable, "-m", "napari_mrcz", "info", "--json", *urls], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    for line, url in zip(done.stdout.splitlines(), urls, strict=True):
        info = json.loads(line)
        local = describe(str(served / url[len(base):]))
        assert info["file"] == url, info
        info.pop("file")
        assert info == {k: v for k, v in local.items() if k != "file"}
    missing = subprocess.run([sys.executable, "-m", "napari_mrcz", "info", base + "no/such.mrc"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1, missing.stderr
    assert base + "no/such.mrc" in missing.stderr and "not found" in missing.stderr


# -- what is fetched ----------------------------------------------------------------------
def test_two_frames_of_a_large_mrcz_fetch_only_their_chunks_and_the_headers_on_the_way(proxy, served):
    url, faults = proxy
    k = 10
    size = (served / BIG).stat().st_size
    image, _ = codec.readMRC(url + BIG, idx=(k, k + 1))
    local, _ = codec.readMRC(str(served / BIG), idx=(k, k + 1))
    assert same(image, local)
    spans = chunk_spans(served / BIG, k + 2)
    needed = sum(cbytes for _, cbytes in spans[k:k + 2]) + 2 * remote.BLOCK  # rounded out to blocks
    walk = (k + 2) * remote.BLOCK  # one block for each chunk header on the way
    bound = remote.BLOCK + walk + needed + remote.READ_AHEAD
    sent = faults.sent[BIG]
    assert sent <= bound, (sent, bound)
    assert sent < size / 3, f"{sent} bytes of {size} fetched for 2 frames of {BIG_SHAPE[0]}"
    assert faults.requests[BIG] <= k + 6, faults.requests  # a request per chunk header, few more


def test_the_same_bound_holds_on_s3(s3_url, served):
    k = 10
    with MRCStack(s3_url + BIG) as stack:
        frames = stack.read(k, k + 2)
        fetched = stack._src.fetched_bytes
    with MRCStack(served / BIG) as local:
        assert same(frames, local.read(k, k + 2))
    spans = chunk_spans(served / BIG, k + 2)
    bound = remote.BLOCK * (k + 5) + sum(cbytes for _, cbytes in spans[k:]) + remote.READ_AHEAD
    assert fetched <= bound and fetched < (served / BIG).stat().st_size / 3


def test_a_large_read_goes_out_as_concurrent_ranges(proxy, served, monkeypatch):
    url, faults = proxy
    monkeypatch.setattr(remote, "PIECE", 1 << 19)
    f = remote.RemoteFile(url + BIG)
    local = (served / BIG).read_bytes()
    half = 4 << 20
    took = []
    for latency, offset in ((0.0, remote.BLOCK + half), (0.3, remote.BLOCK)):  # the second does not follow
        faults.latency = latency
        before = faults.requests[BIG]
        started = time.perf_counter()
        assert f.pread(offset, half) == local[offset:offset + half]
        took.append(time.perf_counter() - started)
        assert faults.requests[BIG] - before == half // remote.PIECE  # 8 ranges of 512 KiB ...
    # ... at once: one after the other, they would take 8 x 0.3 s longer than without latency.
    assert took[1] < took[0] + 3 * 0.3, f"{took} s: the ranges went one after the other"


# -- failures -----------------------------------------------------------------------------
def test_passing_failures_are_tried_again(proxy, served):
    url, faults = proxy
    rel = "mrc/float32_zstd.mrcz"
    faults.unavailable[rel] = 2
    faults.dropped[rel] = 1
    image, _ = codec.readMRC(url + rel)
    assert same(image, codec.readMRC(str(served / rel))[0])
    assert faults.requests[rel] >= 4
    rel = "dm/ncempy_08_carbon.dm3"
    faults.unavailable[rel] = 3  # three failures, the fourth try succeeds
    with DMFile(url + rel) as dm, DMFile(served / rel) as local:
        assert same(dm.read(), local.read())


def test_a_server_that_always_fails_gives_an_oserror_naming_the_url_in_bounded_time(proxy):
    url, faults = proxy
    rel = "mrc/int8_lz4.mrcz"
    faults.always.add(rel)
    started = time.perf_counter()
    with pytest.raises(OSError, match="HTTP 503") as failed:
        codec.readMRC(url + rel)
    assert url + rel in str(failed.value) and "4 tries" in str(failed.value)
    assert time.perf_counter() - started < 10
    assert faults.requests[rel] == remote.TRIES
    faults.dropped["dm/ncempy_08_carbon.dm3"] = 100
    with pytest.raises(OSError, match="connection failed") as failed:
        DMFile(url + "dm/ncempy_08_carbon.dm3")
    assert url + "dm/ncempy_08_carbon.dm3" in str(failed.value)
    nobody = f"http://127.0.0.1:{free_port()}/x.mrc"  # nothing listens there
    with pytest.raises(OSError, match="connection failed") as failed:
        codec.readMRC(nobody)
    assert nobody in str(failed.value)


def test_a_missing_file_is_a_file_not_found_error_naming_the_url(base):
    for url in (base + "no/such.mrc", base + "no/such.dm4"):
        with pytest.raises(FileNotFoundError, match="not found") as missing:
            codec.readMRC(url) if url.endswith(".mrc") else DMFile(url)
        assert url in str(missing.value)
    if base.startswith("s3://"):
        with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
            codec.readMRC("s3://no-such-bucket-here/x.mrc")


def test_a_file_replaced_on_the_server_while_open_is_an_error_not_mixed_data(http_url, s3_url, served):
    original = (served / BIG).read_bytes()
    grown = original + bytes(1000)
    (served / "changing.mrcz").write_bytes(original)
    with MRCStack(http_url + "changing.mrcz") as stack:
        (served / "changing.mrcz").write_bytes(grown)
        with pytest.raises(OSError, match="changed on the server"):
            stack.read(20, 21)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for replacement in (grown, original[:-1] + bytes([original[-1] ^ 1])):  # a size, then a byte, changed
        fs.pipe_file(f"{BUCKET}/changing.mrcz", original)
        with MRCStack(s3_url + "changing.mrcz") as stack:
            fs.pipe_file(f"{BUCKET}/changing.mrcz", replacement)
            with pytest.raises(remote.ObjectChangedError, match="changed") as changed:
                stack.read(20, 21)
            assert s3_url + "changing.mrcz" in str(changed.value)


def test_a_server_without_range_requests_is_read_whole_within_a_bound(proxy, served, monkeypatch):
    url, faults = proxy
    rel = "dm/ncempy_08_carbon.dm3"
    faults.no_range.add(rel)
    with DMFile(url + rel) as dm, DMFile(served / rel) as local:
        assert same(dm.read(), local.read())
    assert faults.requests[rel] == 1 and faults.sent[rel] == (served / rel).stat().st_size
    monkeypatch.setattr(remote, "WHOLE_OBJECT_LIMIT", 100_000)
    with pytest.raises(OSError, match="does not answer Range requests"):
        DMFile(url + rel)


def test_public_buckets_are_read_anonymously_without_credentials(s3_url, served, monkeypatch):
    rel = "emdb/EMD-3197.map"
    public = s3fs.S3FileSystem(skip_instance_cache=True)
    public.mkdir("napari-mrcz-public", acl="public-read")
    public.pipe_file(f"napari-mrcz-public/{rel}", (served / rel).read_bytes(), ACL="public-read")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for either
    f = remote.RemoteFile(f"s3://napari-mrcz-public/{rel}")
    assert f._fetcher.anonymous
    assert f.pread(0, f.size) == (served / rel).read_bytes()
    with pytest.raises(OSError, match="access denied .*anonymously.* not public") as denied:
        codec.readMRC(s3_url + rel)  # the test bucket is private
    assert s3_url + rel in str(denied.value)


# -- without the extra, and what is a URL -------------------------------------------------------
def test_without_fsspec_a_url_says_to_install_the_remote_extra(monkeypatch):
    for name in ("fsspec", "aiohttp", "s3fs"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as where it is not installed
    for url in ("https://example.org/x.mrc", "s3://bucket/x.dm4"):
        with pytest.raises(ImportError, match=r'pip install "\.\[remote\]"') as missing:
            codec.readMRC(url) if url.endswith(".mrc") else DMFile(url)
        assert isinstance(missing.value, codec.MRCFileError) and url in str(missing.value)


def test_what_is_a_url():
    for url in ("https://files.example.org/a.mrc", "http://127.0.0.1:8000/a.mrcz", "s3://bucket/key.dm4",
                "S3://Bucket/Key.mrc"):
        assert remote.is_url(url), url
    for path in ("/data/a.mrc", "a.mrc", "C:\\data\\a.mrc", "C:/data/a.mrc", "C://data/a.mrc",
                 "file:///data/a.mrc", "nosuchscheme://x/a.mrc", Path("https://x/a.mrc")):
        assert not remote.is_url(path), path
    assert remote.shown("https://user:secret@host/a.mrc?X-Amz-Signature=abc&part=1") == \
        "https://***@host/a.mrc?X-Amz-Signature=***&part=1"
    with pytest.raises(ValueError, match="writing to a URL"):
        codec.writeMRC(np.zeros((2, 2), np.float32), "https://example.org/x.mrc")


def test_the_cache_and_read_ahead_stay_within_their_bounds(proxy, served, monkeypatch):
    url, faults = proxy
    monkeypatch.setattr(remote, "CACHE_BYTES", 2 << 20)
    f = remote.RemoteFile(url + BIG)
    with open(served / BIG, "rb") as local:
        for offset in range(0, 3 << 20, 100_000):  # reads that follow each other
            local.seek(offset)
            assert f.pread(offset, 100_000) == local.read(100_000)
    assert f._cached <= remote.CACHE_BYTES
    assert faults.sent[BIG] <= (3 << 20) + remote.BLOCK + remote.READ_AHEAD
    assert faults.requests[BIG] < 15, "reads that follow each other fetch ahead, in few requests"
    f.close()
