"""Remote files (https://, s3://) in a real napari window: opened, stepped, shown in 3D, told apart.

The servers are the session's (conftest.py, remote_servers.py): the range server behind the
counting proxy for ``http``, moto's S3 server for ``s3``. The files these tests read are written
into the served folder (and the bucket) by the ``remote_files`` fixture.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("RangeHTTPServer")

from napari_mrcz import _reader, codec, samples  # noqa: E402
from napari_mrcz._pyramid import fill_of  # noqa: E402
from napari_mrcz._widget import REMOTE_READ_ONLY, proposed_save_path  # noqa: E402
from napari_mrcz.codec import remote  # noqa: E402
from napari_mrcz.codec.binning import bin_frame  # noqa: E402
from napari_mrcz.codec.frame_levels import stack_3d_factor  # noqa: E402
from napari_mrcz.codec.lazy import LazyStack  # noqa: E402
from napari_mrcz.codec.stack import MRCStack  # noqa: E402

from .conftest import PLUGIN, dock  # noqa: E402
from .remote_servers import BUCKET, free_port  # noqa: E402

MOVIE = "napari/movie.mrcz"  # 24 frames of 512 x 512 random int8, zstd: 6 MiB that do not compress
MOVIE_SHAPE = (24, 512, 512)
TOMOGRAM = "napari/tomogram.mrc"  # samples.tomogram(64, 256), plain MRC: 16 MiB as float32
#: The coarsest level's bound in these tests (the plugin's is 64 MiB): the tomogram gets a level.
COARSEST = 4 << 20


@pytest.fixture(scope="module")
def remote_files(served, s3_url) -> dict[str, np.ndarray]:
    """The movie and the tomogram, written into the served folder and put in the bucket."""
    movie = np.random.default_rng(11).integers(-128, 127, size=MOVIE_SHAPE, dtype=np.int8, endpoint=True)
    tomogram = samples.tomogram(64, 256)
    (served / "napari").mkdir(exist_ok=True)
    codec.writeMRC(movie, str(served / MOVIE), compressor="zstd", clevel=1, pixelsize=[1.0, 0.8, 0.8])
    codec.writeMRC(tomogram, str(served / TOMOGRAM), pixelsize=[8.0, 8.0, 8.0])
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for rel in (MOVIE, TOMOGRAM):
        fs.pipe_file(f"{BUCKET}/{rel}", (served / rel).read_bytes())
    return {MOVIE: movie, TOMOGRAM: tomogram}


@pytest.fixture(params=["http", "s3"])
def where(request, proxy, s3_url, remote_files) -> tuple[str, str]:
    """``(kind, base URL)``: the counting proxy in front of the range server, or the S3 bucket."""
    if request.param == "http":
        return "http", proxy[0]
    return "s3", s3_url


def fetched(layer, where: tuple[str, str], proxy, rel: str) -> int:
    """Bytes the server sent for ``rel``: the proxy's count (http), the layer's file's own (s3)."""
    if where[0] == "http":
        return proxy[1].sent[rel]
    return layer.metadata["mrcz"]["remote"].fetched_bytes


def chunk_bytes(path: Path, frames: list[int]) -> int:
    with MRCStack(path) as stack:
        return sum(stack.chunk_span(i)[1] for i in frames)


def shows(qtbot, layer, want: np.ndarray) -> None:
    """Wait until the canvas's slice of ``layer`` is ``want``."""
    qtbot.waitUntil(lambda: np.array_equal(np.asarray(layer._data_view), want), timeout=20000)


# -- a movie: the frame shown, stepping, and only what they need fetched -------------------------
def test_a_remote_movie_opens_steps_and_fetches_only_the_frames_shown(viewer, qtbot, where, proxy, served,
                                                                     remote_files, monkeypatch):
    url, movie = where[1] + MOVIE, remote_files[MOVIE]
    size = (served / MOVIE).stat().st_size
    reads: list[bool] = []  # whether each read at open was in the main thread
    original = remote.RemoteFile.readinto

    def counted(self, offset, buf):
        reads.append(threading.current_thread() is threading.main_thread())
        return original(self, offset, buf)

    monkeypatch.setattr(remote.RemoteFile, "readinto", counted)
    (layer,) = viewer.open(url, plugin=PLUGIN)
    monkeypatch.undo()
    assert isinstance(layer.data, LazyStack) and layer.data.shape == MOVIE_SHAPE
    assert layer.metadata["mrcz"]["source"] == url and layer.name == "movie"
    first = viewer.dims.current_step[0]  # napari shows the middle frame first
    assert layer.visible and first > 0
    shows(qtbot, layer, movie[first])
    # Only what a local open reads: the frame shown (also the contrast sample: the header has no
    # statistics), in the main thread, where a local file's frames are read. Not frame 0, where napari
    # slices a new layer before the viewer moves it to the middle: the layer is sliced once, there.
    assert True in reads, "the frame shown is read in the main thread, as a local file's frames are"
    cache = layer.data.cache
    assert cache.misses == 1 and cache.cached(first) is not None and cache.cached(0) is None
    opened = fetched(layer, where, proxy, MOVIE)
    chunk = chunk_bytes(served / MOVIE, [first])
    # The first block, the chunks' index at the end of the file (one block, or two it straddles), the
    # shown frame's chunk (rounded out to blocks) and the read-ahead after it: no chunk header walked.
    one_frame = remote.BLOCK * (1 + 2 + 2) + chunk + remote.READ_AHEAD
    assert opened <= one_frame, (opened, one_frame)
    viewer.dims.set_current_step(0, 0)
    shows(qtbot, layer, movie[0])
    viewer.dims.set_current_step(0, 12)
    shows(qtbot, layer, movie[12])
    sent = fetched(layer, where, proxy, MOVIE)
    needed = chunk_bytes(served / MOVIE, [0, first, 12]) + 2 * 3 * remote.BLOCK  # rounded out to blocks
    bound = remote.BLOCK * (1 + 13) + needed + 2 * chunk  # and two read-aheads (frames first and 12)
    assert sent <= bound, (sent, bound)
    assert sent < size / 2, f"{sent} bytes of {size} fetched to show 3 frames of {MOVIE_SHAPE[0]}"
    if where[0] == "http":
        # The header, the index, and the three frames' chunks: no request per chunk header.
        assert proxy[1].requests[MOVIE] <= 2 + 3 * 2, proxy[1].requests


def test_napari_picks_the_reader_for_a_url_by_its_name_and_a_dropped_url_opens(viewer, qtbot, http_url,
                                                                              remote_files):
    from qtpy.QtCore import QUrl

    (layer,) = viewer.open(http_url + MOVIE, plugin=None)  # no plugin named: by napari.yaml's patterns
    assert isinstance(layer.data, LazyStack)
    shows(qtbot, layer, remote_files[MOVIE][viewer.dims.current_step[0]])
    viewer.layers.clear()
    # What napari does with a URL dropped on its window (a link dragged from a browser).
    viewer.window._qt_viewer._open_from_list_of_urls_data([QUrl(http_url + MOVIE)], stack=False,
                                                          choose_plugin=False)
    (dropped,) = viewer.layers
    assert dropped.metadata["mrcz"]["source"] == http_url + MOVIE


def test_remote_dm_stacks_and_gzip_files_open_too(viewer, qtbot, http_url, served):
    from napari_mrcz.codec.dm import DMFile

    rel = "dm/ncempy_dmTest_3D_int16_64-65-66.dm4"
    (layer,) = viewer.open(http_url + rel, plugin=PLUGIN)
    assert isinstance(layer.data, LazyStack), "a DM stack on a server is fetched frame by frame"
    assert layer.visible
    with DMFile(served / rel) as dm:
        want = dm.read(None)
    shows(qtbot, layer, want[viewer.dims.current_step[0]])
    viewer.dims.set_current_step(0, 5)
    shows(qtbot, layer, want[5])
    rel = "emdb/emd_3197.map.gz"  # streamed and decompressed into memory: fetched whole
    (gz,) = viewer.open(http_url + rel, plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(gz.data), codec.readMRC(str(served / rel))[0])
    stored = gz.metadata["mrcz"]["remote"]  # the stream's file, closed: what it fetched stays known
    assert stored.size == (served / rel).stat().st_size <= stored.fetched_bytes


@pytest.mark.parametrize("kind", ["labels", "complex"])
def test_every_kind_of_remote_layer_is_shown_once_added_having_fetched_the_shown_frame_only(
        viewer, qtbot, proxy, served, remote_files, kind):
    """A remote layer is made hidden (napari slices hidden layers nowhere) and shown once placed."""
    url, faults = proxy
    rel = f"napari/{kind}.mrcz"
    rng = np.random.default_rng(3)
    if kind == "labels":  # a segmentation we saved: a Labels layer
        data = rng.integers(0, 4, size=(16, 64, 64)).astype(np.uint16)
        codec.writeMRC(data, str(served / rel), compressor="zstd", meta={"napari_mrcz_labels": True})
    else:  # complex: two layers (amplitude and phase) over the same frames
        data = (rng.normal(size=(16, 64, 64)) + 1j * rng.normal(size=(16, 64, 64))).astype(np.complex64)
        codec.writeMRC(data, str(served / rel), compressor="zstd")
    layers = viewer.open(url + rel, plugin=PLUGIN)
    assert [layer.visible for layer in layers] == [True] * (1 if kind == "labels" else 2)
    first = viewer.dims.current_step[0]
    want = data[first] if kind == "labels" else np.abs(data[first])
    qtbot.waitUntil(lambda: np.allclose(np.asarray(layers[0]._data_view), want), timeout=20000)
    cache = layers[0].data.cache if kind == "complex" else None
    if cache is not None:
        assert cache.cached(0) is None and cache.misses == 1, "the frame shown, once for both layers"
    with MRCStack(served / rel) as stack:
        chunk = stack.chunk_span(first)[1]
    assert faults.sent[rel] <= remote.BLOCK * 5 + chunk + remote.READ_AHEAD


def test_a_remote_layer_opened_in_a_viewer_that_is_not_the_current_one_is_shown(make_napari_viewer, qtbot,
                                                                               http_url, remote_files):
    from napari import current_viewer

    one, other = make_napari_viewer(show=True), make_napari_viewer(show=True)
    other.window.activate()
    qtbot.waitUntil(lambda: current_viewer() is other, timeout=5000)
    (layer,) = one.open(http_url + MOVIE, plugin=PLUGIN)
    assert layer.visible
    shows(qtbot, layer, remote_files[MOVIE][one.dims.current_step[0]])


# -- a tomogram in 3D: its binned level filled over the network, cached by URL and version --------
def test_a_remote_tomogram_shows_its_binned_level_in_3d(viewer, qtbot, where, served, remote_files,
                                                        proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_MRCZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_reader, "COARSEST_BYTES", COARSEST)
    bound = functools.partial(stack_3d_factor, coarsest_bytes=COARSEST)
    monkeypatch.setattr(_reader, "stack_3d_factor", bound)
    url, tomogram = where[1] + TOMOGRAM, remote_files[TOMOGRAM]
    (layer,) = viewer.open(url, plugin=PLUGIN)
    # A URL's volume gets its planes' levels (binned in y and x), as a movie does: in 2D a plane
    # shown fetches that plane, nothing fills until 3D.
    assert layer.multiscale and [tuple(d.shape) for d in layer.data] == [(64, 256, 256), (64, 128, 128)]
    fill = fill_of(layer)
    assert fill is not None and not fill.cached and fill.worker is None
    first = viewer.dims.current_step[0]
    qtbot.waitUntil(lambda: layer.loaded, timeout=20000)
    assert layer.visible and first > 0
    if where[0] == "http":
        plane = tomogram[0].nbytes
        assert proxy[1].sent[TOMOGRAM] <= plane + 4 * remote.BLOCK, "the plane shown only"
    viewer.dims.ndisplay = 3
    qtbot.waitUntil(lambda: fill.complete and fill.ended, timeout=120000)
    assert float(viewer.screenshot(canvas_only=True)[..., :3].std()) > 5, "the level is on the canvas"
    # The local file's planes, binned 2 in y and x.
    want = np.stack([bin_frame(plane, 2) for plane in tomogram])
    np.testing.assert_array_equal(np.asarray(fill.levels[0]), want)
    assert first == viewer.dims.current_step[0]
    # Kept by URL and version: the size and the ETag (S3) or Last-Modified (the range server).
    version = layer.metadata["mrcz"]["remote"].version
    assert fill.entry.source == {"url": url, **version}
    assert version["size"] == (served / TOMOGRAM).stat().st_size and len(version) >= 2
    viewer.layers.remove(layer)
    (again,) = viewer.open(url, plugin=PLUGIN)
    refill = fill_of(again)
    assert refill.cached, "reopened, the URL's levels come from the cache"
    qtbot.waitUntil(lambda: refill.ended, timeout=60000)
    assert not refill.rebuilt
    np.testing.assert_array_equal(np.asarray(refill.levels[0]), want)


# -- the dock widget -------------------------------------------------------------------------------
def test_the_file_section_shows_the_url_and_what_was_fetched(viewer, qtbot, proxy, served, remote_files):
    url = proxy[0].replace("http://", "http://someone:hunter2@") + MOVIE
    w = dock(viewer)
    (layer,) = viewer.open(url, plugin=PLUGIN)
    viewer.layers.selection.active = layer
    text = w.file.origin.value.replace("\u200b", "")
    assert w.file.origin.visible and text.startswith(remote.shown(url) + "\n")
    assert "hunter2" not in text and "on the server" in w.summary.value
    size_text = f"of {(served / MOVIE).stat().st_size / 1e6:.1f} MB"
    assert text.splitlines()[-1].startswith("fetched ") and text.endswith(size_text), text
    before = layer.metadata["mrcz"]["remote"].fetched_bytes
    viewer.dims.set_current_step(0, 3)
    shows(qtbot, layer, remote_files[MOVIE][3])
    assert layer.metadata["mrcz"]["remote"].fetched_bytes > before
    qtbot.waitUntil(lambda: w.file.origin.value.replace("\u200b", "") != text, timeout=5000)
    (local,) = viewer.open(str(served / MOVIE), plugin=PLUGIN)
    viewer.layers.selection.active = local
    assert not w.file.origin.visible and "on disk" in w.summary.value


def test_open_url_opens_a_url_and_names_a_bad_one_in_a_notification(viewer, qtbot, proxy, remote_files):
    from napari.utils.notifications import notification_manager

    w = dock(viewer)
    section = w.open_url
    assert section.button.enabled and section.url.enabled, "usable with no layer selected"
    section.url.value = proxy[0] + MOVIE
    from qtpy.QtCore import Qt

    qtbot.mouseClick(section.button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    (layer,) = section.opened
    assert layer in viewer.layers and layer.metadata["mrcz"]["source"] == proxy[0] + MOVIE
    assert section.result.value.replace("\u200b", "") == f"opened {proxy[0] + MOVIE}"
    shows(qtbot, layer, remote_files[MOVIE][viewer.dims.current_step[0]])
    n = len(viewer.layers)
    bad = proxy[0].replace("http://", "http://someone:hunter2@") + "napari/no-such.mrcz"
    before = len(notification_manager.records)
    section.open(bad)
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    said = [str(n.message) for n in notification_manager.records[before:]]
    assert len(viewer.layers) == n
    assert any(remote.shown(bad) in m and "not found" in m for m in said), said
    assert not any("hunter2" in m for m in said), "no password in a notification"
    assert "not found" in section.result.value and "hunter2" not in section.result.value
    nobody = f"http://127.0.0.1:{free_port()}/x.mrc"  # nothing listens there: the tries, off the event loop
    started = time.perf_counter()
    section.open(nobody)
    assert w.busy and time.perf_counter() - started < 0.5, "the viewer is not held while the server is tried"
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)
    said = section.result.value.replace("\u200b", "")
    assert "connection failed" in said and nobody in said
    assert section.open("/data/local.mrc") is None and "File > Open" in section.result.value


def test_a_remote_layer_is_read_only_and_saves_to_a_local_file(viewer, qtbot, http_url, remote_files,
                                                                tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url = http_url + MOVIE
    w = dock(viewer)
    (layer,) = viewer.open(url, plugin=PLUGIN)
    viewer.layers.selection.active = layer
    assert not w.apply_button.enabled and w.apply_button.tooltip == REMOTE_READ_ONLY
    assert w.file_edit.apply() is None and w.apply_result.value == REMOTE_READ_ONLY
    proposed = proposed_save_path(layer.name, url)
    assert proposed == os.path.join(str(tmp_path), "movie.mrcz")
    dialog = w.save_dialog()
    assert dialog.directory().absolutePath() == str(tmp_path)
    target = tmp_path / "copy.mrcz"
    w.save_as(str(target))
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    np.testing.assert_array_equal(codec.readMRC(str(target))[0], remote_files[MOVIE])
    assert layer.metadata["mrcz"]["source"] == url, "the layer still reads its URL"


def test_edit_header_refuses_a_url_before_asking_the_server(proxy, remote_files):
    from napari_mrcz.codec.header_edit import edit_header

    url = proxy[0].replace("http://", "http://someone:hunter2@") + MOVIE
    with pytest.raises(codec.MRCFileError, match="remote files cannot be edited in place") as refused:
        edit_header(url, voltage=300.0)
    assert remote.shown(url) in str(refused.value) and "hunter2" not in str(refused.value)
    assert proxy[1].requests[MOVIE] == 0
