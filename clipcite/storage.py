"""Where bytes live: local paths and ``s3://`` URIs behind one small API.

Every step reads and writes through these helpers so that a path on a laptop and an object prefix on S3 (or any
S3-compatible store: MinIO, Ceph) behave the same. Credentials come only from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``/``AWS_REGION``); an S3-compatible endpoint is
set with ``AWS_ENDPOINT_URL`` (or ``CLIPCITE_S3_ENDPOINT``).

S3 requests go through boto3 (the only module that uses it): transient errors are retried with backoff, large
objects move as multipart uploads/downloads, and errors name the URI and what to fix (credentials, bucket, key).
Parquet shards are read with pyarrow's S3 filesystem (same endpoint, credentials and retry budget).

Outputs are staged: a step writes into a local temporary directory and :func:`publish_dir` moves it into place only
when the step succeeded, so a failed run never leaves a half-written artifact where a good one was.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.fs as pafs
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

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


def max_attempts() -> int:
    """Attempts per S3 request (``CLIPCITE_S3_MAX_ATTEMPTS``, default 8): throttling, 5xx and dropped connections
    are retried with exponential backoff and jitter."""
    return int(os.environ.get("CLIPCITE_S3_MAX_ATTEMPTS", "8"))


def transfer_config() -> TransferConfig:
    """Objects above ``CLIPCITE_S3_MULTIPART_MB`` (default 64) move in parallel parts of that size."""
    part = int(float(os.environ.get("CLIPCITE_S3_MULTIPART_MB", "64")) * 1024 * 1024)
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=8)


def _client():
    """An S3 client for the current environment (endpoint, region and credentials are read on every call, so a
    changed environment gets a new client)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _cached_client(s3_endpoint(), region, os.environ.get("AWS_ACCESS_KEY_ID"), max_attempts())


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint: str | None, region: str | None, _access_key: str | None, attempts: int):
    config = BotoConfig(retries={"mode": "standard", "max_attempts": attempts}, connect_timeout=10, read_timeout=120)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidToken", "ExpiredToken")


def _s3_error(error: Exception, uri: str) -> Exception:
    """A message that says what to fix: credentials, the bucket, or the key."""
    where = s3_endpoint() or "AWS S3"
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return PermissionError(
            f"{uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster: the "
            "clipcite-s3 secret) or another source boto3 reads"
        )
    if isinstance(error, EndpointConnectionError):
        return ConnectionError(f"{uri}: cannot reach the S3 endpoint {where} ({error}); check AWS_ENDPOINT_URL")
    if isinstance(error, ClientError):
        code = _code(error)
        bucket = split_s3(uri)[0]
        if code == "NoSuchBucket":
            return _no_bucket(uri)
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{uri}: no such object")
        if code in _DENIED:
            return PermissionError(
                f"{uri}: {where} refused the request ({code}): the S3 credentials are wrong or lack access to "
                f"bucket {bucket!r}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        return OSError(f"{uri}: S3 error {code}: {error}")
    return OSError(f"{uri}: S3 error: {error}")


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except ClientError as e:
        if _code(e) in ("404", "NoSuchKey", "NotFound"):
            check_bucket(uri)  # name a missing bucket rather than a missing key
        raise _s3_error(e, uri) from e
    except BotoCoreError as e:
        raise _s3_error(e, uri) from e


def _no_bucket(uri: str) -> FileNotFoundError:
    where = s3_endpoint() or "AWS S3"
    return FileNotFoundError(f"{uri}: bucket {split_s3(uri)[0]!r} does not exist at {where}; create it or fix the URI")


def check_bucket(uri: str) -> None:
    """Fail with a clear message when the bucket of ``uri`` is missing or the credentials cannot reach it."""
    bucket = split_s3(uri)[0]
    try:
        _client().head_bucket(Bucket=bucket)
    except ClientError as e:
        if _code(e) in ("404", "NoSuchBucket", "NotFound"):
            raise _no_bucket(uri) from e
        raise _s3_error(e, uri) from e
    except BotoCoreError as e:
        raise _s3_error(e, uri) from e


def _list_keys(uri: str, *, delimiter: bool = False, limit: int | None = None) -> list[str]:
    """Object keys under the prefix ``uri`` (recursively, or one level with ``delimiter``)."""
    bucket, prefix = split_s3(uri)
    prefix = _folder_prefix(prefix)
    kwargs = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": "/"} if delimiter else {})}
    keys: list[str] = []
    with _s3_errors(uri):
        for page in _client().get_paginator("list_objects_v2").paginate(**kwargs):
            keys.extend(o["Key"] for o in page.get("Contents", []))
            if limit and len(keys) >= limit:
                break
    return keys


def _folder_prefix(key: str) -> str:
    """The key prefix of the objects "inside" ``key`` as a folder: ``a/b`` -> ``a/b/``, a bucket root -> ``""``."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` -> ``("bucket", "key/part")``."""
    parsed = urlparse(str(uri))
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


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
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts())
    return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}/{parsed.path.lstrip('/')}".rstrip("/")


def exists(uri: str | os.PathLike) -> bool:
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        _client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as e:
        if _code(e) in ("404", "NoSuchKey"):
            check_bucket(uri)  # a missing bucket is an error, not "no such object"
            return bool(_list_keys(uri, limit=1))  # a prefix "exists" when objects are under it
        raise _s3_error(e, uri) from e
    except BotoCoreError as e:
        raise _s3_error(e, uri) from e


def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{uri}: no such file") from e
    bucket, key = split_s3(uri)
    buffer = io.BytesIO()
    with _s3_errors(uri):
        _client().download_fileobj(bucket, key, buffer, Config=transfer_config())
    return buffer.getvalue()


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically: a temp file renamed into place locally; on S3 an object appears only once
    its (possibly multipart) upload completed."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            _client().upload_fileobj(io.BytesIO(data), bucket, key, Config=transfer_config())
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
    uri = str(uri)
    if is_s3(uri):
        prefix = _folder_prefix(split_s3(uri)[1])
        names = {k[len(prefix) :] for k in _list_keys(uri, delimiter=True)}
    else:
        folder = Path(uri)
        names = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    return [join(uri, n) for n in sorted(names) if n.endswith(suffix)]


def stat(uri: str | os.PathLike) -> dict:
    """Size, modification time and (on S3) ETag of one file: what a data snapshot records."""
    uri = str(uri)
    if not is_s3(uri):
        info = Path(uri).stat()
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        head = _client().head_object(Bucket=bucket, Key=key)
    return {"size": head["ContentLength"], "etag": head["ETag"].strip('"')}


def walk(uri: str | os.PathLike) -> list[tuple[str, dict]]:
    """Every file under a directory/prefix, recursively: ``(path relative to uri, {size, mtime_ns | etag})``,
    sorted. Hidden local files are left out; a missing directory or prefix is empty."""
    uri = str(uri)
    if not is_s3(uri):
        root = Path(uri)
        if not root.is_dir():
            return []
        found = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if not any(part.startswith(".") for part in rel.split("/")):
                info = path.stat()
                found.append((rel, {"size": info.st_size, "mtime_ns": info.st_mtime_ns}))
        return found
    bucket, prefix = split_s3(uri)
    prefix = _folder_prefix(prefix)
    found = []
    with _s3_errors(uri):
        for page in _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found.append((obj["Key"][len(prefix) :], {"size": obj["Size"], "etag": obj["ETag"].strip('"')}))
    return sorted(found)


@contextlib.contextmanager
def local_dir(uri: str | os.PathLike) -> Iterator[Path]:
    """A local directory holding the contents of ``uri``; downloaded to a temp dir when it is on S3."""
    uri = str(uri)
    if not is_s3(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"{uri}: no such directory")
        yield Path(uri)
        return
    keys = _list_keys(uri)
    if not keys:
        raise FileNotFoundError(f"{uri}: no such prefix (no objects under it)")
    bucket, prefix = split_s3(uri)
    prefix = _folder_prefix(prefix)
    with tempfile.TemporaryDirectory(prefix="clipcite-") as tmp:
        for key in keys:
            target = Path(tmp, key[len(prefix) :])
            target.parent.mkdir(parents=True, exist_ok=True)
            with _s3_errors(f"s3://{bucket}/{key}"):
                _client().download_file(bucket, key, str(target), Config=transfer_config())
        yield Path(tmp)


@contextlib.contextmanager
def mirrored_dir(uri: str | os.PathLike) -> Iterator[tuple[Path, Callable[[Path], None]]]:
    """A local working copy of a directory that must outlive the process (checkpoints of a preemptible pod).

    Yields ``(local, save)``: ``local`` holds what ``uri`` holds now; ``save(path)`` copies one file of ``local``
    to ``uri`` (on S3 an object appears only once its upload completes, so a process killed mid-upload leaves the
    previous object in place, never a partial one). A local ``uri`` is used as it is.
    """
    uri = str(uri)
    if not is_s3(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        yield Path(uri), lambda path: None
        return
    bucket, prefix = split_s3(uri)
    prefix = _folder_prefix(prefix)
    client = _client()
    with tempfile.TemporaryDirectory(prefix="clipcite-mirror-") as tmp:
        for key in _list_keys(uri):
            target = Path(tmp, key[len(prefix) :])
            target.parent.mkdir(parents=True, exist_ok=True)
            with _s3_errors(f"s3://{bucket}/{key}"):
                client.download_file(bucket, key, str(target), Config=transfer_config())

        def save(path: Path) -> None:
            key = prefix + Path(path).relative_to(tmp).as_posix()
            with _s3_errors(f"s3://{bucket}/{key}"):
                client.upload_file(str(path), bucket, key, Config=transfer_config())

        yield Path(tmp), save


def remove_dir(uri: str | os.PathLike) -> None:
    """Delete a directory or every object under an S3 prefix; a missing one is fine."""
    uri = str(uri)
    if not is_s3(uri):
        shutil.rmtree(uri, ignore_errors=True)
        return
    _delete_keys(uri, _list_keys(uri))


def _delete_keys(uri: str, keys: list[str]) -> None:
    bucket, _ = split_s3(uri)
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        with _s3_errors(uri):
            _client().delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]}
            )


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
        bucket, prefix = split_s3(uri)
        prefix = _folder_prefix(prefix)
        client = _client()
        new = set()
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(local).as_posix()
            with _s3_errors(f"s3://{bucket}/{key}"):
                client.upload_file(str(path), bucket, key, Config=transfer_config())
            new.add(key)
        _delete_keys(uri, [k for k in _list_keys(uri) if k not in new])
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
