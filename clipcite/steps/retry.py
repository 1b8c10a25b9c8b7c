"""Retrying a step's work inside its process, for the failures that a second try can cure (a dropped connection,
a throttled or briefly failing object store or tracking server).

The pipeline asks KFP to retry its pods, but a backend ignores ``set_retry`` on a task inside a ``ParallelFor``
(kubeflow/pipelines #12389, open), so the evaluate step retries itself; a preempted pod is not cured here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that say something about the input or the code, never about the moment: a retry cannot cure them.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_TRANSIENT_S3_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "503"}


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or the error it was raised from: clipcite's own messages wrap the client's) may pass on a
    second try: connection and timeout errors, S3 throttling and 5xx answers, an MLflow server that stopped
    answering; not bad input, missing files, refused credentials or bugs."""
    cause: BaseException | None = error
    while cause is not None:
        if _transient(cause):
            return True
        cause = cause.__cause__
    return False


def _transient(error: BaseException) -> bool:
    from clipcite.tracking.runs import TrackingError  # here: the check must not import MLflow for a plain OSError

    if isinstance(error, TrackingError):
        return "unreachable" in str(error) or "stopped answering" in str(error)
    if isinstance(error, OSError):
        return not isinstance(error, _PERMANENT_OS_ERRORS)
    try:
        from botocore.exceptions import ClientError, HTTPClientError  # type: ignore[import-untyped]
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(error, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in _TRANSIENT_S3_CODES or status >= 500
    return False


def with_retries(work: Callable[[], T], *, attempts: int, what: str, backoff_s: float = 30.0) -> T:
    """``work()``, tried up to ``attempts`` times while it fails transiently, waiting ``backoff_s`` then twice as
    long each time (KFP's own retry policy: exponential backoff, factor 2). Any other error is raised at once."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return work()
        except Exception as e:
            if attempt >= attempts or not is_transient(e):
                raise
            wait = backoff_s * 2 ** (attempt - 1)
            detail = f"{type(e).__name__}: {str(e)[:300]}"
            log.warning("%s failed (attempt %d of %d, %s); retrying in %.0f s", what, attempt, attempts, detail, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
