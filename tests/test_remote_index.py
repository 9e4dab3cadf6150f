"""The chunk index of remote MRCZ files: walked in the background after open, saved for the next open.

Against the session's real servers (conftest.py, remote_servers.py): the range server behind the
counting proxy for ``http``, moto's S3 server for ``s3``. Each test has a cache folder of its own.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import zlib
from pathlib import Path

import mrcz
import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("RangeHTTPServer")

from napari_mrcz import codec  # noqa: E402
from napari_mrcz.codec import chunk_index, chunk_trailer, remote  # noqa: E402
from napari_mrcz.codec.pyramid import PyramidCache  # noqa: E402
from napari_mrcz.codec.stack import MRCStack  # noqa: E402

from .conftest import chunks_by_hand  # noqa: E402
from .remote_servers import BUCKET  # noqa: E402

N = 40
MANY = "index/many.mrcz"  # 40 frames of 192 x 192 random int16: chunks of 72 KiB, larger than a block
MID = "index/mid.mrcz"  # 40 frames of 128 x 128 random int16: chunks of 32 KiB
SMALL = "index/small.mrcz"  # 40 frames of 64 x 64 random int16: chunks of 8 KiB
MIXED = "index/mixed.mrcz"  # random and constant frames in turn: chunks of 72 KiB and of a few bytes
CHANGING = "index/changing.mrcz"  # rewritten by the tests
WAIT = 60  # seconds a walk of 40 headers on 127.0.0.1 never needs


def write(data: np.ndarray, path: str, **kwargs: object) -> None:
    """An MRCZ file as python-mrcz writes it: no chunk index of ours at its end, so its headers are walked."""
    mrcz.writeMRC(data, path, **kwargs)
    with MRCStack(path) as stack:
        assert stack.size_on_disk == stack.header.data_offset + stack.header.raw["packedBytes"]


def frames(kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    side = {"small": 64, "mid": 128}.get(kind, 192)
    data = rng.integers(-2**15, 2**15 - 1, size=(N, side, side), dtype=np.int16)
    if kind == "mixed":
        data[1::2] = np.arange(N // 2, dtype=np.int16)[:, None, None]
    return data


@pytest.fixture(scope="module")
def files(served, s3_url) -> Path:
    """The served folder with the three test files in it (and in the bucket)."""
    (served / "index").mkdir(exist_ok=True)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for rel, kind in ((MANY, "many"), (MID, "mid"), (SMALL, "small"), (MIXED, "mixed")):
        write(frames(kind), str(served / rel), compressor="zstd", clevel=1)
        fs.pipe_file(f"{BUCKET}/{rel}", (served / rel).read_bytes())
    return served


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder for this test alone; returns where the saved indexes go."""
    monkeypatch.setenv("NAPARI_MRCZ_CACHE_DIR", str(tmp_path / "cache"))
    return chunk_index.cache_folder()


@pytest.fixture
def quiet(monkeypatch, capfd):
    """Fails the test if a thread dies of an exception or anything is printed on stderr."""
    died: list = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    capfd.readouterr()
    yield
    assert not died, [str(d.exc_value) for d in died]
    assert capfd.readouterr().err == ""


def spans(path: Path | str) -> list[tuple[int, int, int]]:
    with MRCStack(path) as stack:
        return [stack.chunk_span(i) for i in range(stack.shape[0])]


def walked(stack: MRCStack) -> list[tuple[int, int, int]]:
    assert stack.wait_for_index(WAIT), "the background walk ended before the last chunk"
    return [stack.chunk_span(i) for i in range(stack.shape[0])]


def saved(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json")) if cache.is_dir() else []


# -- the background walk ---------------------------------------------------------------------------
def test_after_the_walk_a_far_frame_costs_one_request_and_the_walk_only_header_bytes(proxy, files):
    url, faults = proxy
    with MRCStack(url + MANY) as stack, MRCStack(files / MANY) as local:
        assert walked(stack) == spans(files / MANY)
        # The header's block at open, then one 16-byte request per chunk header but the first's,
        # which is in that block.
        assert faults.requests[MANY] == 1 + (N - 1)
        assert faults.sent[MANY] == remote.BLOCK + 16 * (N - 1)
        before = faults.requests[MANY]
        np.testing.assert_array_equal(stack.read(35, 36), local.read(35, 36))
        assert faults.requests[MANY] - before == 1, "frame 35: its chunk, no header walked"
    with MRCStack(url + SMALL) as stack, MRCStack(files / SMALL) as local:
        assert walked(stack) == spans(files / SMALL)
        # Headers closer than a block: read through the block cache, whose read-ahead batches them.
        assert faults.requests[SMALL] <= 3, faults.requests
        before = faults.requests[SMALL]
        np.testing.assert_array_equal(stack.read(35, 36), local.read(35, 36))
        assert faults.requests[SMALL] == before, "fetched with the headers"


def test_a_reader_walks_through_chunks_smaller_than_a_block_in_few_requests(proxy, files):
    url, faults = proxy
    with MRCStack(url + MID) as stack, MRCStack(files / MID) as local:
        # The background walk fetches these headers 16 bytes at a time; a reader that needs frame 35
        # now walks there itself through the block cache, whose read-ahead takes many at once.
        np.testing.assert_array_equal(stack.read(35, 36), local.read(35, 36))
        assert faults.requests[MID] <= 8, faults.requests
        assert walked(stack) == spans(files / MID)


def test_the_first_frame_does_not_wait_for_the_walk(proxy, files, quiet):
    url, faults = proxy
    faults.latency = 0.1  # each of the 39 requests of the walk: 4 s in all
    with MRCStack(url + MANY) as stack, MRCStack(files / MANY) as local:
        np.testing.assert_array_equal(stack.read(0, 1), local.read(0, 1))
        assert not stack.wait_for_index(0), "frame 0 came before the walk ended"
        np.testing.assert_array_equal(stack.read(7, 8), local.read(7, 8))  # walked on by this thread
        assert walked(stack) == spans(files / MANY)


@pytest.mark.parametrize("rel", [MANY, MID, MIXED, SMALL])
def test_frames_read_while_the_walk_runs_are_the_local_files(proxy, files, rel, quiet):
    url, faults = proxy
    faults.latency = 0.005
    order = np.random.default_rng(len(rel)).permutation(N)
    with MRCStack(url + rel) as stack, MRCStack(files / rel) as local:
        want = local.read()
        for i in order[:N // 2]:  # in this thread, while the walk runs
            np.testing.assert_array_equal(stack.read(i, i + 1)[0], want[i], err_msg=f"frame {i}")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # and in two threads at once
            for i, frame in zip(order[N // 2:], pool.map(lambda i: stack.read(i, i + 1)[0], order[N // 2:]),
                                strict=True):
                np.testing.assert_array_equal(frame, want[i], err_msg=f"frame {i}")
        assert walked(stack) == spans(files / rel)
    # Each header was fetched once, whichever thread walked to it: no more requests than a walk alone.
    assert faults.requests[rel] <= 1 + N + N, faults.requests


def test_close_during_the_walk_stops_it(proxy, files, cache, quiet):
    url, faults = proxy
    faults.latency = 0.05
    stack = MRCStack(url + MANY)
    walker = stack._index.thread
    assert walker is not None and walker.is_alive() and not stack._index.complete
    stack.close()
    assert not walker.is_alive(), "close() waits for the walk's request in flight, then it stops"
    assert not stack._index.complete and saved(cache) == [], "an index is saved only once complete"
    requests = faults.requests[MANY]
    with pytest.raises(ValueError, match="closed"):
        stack.read(35, 36)
    assert faults.requests[MANY] == requests


def test_a_walk_that_fails_is_quiet_and_the_read_reports_it(proxy, files, monkeypatch, quiet):
    url, faults = proxy
    monkeypatch.setattr(remote, "BACKOFF", 0.01)
    faults.fail_after[MANY] = 3  # the open and two headers; then the server answers 503 only
    with MRCStack(url + MANY) as stack:
        assert not stack.wait_for_index(WAIT), "the walk stopped at the first failure"
        stack._index.thread.join(WAIT)
        assert not stack._index.thread.is_alive()
        with pytest.raises(OSError, match="HTTP 503") as failed:
            stack.read(35, 36)
        assert url + MANY in str(failed.value) and "4 tries" in str(failed.value)
    faults.reset()
    faults.latency = 0.05  # the walk takes 2 s: it is under way when the server goes
    with MRCStack(url + MANY) as stack:
        faults.dropped[MANY] = 10_000  # every connection closed without an answer: the server is gone
        assert not stack.wait_for_index(WAIT)
        with pytest.raises(OSError, match="connection failed") as failed:
            stack.read(39, 40)
        assert url + MANY in str(failed.value)


def test_readmrc_walks_only_as_far_as_it_reads(proxy, files):
    url, faults = proxy
    image, _ = codec.readMRC(url + MANY, idx=(2, 2))
    np.testing.assert_array_equal(image, frames("many")[2])
    assert faults.requests[MANY] == 1 + 2 + 1  # the open, headers 1 and 2, chunk 2: no walk behind it


# -- the saved index ----------------------------------------------------------------------------------
def requests(stack: MRCStack) -> int:
    return stack._src.requests


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_reopen_finds_any_frame_with_no_walk(kind, proxy, s3_url, files, cache):
    base = proxy[0] if kind == "http" else s3_url
    with MRCStack(base + MANY) as stack:
        want = walked(stack)
    (entry,) = saved(cache)
    assert remote.shown(base + MANY) in entry.read_text()
    with MRCStack(base + MANY) as stack, MRCStack(files / MANY) as local:
        assert stack._index.loaded and stack._index.thread is None and stack.wait_for_index(0)
        assert requests(stack) == 2, "the first block, and the last chunk's header to check the index"
        np.testing.assert_array_equal(stack.read(35, 36), local.read(35, 36))
        assert requests(stack) == 3, "frame 35: its chunk alone"
        assert [stack.chunk_span(i) for i in range(N)] == want
        np.testing.assert_array_equal(stack.read(), local.read())


def test_a_url_with_a_password_is_saved_without_it(proxy, files, cache):
    url = proxy[0].replace("http://", "http://someone:hunter2@") + MANY
    with MRCStack(url) as stack:
        walked(stack)
    (entry,) = saved(cache)
    assert "hunter2" not in entry.read_text() and "hunter2" not in entry.name
    with MRCStack(url) as stack:
        assert stack._index.loaded


def test_a_server_without_versions_gets_no_saved_index(proxy, files, cache):
    url, faults = proxy
    faults.untagged.add(MANY)
    with MRCStack(url + MANY) as stack:
        assert stack._src.version == {"size": (files / MANY).stat().st_size}
        walked(stack)
    assert saved(cache) == [], "a file of the same size changed would go unseen"
    with MRCStack(url + MANY) as stack:
        assert not stack._index.loaded


def permuted(data: np.ndarray) -> np.ndarray:
    """The same frames in another order: a file of the same size whose chunks start elsewhere."""
    return np.roll(data, 1, axis=0)


def test_a_changed_file_on_http_is_walked_again_not_read_by_its_old_index(proxy, files, cache):
    url, _ = proxy
    path = files / CHANGING
    old, new = frames("mixed"), permuted(frames("mixed"))
    write(old, str(path), compressor="zstd", clevel=1)
    with MRCStack(url + CHANGING) as stack:
        walked(stack)
    mtime = path.stat().st_mtime_ns
    write(new, str(path), compressor="zstd", clevel=1)
    assert spans(path) != spans(files / MIXED) and path.stat().st_size == (files / MIXED).stat().st_size
    # The same size and Last-Modified (a file rewritten within the second): the key is the old
    # file's, the first chunk's header is not. Then another Last-Modified: another key.
    for when in (mtime, mtime + 10**10):
        os.utime(path, ns=(when, when))
        with MRCStack(url + CHANGING) as stack:
            assert not stack._index.loaded
            np.testing.assert_array_equal(stack.read(), new)
            assert walked(stack) == spans(path)
        with MRCStack(url + CHANGING) as stack:
            assert stack._index.loaded, "written again for the new version"
    write(old[:-1], str(path), compressor="zstd", clevel=1)  # another size
    with MRCStack(url + CHANGING) as stack:
        assert not stack._index.loaded
        np.testing.assert_array_equal(stack.read(), old[:-1])


def test_a_changed_object_on_s3_is_walked_again_not_read_by_its_old_index(s3_url, files):
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    old = (files / MIXED).read_bytes()
    fs.pipe_file(f"{BUCKET}/{CHANGING}", old)
    with MRCStack(s3_url + CHANGING) as stack:
        walked(stack)
    new = files / "index" / "changing-new.mrcz"
    write(permuted(frames("mixed")), str(new), compressor="zstd", clevel=1)
    assert len(new.read_bytes()) == len(old)
    fs.pipe_file(f"{BUCKET}/{CHANGING}", new.read_bytes())  # the same size, another ETag
    with MRCStack(s3_url + CHANGING) as stack:
        assert not stack._index.loaded
        np.testing.assert_array_equal(stack.read(), permuted(frames("mixed")))
        assert walked(stack) == spans(new)


def damage(entry: Path, how: str) -> None:
    text = entry.read_text()
    if how == "truncated":
        entry.write_text(text[:len(text) // 2])
    elif how == "garbage":
        entry.write_bytes(b"\x00\xff" * 100)
    else:
        doc = json.loads(text)
        if how == "sections":  # one section short, checksum and all
            doc["offsets"], doc["versions"] = doc["offsets"][:-1], doc["versions"][:-1]
        else:  # "offset": a number changed, as a flipped bit would; "forged": and the checksum too
            doc["offsets"][20] += 8
        if how != "offset":
            doc["crc32"] = chunk_index._crc(doc["offsets"], doc["versions"])
        entry.write_text(json.dumps(doc))


@pytest.mark.parametrize("how", ["truncated", "garbage", "offset", "sections", "forged"])
def test_a_damaged_saved_index_is_ignored_and_written_again(proxy, files, cache, how, quiet):
    url, _ = proxy
    with MRCStack(url + MIXED) as stack:
        want = walked(stack)
    (entry,) = saved(cache)
    damage(entry, how)
    with MRCStack(url + MIXED) as stack, MRCStack(files / MIXED) as local:
        # A forged index holds together: its chunks are checked as they are read, and it is dropped
        # at the first that disagrees (frame 19 ends, and frame 20 starts, 8 bytes off).
        assert stack._index.loaded is (how == "forged")
        np.testing.assert_array_equal(stack.read(), local.read())
        assert walked(stack) == want
    (entry,) = saved(cache)
    with MRCStack(url + MIXED) as stack:
        assert stack._index.loaded, "written again once walked"
        assert [stack.chunk_span(i) for i in range(N)] == want


def test_local_files_are_walked_by_their_readers_and_never_saved(files, cache):
    with MRCStack(files / MANY) as stack:
        assert stack._index.thread is None and not stack.wait_for_index(0)
        np.testing.assert_array_equal(stack.read(35, 36)[0], frames("many")[35])
        np.testing.assert_array_equal(stack.read(), frames("many"))
        assert stack.wait_for_index(0)
    assert not cache.exists()


def test_the_pyramid_cache_does_not_take_the_saved_indexes_for_its_entries(proxy, files, cache):
    with MRCStack(proxy[0] + MANY) as stack:
        walked(stack)
    pyramids = PyramidCache(limit_bytes=0)
    assert saved(cache) and pyramids.root == cache.parent
    assert cache not in pyramids.entries()
    pyramids.evict(stale_build_s=0)
    assert saved(cache), "not evicted as a partial build"


# -- the index our own files carry ------------------------------------------------------------------
OURS = "index/ours.mrcz"  # MIXED's frames as napari-mrcz writes them: with their index at the end


@pytest.fixture
def ours(files) -> Path:
    path = files / OURS
    codec.writeMRC(frames("mixed"), str(path), compressor="zstd", clevel=1)
    return path


def trailer_of(path: Path) -> list[int] | None:
    raw = path.read_bytes()
    return chunk_trailer.decode(raw[-chunk_trailer.nbytes(N):], N, chunks_by_hand(path)[0][0], len(raw))


def test_our_mrcz_files_end_with_their_index_and_python_mrcz_reads_them_unchanged(ours, files):
    offsets = trailer_of(ours)
    assert offsets is not None
    assert [(a, b - a) for a, b in zip(offsets, offsets[1:], strict=False)] == chunks_by_hand(ours)
    assert len(ours.read_bytes()) == offsets[-1] + chunk_trailer.nbytes(N)
    theirs, _ = mrcz.readMRC(str(ours))
    np.testing.assert_array_equal(theirs, frames("mixed"))
    assert trailer_of(files / MIXED) is None, "python-mrcz's files have none"


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_far_frame_of_our_file_costs_the_header_the_index_and_its_chunk(kind, proxy, s3_url, ours, cache,
                                                                          quiet):
    if kind == "s3":
        s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{BUCKET}/{OURS}", ours.read_bytes())
    base = proxy[0] if kind == "http" else s3_url
    with MRCStack(base + OURS) as stack:
        assert stack._index.loaded and stack._index.complete and stack._index.thread is None
        assert requests(stack) == 2, "the first block, then the index at the end"
        np.testing.assert_array_equal(stack.read(38, 39)[0], frames("mixed")[38])
        assert requests(stack) == 3, "frame 38: its chunk alone, no header walked"
        assert [stack.chunk_span(i)[:2] for i in range(N)] == chunks_by_hand(ours)
        np.testing.assert_array_equal(stack.read(), frames("mixed"))
    assert not saved(cache), "nothing to keep: the file has its index"


def _damage_trailer(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    at = len(raw) - chunk_trailer.nbytes(N) + 8 * 19  # the end of chunk 19 (where frame 20 starts)
    end = int.from_bytes(raw[at:at + 8], "little")
    if how == "appended":  # another program added bytes after it
        raw += b"\0" * 64
    elif how == "flipped":  # a bit of an end flipped: the checksum says so
        raw[at] ^= 0x08
    else:  # "forged": an end moved by 8 bytes, and the checksum made to agree
        raw[at:at + 8] = (end + 8).to_bytes(8, "little")
        raw[-16:-8] = zlib.crc32(raw[len(raw) - chunk_trailer.nbytes(N):-24]).to_bytes(8, "little")
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["appended", "flipped", "forged"])
@pytest.mark.parametrize("where", ["http", "disk"])
def test_an_index_that_does_not_fit_its_file_is_walked_instead(proxy, ours, how, where, quiet):
    want = chunks_by_hand(ours)
    _damage_trailer(ours, how)
    with MRCStack(proxy[0] + OURS if where == "http" else ours) as stack:
        # A forged index holds together: it is taken, and dropped at the first chunk that disagrees
        # (frame 19 ends, and frame 20 starts, 8 bytes off).
        assert stack._index.loaded is (how == "forged")
        np.testing.assert_array_equal(stack.read(), frames("mixed"))
        assert not stack._index.loaded
        assert [stack.chunk_span(i)[:2] for i in range(N)] == want
