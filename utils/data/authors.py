"""The authors' datalists (github.com/bmezaris/L-CAM, ``datalist/ILSVRC/``): fetched from their
repository, checked against a SHA-256, recorded.

Their repository carries no license, so the lists are not part of this project; this module
downloads them into ``datalist/ILSVRC/`` (README, 'Reproduce the paper'):

- ``Evaluation_2000.txt``: 2000 ILSVRC2012 validation images with ground-truth labels, the list
  of every AD/IC figure of the paper. Its SHA-256 is recorded here (:data:`AUTHORS_LISTS`).
- ``VGG16_train.txt``, ``ResNet50_train.txt``: the training images labelled with each
  backbone's own prediction ("model truth"). No checksum is known in advance: the first one
  fetched (or found in place) is recorded in ``authors_sha256.json`` beside the lists and
  printed (trust on first use), and every later run checks against it; ``given`` checksums
  (``--sha256 NAME=HEX``) take precedence over both.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from utils.core.download import ChecksumMismatchError, DownloadError, download, sha256_of
from utils.core.errors import UserError, UserValueError
from utils.core.files import write_json

__all__ = [
    "AUTHORS_LISTS",
    "AUTHORS_LISTS_PAGE",
    "AUTHORS_REPOSITORY",
    "AUTHORS_URL_BASES",
    "CHECKSUM_FILE",
    "FetchedList",
    "fetch_authors_lists",
    "parse_sha256",
    "recorded_checksums",
]

AUTHORS_REPOSITORY = "bmezaris/L-CAM"
# their default branch is "main"; "master" is tried when a file is not found there
AUTHORS_URL_BASES = tuple(
    f"https://raw.githubusercontent.com/{AUTHORS_REPOSITORY}/{branch}/datalist/ILSVRC" for branch in ("main", "master")
)
AUTHORS_LISTS_PAGE = f"https://github.com/{AUTHORS_REPOSITORY}/tree/main/datalist/ILSVRC"
# name -> the SHA-256 the project knows (None: recorded on first use)
AUTHORS_LISTS: dict[str, str | None] = {
    "Evaluation_2000.txt": "fa82dd426af9b082e5eb824388387126a12196ff1e73196e1ff349b5998a6331",
    "VGG16_train.txt": None,
    "ResNet50_train.txt": None,
}
CHECKSUM_FILE = "authors_sha256.json"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


@dataclass(frozen=True)
class FetchedList:
    """One list in place and checked.

    Attributes:
        name: its file name. path: where it is.
        sha256: its checksum.
        source: the URL it came from, or ``""`` when it was already in place.
        trust: what it was checked against: ``"project"`` (the checksum recorded in this
            module), ``"given"`` (the caller's), ``"recorded"`` (the record of an earlier
            run), or ``"first use"`` (nothing known: recorded now).
    """

    name: str
    path: str
    sha256: str
    source: str
    trust: str


def parse_sha256(text: str, names: Sequence[str] = tuple(AUTHORS_LISTS)) -> tuple[str, str]:
    """``"NAME=HEX"`` -> ``(NAME, hex in lowercase)``.

    Raises:
        UserValueError: not ``NAME=HEX``, an unknown NAME or not 64 hex digits.
    """
    name, separator, digest = text.partition("=")
    if not separator or name not in names or not _HEX64.match(digest.strip()):
        raise UserValueError(
            f"--sha256 expects NAME=HEX with NAME one of {', '.join(names)} and HEX 64 hex digits, got {text!r}"
        )
    return name, digest.strip().lower()


def recorded_checksums(output_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The record ``output_dir/authors_sha256.json``: name -> ``{"sha256", "source", "recorded"}``
    ({} when there is none).

    Raises:
        UserValueError: the record exists but is not such a JSON object.
    """
    path = os.path.join(output_dir, CHECKSUM_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        raise UserValueError(f"{path}: unreadable checksum record ({error.__class__.__name__}); delete it") from None
    if not isinstance(record, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in record.values()
    ):
        raise UserValueError(f"{path}: not a checksum record (name -> {{'sha256': ...}}); delete it")
    return record


def _expected(
    name: str, given: Mapping[str, str], known: Mapping[str, str | None], record: Mapping[str, dict]
) -> tuple[str | None, str]:
    """The checksum ``name`` must have and where it comes from."""
    if name in given:
        return given[name], "given"
    if known.get(name):
        return known[name], "project"
    if name in record:
        return record[name]["sha256"], "recorded"
    return None, "first use"


def _describe(trust: str, record_path: str) -> str:
    """What a checksum of ``trust`` is, for messages."""
    return {
        "given": "the checksum given",
        "project": "the project's checksum",
        "recorded": f"the checksum recorded in {record_path}",
    }[trust]


def _github_media_url(url: str) -> str | None:
    """Where GitHub serves the content of a Git LFS file whose raw URL is ``url``."""
    prefix = "https://raw.githubusercontent.com/"
    return "https://media.githubusercontent.com/media/" + url[len(prefix) :] if url.startswith(prefix) else None


def _lfs_pointer_sha256(path: str) -> str | None:
    """The SHA-256 a Git LFS pointer file names (``oid sha256:...``), or None when ``path`` is
    not a pointer."""
    if os.path.getsize(path) > 1024:
        return None
    with open(path, "rb") as handle:
        text = handle.read()
    if not text.startswith(_LFS_POINTER):
        return None
    match = re.search(rb"^oid sha256:([0-9a-f]{64})$", text, re.MULTILINE)
    return match.group(1).decode() if match else ""


def _download_from_bases(
    name: str, path: str, url_bases: Sequence[str], expected: str | None, expectation: str, **options
) -> tuple[str, str]:
    """Fetch ``name`` from the first base that has it; returns (SHA-256, URL).

    Raises:
        UserError: every base answered 404, or none could be reached (one line saying where
            to put the file by hand).
        ChecksumMismatchError: the file is not the expected one (not kept).
    """
    not_found = []
    staging = f"{path}.download"  # checked before it becomes ``path``
    for base in url_bases:
        url = f"{base.rstrip('/')}/{name}"
        try:
            digest = download(url, staging, description=name, **options)
        except DownloadError as error:
            if error.status == 404:
                not_found.append(url)
                continue
            raise UserError(
                f"{error}; without internet, download {name} from {AUTHORS_LISTS_PAGE} on another machine and put it "
                f"at {path} (run this command again to check it)"
            ) from None
        pointer = _lfs_pointer_sha256(staging)
        if pointer is not None:  # the repository keeps the file in Git LFS: fetch its content
            os.remove(staging)
            url = _github_media_url(url) or ""
            if not url or not pointer:
                raise UserError(
                    f"{base}/{name} is a Git LFS pointer, not the list; download it from {AUTHORS_LISTS_PAGE}"
                )
            digest = download(url, staging, expected_sha256=expected or pointer, description=name, **options)
        if expected is not None and digest != expected:
            os.remove(staging)
            raise ChecksumMismatchError(
                f"{url}: SHA-256 {digest} is not {expectation} {expected}: not the authors' file, not kept"
            )
        os.replace(staging, path)
        return digest, url
    raise UserError(
        f"{name} not found at {' or '.join(not_found)}; download it from {AUTHORS_LISTS_PAGE} and put it at {path}"
    )


def fetch_authors_lists(
    output_dir: str | os.PathLike,
    names: Sequence[str] | None = None,
    url_bases: Sequence[str] = AUTHORS_URL_BASES,
    given: Mapping[str, str] | None = None,
    known: Mapping[str, str | None] = AUTHORS_LISTS,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
    report: Callable[[str], None] = print,
) -> list[FetchedList]:
    """Put the authors' lists ``names`` (default all of :data:`AUTHORS_LISTS`) in
    ``output_dir`` (the project's ``datalist/ILSVRC``), each checked, and record their checksums in ``authors_sha256.json``.

    A list already in place is checked, not fetched again. A missing one is downloaded from
    the first of ``url_bases`` that has it (resumed and retried when the connection breaks,
    see :func:`utils.core.download.download`). ``report`` gets one line per list.

    Raises:
        ChecksumMismatchError: a list is not the expected file: a downloaded one is removed,
            one already in place is left where it is and named (one line).
        UserError: a list could not be downloaded (one line saying where to put it by hand).
    """
    output_dir = os.fspath(output_dir)
    given = dict(given or {})
    names = list(names or known)
    record_path = os.path.join(output_dir, CHECKSUM_FILE)
    record = recorded_checksums(output_dir)
    fetched = []
    for name in names:
        path = os.path.join(output_dir, name)
        expected, trust = _expected(name, given, known, record)
        if os.path.isfile(path):
            digest, source = sha256_of(path), ""
            if expected is not None and digest != expected:
                raise ChecksumMismatchError(
                    f"{path}: SHA-256 {digest} is not {_describe(trust, record_path)} {expected}: it is not the "
                    "authors' file; move it away and run again to download theirs (or give --sha256 "
                    f"{name}=HEX if you trust it)"
                )
        else:
            digest, source = _download_from_bases(
                name,
                path,
                url_bases,
                expected,
                _describe(trust, record_path) if expected else "",
                retries=retries,
                timeout=timeout,
                backoff=backoff,
                progress=progress,
            )
        how = "downloaded from " + source if source else "already in place"
        if trust == "first use":
            report(
                f"{name}: {how}; SHA-256 {digest}, recorded in {record_path} (no checksum was known: later runs "
                "check against this one; compare it with a trusted copy)"
            )
        else:
            report(f"{name}: {how}; SHA-256 {digest} matches {_describe(trust, record_path)}")
        if record.get(name, {}).get("sha256") != digest:
            record[name] = {
                "sha256": digest,
                "source": source or "in place",
                "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            write_json(record_path, record)
        fetched.append(FetchedList(name, path, digest, source, trust))
    return fetched
