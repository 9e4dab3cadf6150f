"""``compress`` from and to a bucket (moto's S3 server on 127.0.0.1), on a dask LocalCluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from napari_mrcz import codec

from .remote_servers import BUCKET, MRC_FILES


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command, with the environment of now (the S3 server's AWS variables)."""
    return subprocess.run([sys.executable, "-m", "napari_mrcz", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)


def bucket():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def same_as_local(url: str, local) -> None:
    """The object at ``url`` reads (through our codec, remotely) as the local file does."""
    theirs, meta = codec.readMRC(url)
    ours, _ = codec.readMRC(str(local))
    theirs = np.concatenate(theirs) if isinstance(theirs, list) else theirs
    ours = np.concatenate(ours) if isinstance(ours, list) else ours
    np.testing.assert_array_equal(theirs.reshape(ours.shape), ours, err_msg=url)


def test_a_session_compressed_from_a_bucket_to_a_bucket_verified_and_resumable(s3_url, served):
    fs = bucket()
    archive = f"s3://{BUCKET}/archive-{time.monotonic_ns()}/"
    seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def watch() -> None:  # every object that ever shows in the archive, with the size it had then
        while not stop.is_set():
            try:
                for key, info in fs.find(archive[5:], detail=True, refresh=True).items():
                    if info.get("type") == "file":
                        seen.setdefault(key, set()).add(int(info["size"]))
            except FileNotFoundError:
                pass
            fs.invalidate_cache()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = cli("compress", f"{s3_url}mrc/", "-o", archive, "--workers", "2", "--json")
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["runner"] == "dask" and info["done"] == len(MRC_FILES) - 3 and info["failed"] == 0
    final = {key: int(i["size"]) for key, i in fs.find(archive[5:], detail=True, refresh=True).items()
             if i.get("type") == "file"}
    assert sorted(k.rsplit("/", 1)[1] for k in final) == sorted(
        name.split("/", 1)[1] + ("" if name.endswith(".mrcz") else ".mrcz")
        for name in MRC_FILES if name.startswith("mrc/"))
    # an object is there only whole: never seen under any other name, nor at any other size
    assert set(seen) <= set(final) and all(sizes == {final[k]} for k, sizes in seen.items()), seen
    for key in final:
        name = key.rsplit("/", 1)[1]
        source = served / "mrc" / (name if name in os.listdir(served / "mrc") else name[: -len(".mrcz")])
        same_as_local(f"s3://{key}", source)
    again = json.loads(cli("compress", f"{s3_url}mrc/", "-o", archive, "--workers", "2", "--json").stdout)
    assert (again["done"], again["skipped"], again["failed"]) == (0, len(final), 0), "resumed from the bucket"


def test_local_to_bucket_and_bucket_to_local(s3_url, served, tmp_path):
    up = f"s3://{BUCKET}/up-{time.monotonic_ns()}"
    done = cli("compress", str(served / "emdb"), "-o", up, "--workers", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 3
    same_as_local(f"{up}/EMD-3197.map.mrcz", served / "emdb" / "EMD-3197.map")
    down = tmp_path / "down"
    done = cli("compress", f"{s3_url}dm/", "-o", str(down), "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)["outcomes"]
    assert {o["status"] for o in outcomes} == {"done"} and len(outcomes) == 3
    from napari_mrcz.codec.dm import DMFile

    with DMFile(served / "dm" / "ncempy_dmTest_3D_int16_64-65-66.dm4") as dm:
        want = dm.read(dm.main_image)
    got, _ = codec.readMRC(str(down / "ncempy_dmTest_3D_int16_64-65-66.dm4.mrcz"))
    np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)
    assert not [p for p in down.rglob(".*")], "nothing left in the output folder"


def test_a_bucket_that_is_not_there_is_named(s3_url):
    done = cli("compress", f"s3://{BUCKET}-missing/x/", "-o", f"s3://{BUCKET}/never/", "--json")
    assert done.returncode == 2 and f"{BUCKET}-missing" in done.stderr, done.stderr


@pytest.mark.parametrize("ngff", ["0.5"])
def test_ome_zarr_to_a_bucket_is_refused_before_anything_starts(s3_url, ngff):
    done = cli("compress", f"{s3_url}emdb/", "-o", f"s3://{BUCKET}/zarr/", "--format", "ome-zarr",
               "--ngff", ngff)
    assert done.returncode == 2 and "folder on disk" in done.stderr, done.stderr
