"""Object storage as a batch's source and destination: folders listed, finished files put whole.

Sources are read as every URL is, by positioned reads (:mod:`.remote`). This
module does the rest of what ``napari-mrcz compress s3://bucket/session/ -o
s3://bucket/archive/`` needs: list a folder (a key prefix) of a bucket, tell
an object's size, and put a finished local file as one object. An S3 object
exists only once its upload has completed (a multipart upload is invisible
until it is completed, and is aborted when it fails), so a key under its
final name is always a whole file: the batch writes and verifies each output
in a local spool folder first, then puts it, then checks the object's size
and reads its bytes back to compare their CRC-32 with the file's.

Credentials and endpoints are those of :func:`.remote.s3_filesystem`;
other fsspec schemes (``gs://``, ``az://``, ...) work where their package is
installed. fsspec is imported only here and in :mod:`.remote`.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

from .remote import RemoteFileError, is_url, s3_filesystem, shown

#: Tries of an upload (with backoff) before it fails.
UPLOAD_TRIES = 4
#: Bytes read at a time when an uploaded object is read back.
READ_BACK_BLOCK = 16 << 20


def filesystem(url: str) -> Any:
    """The fsspec filesystem of ``url`` (S3: the one :mod:`.remote` reads with)."""
    if url.lower().startswith("s3://"):
        return s3_filesystem(url)
    import fsspec

    return fsspec.filesystem(url.split("://", 1)[0])


def join(url: str, *parts: str) -> str:
    """``url`` (a folder) with ``parts`` appended, ``/``-separated."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] + "://"


def walk(url: str) -> list[tuple[str, str, int]]:
    """Every object under the folder ``url``: (its URL, its path below ``url``, its size), sorted.

    Raises
    ------
    RemoteFileError
        The folder cannot be listed (the message names it and says why).
    FileNotFoundError
        Nothing is there.
    """
    fs = filesystem(url)
    root = url.split("://", 1)[1].rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as exc:  # noqa: BLE001 - botocore's and aiohttp's errors, named and kept
        raise RemoteFileError(shown(url), f"cannot be listed: {exc}") from exc
    out = []
    for key, info in sorted(found.items()):
        rel = key[len(root):].lstrip("/") if key.startswith(root) else os.path.basename(key)
        if info.get("type", "file") == "file" and rel:
            out.append((_protocol(url) + key, rel, int(info.get("size") or 0)))
    if not out:
        raise FileNotFoundError(f"{shown(url)}: no such file or folder")
    return out


def size(url: str) -> int | None:
    """The size of the object at ``url``; ``None`` when there is none."""
    fs = filesystem(url)
    try:
        return int(fs.info(url.split("://", 1)[1])["size"])
    except FileNotFoundError:
        return None


def upload(local: str | os.PathLike, url: str, *, verify: bool = True) -> int:
    """Put the finished file ``local`` as the object ``url``; returns its size.

    The object appears only when the whole file is there. Transient failures
    are tried again (:data:`UPLOAD_TRIES` times, with backoff). With
    ``verify``, the object's size and the CRC-32 of its bytes, read back,
    must be the file's.

    Raises
    ------
    RemoteFileError
        The upload failed, or the object is not the file.
    """
    fs = filesystem(url)
    key = url.split("://", 1)[1]
    nbytes = os.path.getsize(local)
    for attempt in range(UPLOAD_TRIES):
        try:
            fs.put_file(os.fspath(local), key)
            break
        except Exception as exc:  # noqa: BLE001 - any failure of the store: tried again, then named
            if attempt == UPLOAD_TRIES - 1:
                raise RemoteFileError(shown(url), f"the upload failed {UPLOAD_TRIES} times: {exc}") from exc
            time.sleep(0.2 * 2 ** attempt)
    fs.invalidate_cache(key)
    if verify:
        stored = size(url)
        if stored != nbytes:
            raise RemoteFileError(shown(url), f"the object holds {stored} bytes, the file {nbytes}")
        if _crc_remote(fs, key, nbytes) != _crc_local(local):
            raise RemoteFileError(shown(url), "the object's bytes are not the file's")
    return nbytes


def remove(url: str) -> None:
    """Delete the object at ``url`` if it is there."""
    fs = filesystem(url)
    try:
        fs.rm_file(url.split("://", 1)[1])
    except FileNotFoundError:
        pass


def _crc_local(path: str | os.PathLike) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_BACK_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _crc_remote(fs: Any, key: str, nbytes: int) -> int:
    crc = 0
    for start in range(0, nbytes, READ_BACK_BLOCK):
        crc = zlib.crc32(fs.cat_file(key, start=start, end=min(nbytes, start + READ_BACK_BLOCK)), crc)
    return crc


def is_object_url(path: Any) -> bool:
    """Whether ``path`` is a URL a batch can write to (not ``http(s)://``: servers are read-only here)."""
    return is_url(path) and not str(path).lower().startswith(("http://", "https://"))
