"""Files on a web server or in an object store (``https://``, ``s3://``), read by Range requests.

:class:`RemoteFile` has :class:`~.positioned.PositionedFile`'s interface
(``path``, ``size``, ``generation``, ``pread``, ``readinto``, ``view``,
``in_use``, ``close``): the MRC stack, the DM parser and the lazy frames read
a URL as they read a file on disk, without knowing the difference.
:func:`~.positioned.open_positioned` picks one or the other.

**What is fetched.** Only the bytes a read needs, rounded out to aligned blocks
of :data:`BLOCK` (64 KiB), plus a bounded read-ahead (at most
:data:`READ_AHEAD`, 4 MiB) when reads follow one another through the file.
Blocks are kept in a least-recently-used cache of :data:`CACHE_BYTES` (64 MiB)
per open file: those of reads up to :data:`KEEP_WHOLE` (1 MiB) and the
read-ahead; of a larger read (a frame, whose decoded copy is what a viewer
keeps), only the first and last blocks, which its neighbours share. A read of
many blocks goes out as several ranges of at most :data:`PIECE` (4 MiB),
:data:`CONCURRENT` at a time, to fill the link. The first request, at open,
asks for the first block: its answer gives the size, the version (ETag,
Last-Modified) and the header in one round trip.

64 KiB blocks: the reads that depend on each other (an MRCZ file's chunk
headers, 16 bytes at the start of each chunk, walked one after the other;
DM tags) cost a round trip each whatever the block size, and a block much
larger than 64 KiB would add transfer time to each without saving any; the
large reads (frames, chunks) are merged into ranges of up to 4 MiB anyway.
Chunk headers further apart than a block are fetched alone (16 bytes,
:meth:`RemoteFile.peek`), by a walk in the background (:mod:`.chunk_index`).

**Change detection.** Every answer states the object's size (Content-Range)
and, where the server gives them, its ETag and Last-Modified: a size or
version other than at open raises :class:`ObjectChangedError` instead of
mixing bytes of two files. S3 reads also send ``If-Match`` with the ETag.

**Failures.** Server errors (HTTP 5xx, 429), dropped connections and timeouts
are tried again, :data:`TRIES` times in all, :data:`BACKOFF` s apart at first
and twice as long each time; then a :class:`RemoteFileError` (an ``OSError``)
names the URL and the problem. A missing object raises
:class:`RemoteNotFoundError` (a ``FileNotFoundError``). URLs in messages have
their passwords and signatures blanked.

**Credentials (S3).** The standard AWS chain (environment, ``~/.aws`` config
and profiles, ``AWS_PROFILE``), and ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` for other stores (Ceph, MinIO); with no credentials
at all, public buckets are read anonymously.

fsspec (with aiohttp, and s3fs for ``s3://``) is imported only when a URL is
opened: ``pip install ".[remote]"``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from .errors import MRCFileError, TruncatedFileError

#: How to install what URLs need.
REMOTE_EXTRA = 'pip install ".[remote]" in a napari-mrcz checkout'
#: Bytes are fetched and cached in aligned blocks of this size.
BLOCK = 1 << 16
#: Blocks kept per open file (least recently used go first).
CACHE_BYTES = 64 << 20
#: Reads up to this size are kept whole in the block cache; of larger ones, the first and last blocks.
KEEP_WHOLE = 1 << 20
#: At most this many bytes are fetched past a read that follows the previous one.
READ_AHEAD = 4 << 20
#: A read of many blocks is fetched as ranges of at most this size ...
PIECE = 4 << 20
#: ... this many at a time.
CONCURRENT = 16
#: Tries of a request that failed for a passing reason (5xx, dropped connection, timeout).
TRIES = 4
#: Seconds before the second try; doubled before each further one.
BACKOFF = 0.2
#: Seconds to connect, and to wait for the next bytes of an answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
#: A gzip/bzip2 file, or a file of a server without Range requests, is read whole up to this size.
WHOLE_OBJECT_LIMIT = 2 << 30

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
#: Schemes taken for URLs when fsspec is not installed (so that opening one says to install it).
_COMMON_SCHEMES = frozenset({"http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl",
                             "ftp", "sftp", "ssh", "webdav", "hf", "oci", "ocilake"})
_LOCAL_SCHEMES = frozenset({"file", "local"})
_SECRET_QUERY = re.compile(r"(signature|credential|token|sig|key|secret|password)", re.IGNORECASE)


class RemoteFileError(OSError):
    """A file on a server could not be read; the message names the URL and the problem.

    Parameters
    ----------
    url
        The file's URL (shown with passwords and signatures blanked).
    problem
        What went wrong, in words a user can act on.
    """

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{shown(url)}: {problem}")

    def __str__(self) -> str:
        return f"{shown(self.url)}: {self.problem}"

    def __reduce__(self) -> tuple:
        return type(self), (self.url, self.problem)  # sent between processes whole


class RemoteNotFoundError(RemoteFileError, FileNotFoundError):
    """The server has no such file (HTTP 404, S3 NoSuchKey or NoSuchBucket)."""


class ObjectChangedError(RemoteFileError):
    """The file on the server changed (size or version) since it was opened."""


class MissingRemoteSupportError(MRCFileError, ImportError):
    """Opening a URL needs a package that is not installed; the message says what to install."""


class _StatusError(Exception):
    """An HTTP status that is not an answer (tried again if 5xx or 429)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP {code} {reason}".rstrip())
        self.code, self.reason = code, reason


def shown(url: str) -> str:
    """``url`` as it may be shown or logged: no password, no signature or token in its query."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}=***" if _SECRET_QUERY.search(k) or k.lower().startswith(("x-amz-", "x-goog-"))
                         else f"{k}={v}" for k, v in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_url(path: Any) -> bool:
    r"""Whether ``path`` is a URL of a server or store (``https://``, ``s3://`` ...), not a local file.

    Parameters
    ----------
    path
        A path or URL. Only a string of the form ``scheme://...`` whose scheme
        fsspec knows (other than ``file://``) is a URL; ``C:\data`` and
        ``pathlib`` paths are not.

    Returns
    -------
    bool
        True for a URL.
    """
    if not isinstance(path, str):
        return False
    match = _SCHEME.match(path)
    if match is None:
        return False
    scheme = match.group(1).lower()
    return scheme not in _LOCAL_SCHEMES and scheme in _known_schemes()


def file_name(path: str) -> str:
    """The name of the file at the end of a path or URL (a URL's query and fragment left out).

    Parameters
    ----------
    path
        A local path or a URL (``https://host/data/movie.mrcz?X-Amz-Signature=...``).

    Returns
    -------
    str
        ``movie.mrcz``; ``""`` for a URL that names no file.
    """
    if is_url(path):
        return urllib.parse.unquote(urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1])
    return os.path.basename(os.fspath(path))


def _known_schemes() -> frozenset[str]:
    try:
        import fsspec
    except ImportError:
        return _COMMON_SCHEMES
    return frozenset(fsspec.available_protocols()) | _COMMON_SCHEMES


def _require(url: str, module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingRemoteSupportError(
            shown(url), f"reading {what} needs {module.split('.')[0]}, which is not installed: "
                        f"{REMOTE_EXTRA}") from exc


# ---------------------------------------------------------------------------
# One filesystem of each kind per process: one connection pool for every file
# ---------------------------------------------------------------------------
_filesystems: dict[tuple, Any] = {}
_filesystems_lock = threading.Lock()


def _shared(key: tuple, make: Callable[[], Any]) -> Any:
    key = (*key, os.getpid())  # a forked process makes its own (fsspec's loop is not inherited)
    with _filesystems_lock:
        fs = _filesystems.get(key)
        if fs is None:
            fs = _filesystems[key] = make()
    return fs


def _s3_anonymous(url: str) -> bool:
    """No AWS credentials anywhere (environment, config files, profiles, instance role): read anonymously."""
    botocore_session = _require(url, "botocore.session", "s3:// URLs")
    exceptions = _require(url, "botocore.exceptions", "s3:// URLs")
    try:
        return botocore_session.Session().get_credentials() is None
    except exceptions.BotoCoreError as exc:  # a profile named but not configured, a broken config file
        raise RemoteFileError(url, f"the AWS configuration cannot be used: {exc}") from None


# ---------------------------------------------------------------------------
# Fetchers: the requests of one protocol, and what their answers mean
# ---------------------------------------------------------------------------
def _total(content_range: str | None) -> int | None:
    """The object's size a Content-Range (``bytes 0-9/1000``, ``bytes */1000``) states."""
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match.group(1)) if match else None


class _Fetcher:
    """Ranged reads of one object; ``open`` first, then ``fetch`` from any thread."""

    url: str
    size: int | None = None
    tags: dict[str, str]
    transient: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    loop: Any = None

    def open(self, n: int) -> bytes:
        """The first ``n`` bytes (all of them if the server ignores Range); sets ``size`` and ``tags``."""
        item = self._run([(0, n)], opening=True)[0]
        if isinstance(item, BaseException):
            raise item
        return item

    def fetch(self, ranges: list[tuple[int, int]]) -> list[bytes | BaseException]:
        """Bytes ``start:end`` of each range, fetched concurrently; a failure is returned, not raised."""
        return self._run(ranges, opening=False)

    def _run(self, ranges: list[tuple[int, int]], opening: bool) -> list[bytes | BaseException]:
        import asyncio

        from fsspec.asyn import sync

        async def gather() -> list:
            gate = asyncio.Semaphore(CONCURRENT)

            async def one(start: int, end: int) -> bytes:
                async with gate:
                    return await self._get(start, end, opening)

            return await asyncio.gather(*(one(s, e) for s, e in ranges), return_exceptions=True)

        return sync(self.loop, gather)

    async def _get(self, start: int, end: int, opening: bool) -> bytes:
        raise NotImplementedError

    def _check(self, total: int | None, tags: dict[str, str]) -> None:
        """Raise :class:`ObjectChangedError` if an answer shows another size or version than at open."""
        if total is not None and self.size is not None and total != self.size:
            raise ObjectChangedError(self.url, f"the file changed on the server while open: it is now "
                                               f"{total} bytes, was {self.size} when opened; open it again")
        for name, old in self.tags.items():
            new = tags.get(name)
            if new and new != old:
                raise ObjectChangedError(self.url, f"the file changed on the server while open ({name} was "
                                                   f"{old}, is now {new}); open it again")


def _version_tags(headers: Any) -> dict[str, str]:
    tags = {}
    etag = headers.get("ETag")
    if etag:
        tags["ETag"] = etag.removeprefix("W/")
    modified = headers.get("Last-Modified")
    if modified:
        tags["Last-Modified"] = str(modified)
    return tags


class _HTTPFetcher(_Fetcher):
    """``http://`` and ``https://``: GET with a Range header, on fsspec's HTTP session."""

    def __init__(self, url: str) -> None:
        import asyncio

        self.url, self.tags = url, {}
        self._aiohttp = _require(url, "aiohttp", "https:// URLs")
        fsspec = _require(url, "fsspec", "https:// URLs")
        # trust_env: the HTTP(S)_PROXY and NO_PROXY of the environment, as browsers and pip honour them.
        self.fs = _shared(("http",), lambda: fsspec.filesystem(
            "https", skip_instance_cache=True, client_kwargs={"trust_env": True}))
        self.loop = self.fs.loop
        self.transient = (self._aiohttp.ClientConnectionError, self._aiohttp.ClientPayloadError,
                          asyncio.TimeoutError, TimeoutError, ConnectionError)

    async def _get(self, start: int, end: int, opening: bool) -> bytes:
        aiohttp = self._aiohttp
        session = await self.fs.set_session()
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        async with session.get(self.url, headers=headers, timeout=timeout) as r:
            if r.status in (404, 410):
                raise RemoteNotFoundError(self.url, f"not found on the server (HTTP {r.status})")
            if r.status == 416:
                total = _total(r.headers.get("Content-Range"))
                if opening and total == 0:
                    self.size, self.tags = 0, _version_tags(r.headers)
                    return b""
                raise ObjectChangedError(self.url, f"the server says byte {start} is past the end: the file "
                                                   "is shorter than when it was opened; open it again")
            if r.status in (401, 403):
                raise RemoteFileError(self.url, f"access denied (HTTP {r.status})")
            if r.status not in (200, 206):
                raise _StatusError(r.status, r.reason or "")
            tags = _version_tags(r.headers)
            total = _total(r.headers.get("Content-Range")) if r.status == 206 else r.content_length
            if opening:
                if total is None:
                    raise RemoteFileError(self.url, "the server does not say how large the file is")
                self.size, self.tags = total, tags
            else:
                self._check(total, tags)
            if r.status == 200 and not (start == 0 and total is not None and total <= end):
                # The whole file came back: this server does not answer Range requests.
                if not opening or total is None or total > WHOLE_OBJECT_LIMIT:
                    raise RemoteFileError(self.url, f"the server does not answer Range requests and the file "
                                                    f"is {_size_text(total)}: download it and open the copy")
            return await r.read()


def s3_filesystem(url: str) -> Any:
    """The process's s3fs filesystem for the AWS settings in force (shared: one connection pool).

    Credentials from the standard AWS environment, config files and
    profiles; ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for other stores;
    anonymous when there are none. botocore retries nothing: our tries are
    the only ones, so the time a failing store takes stays bounded.
    """
    s3fs = _require(url, "s3fs", "s3:// URLs")
    env = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE",
                                            "AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION", "AWS_REGION"))

    def make() -> Any:
        anonymous = _s3_anonymous(url)
        options: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and not os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
            options["endpoint_url"] = endpoint  # botocore >= 1.31 reads it too; older ones do not
        config = {"retries": {"total_max_attempts": 1}, "connect_timeout": CONNECT_TIMEOUT,
                  "read_timeout": READ_TIMEOUT}
        return s3fs.S3FileSystem(anon=anonymous, skip_instance_cache=True, config_kwargs=config, **options)

    return _shared(("s3", env), make)


class _S3Fetcher(_Fetcher):
    """``s3://``: GetObject with a Range (and If-Match), on s3fs's client."""

    def __init__(self, url: str) -> None:
        import asyncio

        self.url, self.tags = url, {}
        aiohttp = _require(url, "aiohttp", "s3:// URLs")
        botocore = _require(url, "botocore.exceptions", "s3:// URLs")
        self._client_error = botocore.ClientError
        self.fs = s3_filesystem(url)
        self.anonymous = bool(self.fs.anon)
        self.loop = self.fs.loop
        self.bucket, self.key, self.version = self.fs.split_path(url)
        if not self.key or self.key.endswith("/"):
            raise RemoteFileError(url, "names a bucket or a folder, not a file")
        self.transient = (botocore.HTTPClientError, botocore.IncompleteReadError, aiohttp.ClientError,
                          asyncio.TimeoutError, TimeoutError, ConnectionError)

    async def _get(self, start: int, end: int, opening: bool) -> bytes:
        s3 = await self.fs.set_session()
        getter = getattr(self.fs, "get_s3", None)  # a client of the bucket's region, where s3fs keeps them
        if getter is not None:
            s3 = await getter(self.bucket) or s3
        request = {"Bucket": self.bucket, "Key": self.key, "Range": f"bytes={start}-{end - 1}",
                   **getattr(self.fs, "req_kw", {})}
        if self.version:
            request["VersionId"] = self.version
        if not opening and "ETag" in self.tags:
            request["IfMatch"] = self.tags["ETag"]
        try:
            answer = await s3.get_object(**request)
        except self._client_error as exc:
            if opening and _s3_status(exc)[0] == 416:  # an empty object has no byte 0
                head = await s3.head_object(Bucket=self.bucket, Key=self.key)
                self.size, self.tags = int(head.get("ContentLength") or 0), _s3_tags(head)
                if self.size == 0:
                    return b""
            raise self._failure(exc, start) from None
        try:
            tags = _s3_tags(answer)
            total = _total(answer.get("ContentRange"))
            if total is None:  # the whole object came back: a store that ignores Range
                total = answer.get("ContentLength")
                if total is not None and total > end - start and (not opening or total > WHOLE_OBJECT_LIMIT):
                    raise RemoteFileError(self.url, f"the store does not answer Range requests and the file "
                                                    f"is {_size_text(total)}: download it and open the copy")
            if opening:
                self.size, self.tags = total, tags
            else:
                self._check(total, tags)
            return await answer["Body"].read()
        finally:
            answer["Body"].close()

    def _failure(self, exc: Exception, start: int) -> Exception:
        status, code = _s3_status(exc)
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound"):
            where = f"no bucket {self.bucket!r}" if code == "NoSuchBucket" else "not found in the bucket"
            return RemoteNotFoundError(self.url, f"{where} ({code or 'HTTP 404'})")
        if status == 412 or code == "PreconditionFailed":
            return ObjectChangedError(self.url, f"the file changed in the store while open (its ETag is no "
                                                f"longer {self.tags.get('ETag')}); open it again")
        if status == 416 or code == "InvalidRange":
            return ObjectChangedError(self.url, f"byte {start} is past the end: the file is shorter than "
                                                "when it was opened; open it again")
        if status in (401, 403) or code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                                            "SignatureDoesNotMatch", "ExpiredToken"):
            how = ("read anonymously (no AWS credentials are configured): the bucket is not public"
                   if self.anonymous else "the AWS credentials in use may not read it")
            return RemoteFileError(self.url, f"access denied ({code or status}): {how}")
        if (status or 0) >= 500 or status == 429 or code in _S3_PASSING:
            return _StatusError(status or 503, code or "")
        return RemoteFileError(self.url, f"the store refused the request ({code or status})")


#: S3 error codes of a passing condition: tried again.
_S3_PASSING = ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling")


def _s3_status(exc: Exception) -> tuple[int | None, str]:
    response = getattr(exc, "response", None) or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return status, str((response.get("Error") or {}).get("Code") or "")


def _s3_tags(answer: dict) -> dict[str, str]:
    return {"ETag": answer["ETag"]} if answer.get("ETag") else {}


class _FsspecFetcher(_Fetcher):
    """Any other fsspec filesystem (gs://, az://, ...): its ``info`` and ``cat_ranges``."""

    def __init__(self, url: str) -> None:
        self.url, self.tags = url, {}
        fsspec = _require(url, "fsspec", "URLs")
        try:
            self.fs, self._path = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise MissingRemoteSupportError(shown(url), f"{exc}") from exc

    def open(self, n: int) -> bytes:
        try:
            info = self.fs.info(self._path)
        except FileNotFoundError:
            raise RemoteNotFoundError(self.url, "not found") from None
        if info.get("type") == "directory":
            raise RemoteFileError(self.url, "names a folder, not a file")
        if info.get("size") is None:
            raise RemoteFileError(self.url, "the store does not say how large the file is")
        self.size = int(info["size"])
        self.tags = {k: str(info[k]) for k in ("ETag", "etag", "generation", "version_id", "mtime")
                     if info.get(k) is not None}
        return self.fs.cat_file(self._path, 0, min(n, self.size)) if self.size else b""

    def fetch(self, ranges: list[tuple[int, int]]) -> list[bytes | BaseException]:
        paths = [self._path] * len(ranges)
        out = self.fs.cat_ranges(paths, [s for s, _ in ranges], [e for _, e in ranges], on_error="return")
        return [RemoteNotFoundError(self.url, "no longer found") if isinstance(o, FileNotFoundError) else o
                for o in out]


def _fetcher(url: str) -> _Fetcher:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return _HTTPFetcher(url)
    if scheme in ("s3", "s3a"):
        return _S3Fetcher(url)
    return _FsspecFetcher(url)


def _size_text(n: int | None) -> str:
    if n is None:
        return "of unknown size"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# The file
# ---------------------------------------------------------------------------
class RemoteFile:
    """A read-only file on a server, read at given offsets, safe to share between threads.

    Parameters
    ----------
    url
        ``https://``, ``http://``, ``s3://`` (or another scheme fsspec knows).

    Attributes
    ----------
    path : str
        The URL, as given.
    size : int
        The file's size when opened.
    generation : int
        Always 0: a file on a server is never reopened under its readers (a
        change raises :class:`ObjectChangedError` instead).
    fetched_bytes, requests : int
        Bytes received and ranges asked for since it was opened.

    Raises
    ------
    RemoteNotFoundError
        The server has no such file.
    RemoteFileError
        The server cannot be reached or refuses, after :data:`TRIES` tries.
    MissingRemoteSupportError
        fsspec (or aiohttp, s3fs) is not installed.
    """

    generation = 0

    def __init__(self, url: str) -> None:
        self.path = url
        self.fetched_bytes = self.requests = 0
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cached = 0
        self._whole: bytes | None = None
        self._reader = threading.local()  # where each thread's last read ended, and its read-ahead
        self._closed = False
        self._fetcher = _fetcher(url)
        first = self._with_tries(lambda: self._fetcher.open(BLOCK))
        self.size = int(self._fetcher.size or 0)
        self._count(1, len(first))
        if len(first) > BLOCK:  # a server without Range requests sent it all
            self._whole = first
        elif first:
            self._store({0: first})

    @property
    def version(self) -> dict[str, Any]:
        """What tells this state of the file from another: its size, and the ETag and Last-Modified given.

        Returns
        -------
        dict
            ``{"size": ..., "ETag": ..., "Last-Modified": ...}``, with only the
            tags the server sent (S3 gives an ETag; a plain web server may give neither).
        """
        return {"size": self.size, **self._fetcher.tags}

    # -- failures ------------------------------------------------------------
    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, _StatusError):
            return exc.code >= 500 or exc.code in (408, 429)
        if isinstance(exc, RemoteFileError):
            return False
        return isinstance(exc, self._fetcher.transient)

    def _final(self, exc: BaseException, tries: int) -> BaseException:
        """The error a user sees for ``exc``: names the URL and the problem."""
        if isinstance(exc, (RemoteFileError, MRCFileError)) or not isinstance(exc, Exception):
            return exc
        again = f" ({tries} tries)" if tries > 1 else ""
        if isinstance(exc, _StatusError):
            return RemoteFileError(self.path, f"the server answered {exc}{again}")
        if isinstance(exc, FileNotFoundError):
            return RemoteNotFoundError(self.path, "not found")
        if isinstance(exc, PermissionError):
            return RemoteFileError(self.path, "access denied")
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return RemoteFileError(self.path, f"no answer from the server within {READ_TIMEOUT:g} s{again}")
        if self._transient(exc):
            return RemoteFileError(self.path, f"the connection failed{again}: {type(exc).__name__}: {exc}")
        return RemoteFileError(self.path, f"cannot be read: {type(exc).__name__}: {exc}")

    def _with_tries(self, call: Callable[[], Any]) -> Any:
        for attempt in range(TRIES):
            try:
                return call()
            except Exception as exc:
                if not self._transient(exc) or attempt + 1 == TRIES:
                    final = self._final(exc, attempt + 1)
                    if final is exc:
                        raise
                    raise final from exc
            time.sleep(BACKOFF * 2 ** attempt)
        raise AssertionError("unreachable")

    def _fetch(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Bytes of each ``(start, end)`` range, tried again where a passing failure hit."""
        results: list[bytes] = [b""] * len(ranges)
        pending = list(range(len(ranges)))
        problem: BaseException | None = None
        for attempt in range(TRIES):
            if self._closed:
                raise ValueError(f"{shown(self.path)}: the file was closed")
            answers = self._fetcher.fetch([ranges[i] for i in pending])
            failed = []
            for i, answer in zip(pending, answers, strict=True):
                if isinstance(answer, BaseException):
                    if not self._transient(answer):
                        raise _raised(self._final(answer, attempt + 1), answer)
                    failed.append(i)
                    problem = answer
                    continue
                start, end = ranges[i]
                if len(answer) != end - start:
                    raise ObjectChangedError(self.path, f"{len(answer)} bytes came for the {end - start} at "
                                                        f"byte {start}: the file changed since it was opened")
                results[i] = answer
            self._count(len(pending), sum(len(results[i]) for i in pending if i not in failed))
            if not failed:
                return results
            pending = failed
            if attempt + 1 < TRIES:
                time.sleep(BACKOFF * 2 ** attempt)
        assert problem is not None
        raise _raised(self._final(problem, TRIES), problem)

    def _count(self, requests: int, nbytes: int) -> None:
        with self._lock:
            self.requests += requests
            self.fetched_bytes += nbytes

    # -- the block cache -------------------------------------------------------
    def _store(self, blocks: dict[int, bytes]) -> None:
        with self._lock:
            for b, data in blocks.items():
                if b not in self._blocks:
                    self._blocks[b] = data
                    self._cached += len(data)
            while self._cached > CACHE_BYTES and self._blocks:
                _, old = self._blocks.popitem(last=False)
                self._cached -= len(old)

    def _read_ahead(self, offset: int, end: int) -> int:
        """Bytes to fetch past ``end``: none for a read elsewhere, doubling while reads follow each other."""
        state = self._reader
        last = getattr(state, "end", None)
        ahead = getattr(state, "ahead", 0)
        follows = last is not None and last - BLOCK <= offset <= last + BLOCK
        ahead = min(max(2 * ahead, end - offset, BLOCK), READ_AHEAD, CACHE_BYTES // 4) if follows else 0
        state.end, state.ahead = end, ahead
        return ahead

    # -- reads ---------------------------------------------------------------
    def pread(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset`` (fewer only at the end of the file)."""
        buf = bytearray(max(0, min(n, self.size - offset)))
        got = self.readinto(offset, memoryview(buf))
        return bytes(buf[:got])

    def readinto(self, offset: int, buf: Any) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (short only at the end of the file)."""
        view = memoryview(buf)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        n = max(0, min(len(view), self.size - offset))
        if n == 0 or offset < 0:
            return 0
        end = offset + n
        if self._whole is not None:
            view[:n] = memoryview(self._whole)[offset:end]
            return n
        first, last = offset // BLOCK, (end - 1) // BLOCK
        ahead = self._read_ahead(offset, end)
        with self._lock:
            have = {}
            for b in range(first, last + 1):
                data = self._blocks.get(b)
                if data is not None:
                    self._blocks.move_to_end(b)
                    have[b] = data
        for b, data in have.items():
            _copy(view, offset, end, b * BLOCK, data)
        missing = [b for b in range(first, last + 1) if b not in have]
        if not missing:
            return n
        final = min((end + ahead - 1) // BLOCK, (self.size - 1) // BLOCK)
        with self._lock:
            beyond = [b for b in range(last + 1, final + 1) if b not in self._blocks]
        # A large read (a frame: its decoded copy is what a viewer keeps) would only push the small
        # ones out, and copying it into blocks costs as much as its transfer: only its ends are kept.
        keep_all = (last - first + 1) * BLOCK <= KEEP_WHOLE
        pieces = _pieces(missing + beyond, self.size)
        for batch in range(0, len(pieces), CONCURRENT):
            some = pieces[batch:batch + CONCURRENT]
            keep: dict[int, bytes] = {}
            for (start, stop), data in zip(some, self._fetch(some), strict=True):
                _copy(view, offset, end, start, data)
                for at in range(start, stop, BLOCK):
                    b = at // BLOCK
                    if keep_all or b in (first, last) or b > last:
                        keep[b] = data[at - start:at - start + BLOCK]
            self._store(keep)
        return n

    def peek(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``offset``: from the block cache if there, else in a request of their own.

        For small reads far apart (the chunk headers of an MRCZ file whose
        chunks are larger than a block): 16 bytes fetched instead of a
        :data:`BLOCK`. Nothing is kept in the cache, and the read-ahead of
        :meth:`readinto` neither grows nor resets.

        Parameters
        ----------
        offset
            Where to read.
        n
            How many bytes (fewer come back only at the end of the file).

        Returns
        -------
        bytes
            The bytes.
        """
        n = max(0, min(n, self.size - offset))
        if n == 0 or offset < 0:
            return b""
        end = offset + n
        if self._whole is not None:
            return self._whole[offset:end]
        with self._lock:
            have = [(b, self._blocks.get(b)) for b in range(offset // BLOCK, (end - 1) // BLOCK + 1)]
        if all(data is not None for _, data in have):
            buf = bytearray(n)
            for b, data in have:
                _copy(memoryview(buf), offset, end, b * BLOCK, data)
            return bytes(buf)
        return self._fetch([(offset, end)])[0]

    @contextlib.contextmanager
    def view(self, offset: int, n: int) -> Iterator[memoryview]:
        """Bytes ``offset:offset + n``, as a memoryview of a copy."""
        copy = memoryview(bytearray(n))
        if self.readinto(offset, copy) < n:
            raise TruncatedFileError(self.path, f"the file ends at byte {self.size}, before {offset + n}")
        yield copy

    def in_use(self) -> contextlib.nullcontext:
        """Nothing to keep open: a no-op, as where files are never closed under a read."""
        return contextlib.nullcontext()

    def close(self) -> None:
        """Drop the cached blocks (the connections are shared, and stay open)."""
        self._closed = True
        with self._lock:
            self._blocks.clear()
            self._cached = 0
        self._whole = None

    # -- the whole file, in order ----------------------------------------------
    def stream(self) -> io.BufferedReader:
        """A sequential reader of the whole file, in ranges of :data:`PIECE`, past the block cache."""
        return io.BufferedReader(_Stream(self), buffer_size=2 * PIECE)


def _raised(final: BaseException, cause: BaseException) -> BaseException:
    """``final``, caused by ``cause`` unless it is ``cause`` (an exception is not its own cause)."""
    if final is not cause:
        final.__cause__ = cause
    return final


def _copy(view: memoryview, offset: int, end: int, start: int, data: bytes) -> None:
    """Copy the part of ``data`` (bytes ``start:``) that falls in ``offset:end`` into ``view``."""
    lo, hi = max(offset, start), min(end, start + len(data))
    if hi > lo:
        view[lo - offset:hi - offset] = memoryview(data)[lo - start:hi - start]


def _pieces(blocks: list[int], size: int) -> list[tuple[int, int]]:
    """Byte ranges covering ``blocks`` (sorted): contiguous runs, cut at :data:`PIECE`."""
    per_piece = max(1, PIECE // BLOCK)
    ranges: list[tuple[int, int]] = []
    run_start = prev = None
    for b in [*blocks, None]:
        if b is not None and prev is not None and b == prev + 1 and b - run_start < per_piece:
            prev = b
            continue
        if run_start is not None:
            ranges.append((run_start * BLOCK, min((prev + 1) * BLOCK, size)))
        run_start = prev = b
    return ranges


class _Stream(io.RawIOBase):
    """The whole remote file in order (for gzip/bzip2), fetched past the block cache."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote, self.pos = remote, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        n = max(0, min(len(view), self.remote.size - self.pos))
        if n == 0:
            return 0
        if self.remote._whole is not None:
            self.remote.readinto(self.pos, view[:n])
        else:
            ranges = [(at, min(at + PIECE, self.pos + n)) for at in range(self.pos, self.pos + n, PIECE)]
            for (start, _), data in zip(ranges, self.remote._fetch(ranges), strict=True):
                view[start - self.pos:start - self.pos + len(data)] = data
        self.pos += n
        return n
