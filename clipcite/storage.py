"""Where bytes live: local paths and ``s3://`` URIs behind one small API.

Every step reads and writes through these helpers so that a path on a laptop and an object prefix on S3 (or any
S3-compatible store: MinIO, Ceph) behave the same. Credentials come only from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``/``AWS_REGION``); an S3-compatible endpoint is
set with ``AWS_ENDPOINT_URL`` (or ``CLIPCITE_S3_ENDPOINT``).

Outputs are staged: a step writes into a local temporary directory and :func:`publish_dir` moves it into place only
when the step succeeded, so a failed run never leaves a half-written artifact where a good one was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    base = str(uri)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def s3_endpoint() -> str | None:
    return os.environ.get("CLIPCITE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path_within_it)`` for a local path or s3:// URI."""
    uri = str(uri)
    if not is_s3(uri):
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    parsed = urlparse(uri)
    endpoint = s3_endpoint()
    kwargs: dict = {}
    if endpoint:
        scheme = urlparse(endpoint).scheme or "https"
        kwargs["endpoint_override"] = endpoint.split("://", 1)[-1]
        kwargs["scheme"] = scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically: a temp file renamed into place locally, one PUT on S3."""
    uri = str(uri)
    if is_s3(uri):
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str | os.PathLike, suffix: str = "") -> list[str]:
    """Files directly inside a directory/prefix, sorted, as URIs of the same kind as ``uri``."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in info if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(uri, n) for n in names]


@contextlib.contextmanager
def local_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """A local directory holding the contents of ``uri``; downloaded to a temp dir when it is on S3."""
    uri = str(uri)
    if not is_s3(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"{uri}: no such directory")
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="clipcite-") as tmp:
        fs, path = filesystem(uri)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{uri}: no such prefix")
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(tmp)


@contextlib.contextmanager
def staged_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty local directory; on success its contents become ``uri``, on error nothing changes."""
    uri = str(uri)
    parent = None if is_s3(uri) else Path(uri).absolute().parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clipcite-stage-", dir=parent))
    try:
        yield tmp
        publish_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(local: Path, uri: str) -> None:
    """Move a finished local directory to ``uri``, replacing what was there only once the new one is complete."""
    if is_s3(uri):
        # Upload first, then delete what the previous version had and this one does not (an old shard left
        # behind would silently join the new table). Objects are replaced one by one: readers during the
        # upload may see a mix, which the pipeline never does (it writes each artifact once).
        fs, path = filesystem(uri)
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        new = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File and info.path[len(path) + 1 :] not in new:
                fs.delete_file(info.path)
        return
    target = Path(uri).absolute()
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.new")
    shutil.move(str(local), staging)  # same filesystem as the target: a rename
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    local.mkdir(exist_ok=True)  # keep the caller's cleanup simple
