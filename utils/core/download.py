"""Fetching a file over HTTP(S) with the standard library: resumed (HTTP ``Range``) and retried
when the connection breaks, checked against a SHA-256, and never left half-written or
unverified at its final path.

The bytes go to ``<path>.part`` first; a later call (or the next attempt) asks the server for
the rest only. Once the file is complete its SHA-256 is computed: a mismatch removes the part
file and raises :class:`ChecksumMismatchError`; a match (or no expected checksum) renames it to
``path``."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tqdm import tqdm

from utils.core.errors import UserError, UserValueError

__all__ = ["ChecksumMismatchError", "DownloadError", "download", "sha256_of"]

CHUNK_BYTES = 1 << 16
USER_AGENT = "lcam-reproduction (python urllib)"


class DownloadError(UserError, OSError):
    """The file could not be fetched (no internet, a server error, a missing file).

    Attributes:
        url: what was asked for.
        status: the HTTP status when the server answered with an error (404, 500, ...),
            else None (no answer: DNS, refused or broken connections, timeouts).
    """

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ChecksumMismatchError(UserValueError):
    """The file's SHA-256 is not the expected one (the file is not kept)."""


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    text = " ".join(str(reason).split()) or error.__class__.__name__
    return f"{error.__class__.__name__}: {text}"[:160]


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The whole file's size from ``Content-Range: bytes a-b/TOTAL`` (a 206 answer) or
    ``Content-Length`` (a 200 answer, ``offset`` 0); None when the server does not say."""
    content_range = response.headers.get("Content-Range", "")
    if content_range.startswith("bytes ") and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _fetch_once(url: str, part: str, timeout: float, bar: tqdm) -> None:
    """One request: continue ``part`` from its size (``Range``), append what comes.

    Raises:
        urllib.error.HTTPError: the server answered with an error status.
        OSError, http.client.HTTPException: the connection broke or was never made.
        ConnectionError: the server closed the connection before the whole file came.
    """
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part file is not a prefix the server knows: start again
            os.remove(part)
            bar.reset()
            return _fetch_once(url, part, timeout, bar)
        raise
    with response:
        resumed = offset and response.status == 206
        if not resumed:  # the whole file comes (a server without Range support, or a fresh start)
            offset = 0
            bar.reset()
        total = _total_size(response, offset)
        if total is not None:
            bar.total = total
            bar.refresh()
        bar.n = offset
        with open(part, "ab" if resumed else "wb") as handle:
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                handle.write(chunk)
                bar.update(len(chunk))
        received = os.path.getsize(part)
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes")


def download(
    url: str,
    path: str | os.PathLike,
    expected_sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
    description: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Fetch ``url`` into ``path``; returns the file's SHA-256.

    A broken download (a connection cut, reset or timed out, a server error 5xx) is tried
    again up to ``retries`` more times, each continuing where the last stopped (HTTP
    ``Range``; a server that ignores it sends the whole file again), after ``backoff``,
    2 x ``backoff``, ... seconds. A client error (404, 403, ...) is not retried.

    Args:
        expected_sha256: 64 hex digits; None: any content is accepted (the caller records
            the returned checksum).
        retries: further attempts after the first.
        timeout: seconds without an answer before an attempt fails.
        progress: a tqdm bar of the bytes, named ``description`` (default: the file's name).

    Raises:
        DownloadError: every attempt failed (one line: the URL and the last reason).
        ChecksumMismatchError: the file came whole but its SHA-256 differs; ``path`` is left
            as it was and the bytes are removed.
    """
    path = os.fspath(path)
    part = f"{path}.part"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    last_error: BaseException | None = None
    with tqdm(
        unit="B", unit_scale=True, desc=description or os.path.basename(path), disable=not progress, leave=False
    ) as bar:
        for attempt in range(retries + 1):
            if attempt:
                sleep(backoff * attempt)
            try:
                _fetch_once(url, part, timeout, bar)
                break
            except urllib.error.HTTPError as error:
                last_error = error
                if error.code < 500:
                    raise DownloadError(f"{url}: HTTP {error.code} {error.reason}", url, error.code) from None
            except (OSError, http.client.HTTPException, socket.timeout) as error:
                last_error = error
        else:
            received = os.path.getsize(part) if os.path.exists(part) else 0
            kept = f"; the {received} bytes received are kept in {part} and continued next time" if received else ""
            raise DownloadError(
                f"could not download {url} after {retries + 1} attempt(s) ({_reason(last_error)}){kept}",
                url,
                getattr(last_error, "code", None),
            )
    digest = sha256_of(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        os.remove(part)
        raise ChecksumMismatchError(
            f"{url}: SHA-256 {digest} is not the expected {expected_sha256.lower()}; the file was not kept"
        )
    os.replace(part, path)
    return digest
