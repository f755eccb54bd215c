"""Fetching files (utils.core.download) and the authors' lists (utils.data.authors,
``scripts.make_datalist authors``) from a local HTTP server on 127.0.0.1: a good file, a
tampered one, a connection cut halfway, a server without Range support, a missing file, no
server at all. Never the internet."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading

import pytest

from scripts import make_datalist
from utils.core.download import ChecksumMismatchError, DownloadError, download
from utils.data.authors import AUTHORS_LISTS, CHECKSUM_FILE, fetch_authors_lists, parse_sha256

SERVER_LIFETIME_S = 60  # the server stops by itself after this, whatever the tests do


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET of ``server.files[path]``; honours ``Range: bytes=N-`` when ``server.ranges``; the
    first ``server.cuts[path]`` answers for a path stop halfway (the connection closes)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, requested = 0, self.headers.get("Range")
        if requested and server.ranges:
            start = int(requested.split("=", 1)[1].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        if server.cuts.get(self.path, 0) > 0:
            server.cuts[self.path] -= 1
            self.wfile.write(rest[: len(rest) // 2])
            self.close_connection = True
            return
        self.wfile.write(rest)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    """A local HTTP server in a thread: ``server.url(path)``, ``server.files`` (path -> bytes),
    ``server.cuts`` (path -> answers cut halfway), ``server.ranges``, ``server.requests``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.files, httpd.cuts, httpd.ranges, httpd.requests = {}, {}, True, []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(SERVER_LIFETIME_S, httpd.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield httpd
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PAYLOAD = os.urandom(300_000)
FAST = {"retries": 2, "timeout": 5.0, "backoff": 0.0, "progress": False}


# -- utils.core.download ----------------------------------------------------------------------


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "server-without-range"])
def test_a_cut_download_is_retried_and_resumed(server, tmp_path, ranges):
    server.files["/f.bin"], server.cuts["/f.bin"], server.ranges = PAYLOAD, 1, ranges
    path = tmp_path / "out" / "f.bin"
    assert download(server.url("/f.bin"), path, expected_sha256=_sha256(PAYLOAD), **FAST) == _sha256(PAYLOAD)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "out" / "f.bin.part").exists()
    assert [requested for _, requested in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_a_download_cut_every_time_keeps_its_bytes_and_continues_next_call(server, tmp_path):
    server.files["/f.bin"], server.cuts["/f.bin"] = PAYLOAD, 3
    path = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"after 3 attempt\(s\) \(ConnectionError: .*kept in .*f\.bin\.part"):
        download(server.url("/f.bin"), path, **FAST)
    assert not path.exists() and 0 < (tmp_path / "f.bin.part").stat().st_size < len(PAYLOAD)
    download(server.url("/f.bin"), path, expected_sha256=_sha256(PAYLOAD), **FAST)  # the server works again
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1][1] is not None  # continued with a Range request


def test_a_tampered_file_is_refused_and_not_kept(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD[:-1] + b"x"
    path = tmp_path / "f.bin"
    with pytest.raises(ChecksumMismatchError, match="is not the expected .*the file was not kept"):
        download(server.url("/f.bin"), path, expected_sha256=_sha256(PAYLOAD), **FAST)
    assert os.listdir(tmp_path) == []


def test_a_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        download(server.url("/nothing.txt"), tmp_path / "x.txt", **FAST)
    assert error.value.status == 404 and len(server.requests) == 1


# -- the authors' lists -----------------------------------------------------------------------

EVALUATION = "".join(f"ILSVRC2012_val_{index:08d}.JPEG {index % 1000} \n" for index in range(1, 41)).encode()
VGG16_TRAIN = b"n01440764/n01440764_10026.JPEG 0\nn01443537/n01443537_2.JPEG 1\n"
RESNET50_TRAIN = b"n01440764/n01440764_10026.JPEG 0\nn01443537/n01443537_2.JPEG 391\n"


def _serve_lists(server, folder="/main/datalist/ILSVRC"):
    server.files.update(
        {
            f"{folder}/Evaluation_2000.txt": EVALUATION,
            f"{folder}/VGG16_train.txt": VGG16_TRAIN,
            f"{folder}/ResNet50_train.txt": RESNET50_TRAIN,
        }
    )
    return server.url(folder)


@pytest.fixture
def authors(run_command):
    """``authors(*argv)``: ``make_datalist authors``; returns (exit status, stdout, the error
    lines of stderr: the progress bars left out)."""

    def run(*argv):
        argv = ["authors", "--retries", "1", "--timeout", "5", *argv]
        status, out, err = run_command(make_datalist.main, make_datalist.get_args_parser(), argv)
        errors = [line for line in err.replace("\r", "\n").splitlines() if ": error:" in line]
        return status, out, "\n".join(errors)

    return run


def test_first_use_records_the_checksums_and_later_runs_check_them(server, tmp_path, authors):
    base = _serve_lists(server)
    lists = tmp_path / "datalist" / "ILSVRC"
    status, out, _ = authors("VGG16_train.txt", "ResNet50_train.txt", "--url_base", base, "--output_dir", lists)
    assert status == 0
    assert (lists / "VGG16_train.txt").read_bytes() == VGG16_TRAIN
    assert (lists / "ResNet50_train.txt").read_bytes() == RESNET50_TRAIN
    record = json.loads((lists / CHECKSUM_FILE).read_text())
    assert record["VGG16_train.txt"]["sha256"] == _sha256(VGG16_TRAIN)
    assert record["VGG16_train.txt"]["source"] == f"{base}/VGG16_train.txt"
    assert f"SHA-256 {_sha256(VGG16_TRAIN)}, recorded in" in out and "no checksum was known" in out

    # in place: checked against the record, nothing downloaded
    server.requests.clear()
    status, out, _ = authors("VGG16_train.txt", "--url_base", base, "--output_dir", lists)
    assert status == 0 and server.requests == []
    assert "already in place" in out and "matches the checksum recorded" in out

    # a tampered copy on the server is refused against the record, in one line, and not kept
    (lists / "VGG16_train.txt").unlink()
    server.files["/main/datalist/ILSVRC/VGG16_train.txt"] = VGG16_TRAIN.replace(b" 0\n", b" 7\n")
    status, out, err = authors("VGG16_train.txt", "--url_base", base, "--output_dir", lists)
    assert status == 2 and len(err.splitlines()) == 1
    assert "is not the checksum recorded in" in err and "not the authors' file, not kept" in err
    assert sorted(os.listdir(lists)) == sorted([CHECKSUM_FILE, "ResNet50_train.txt"])


def test_the_evaluation_list_is_checked_against_the_projects_checksum(server, tmp_path, authors):
    base = _serve_lists(server)
    lists = tmp_path / "lists"
    status, _, err = authors("Evaluation_2000.txt", "--url_base", base, "--output_dir", lists)
    assert status == 2 and len(err.splitlines()) == 1
    assert f"is not the project's checksum {AUTHORS_LISTS['Evaluation_2000.txt']}" in err
    assert not (lists / "Evaluation_2000.txt").exists()

    # a checksum given by the user wins (e.g. a list the authors have since updated)
    given = f"Evaluation_2000.txt={_sha256(EVALUATION).upper()}"
    status, out, _ = authors("Evaluation_2000.txt", "--sha256", given, "--url_base", base, "--output_dir", lists)
    assert status == 0 and "matches the checksum given" in out
    assert (lists / "Evaluation_2000.txt").read_bytes() == EVALUATION


def test_a_cut_download_resumes_and_a_missing_branch_falls_back(server, tmp_path, authors):
    base = _serve_lists(server, "/master/datalist/ILSVRC")  # only on the second branch
    server.cuts["/master/datalist/ILSVRC/ResNet50_train.txt"] = 1
    lists = tmp_path / "lists"
    argv = ["ResNet50_train.txt", "--url_base", server.url("/main/datalist/ILSVRC"), "--url_base", base]
    status, out, _ = authors(*argv, "--output_dir", lists)
    assert status == 0, out
    assert (lists / "ResNet50_train.txt").read_bytes() == RESNET50_TRAIN
    assert [path.split("/")[1] for path, _ in server.requests] == ["main", "master", "master"]
    assert server.requests[-1][1] == f"bytes={len(RESNET50_TRAIN) // 2}-"


def test_without_a_server_one_line_says_where_to_put_the_file(tmp_path, authors):
    lists = tmp_path / "lists"
    status, _, err = authors(
        "Evaluation_2000.txt",
        "--url_base",
        f"http://127.0.0.1:{_closed_port()}/x",
        "--output_dir",
        lists,
    )
    assert status == 2 and len(err.splitlines()) == 1
    assert "without internet, download Evaluation_2000.txt from https://github.com/bmezaris/L-CAM" in err
    assert f"put it at {lists / 'Evaluation_2000.txt'}" in err


def test_a_foreign_file_in_place_is_refused_and_left_alone(tmp_path, authors):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Evaluation_2000.txt").write_text("my own list 3\n")
    status, _, err = authors("Evaluation_2000.txt", "--output_dir", lists)
    assert status == 2 and "it is not the authors' file; move it away" in err
    assert (lists / "Evaluation_2000.txt").read_text() == "my own list 3\n"


def test_a_git_lfs_pointer_is_not_taken_for_the_list(server, tmp_path):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 123\n"
    server.files["/l/VGG16_train.txt"] = pointer
    with pytest.raises(Exception, match="Git LFS pointer"):
        fetch_authors_lists(tmp_path, ["VGG16_train.txt"], url_bases=[server.url("/l")], **FAST, report=lambda _: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["Nope.txt"], "unknown list 'Nope.txt'"),
        (["--sha256", "Evaluation_2000.txt=abc"], "--sha256 expects NAME=HEX"),
        (["--sha256", "Other.txt=" + "0" * 64], "--sha256 expects NAME=HEX"),
    ],
)
def test_bad_names_and_checksums_fail_in_one_line(tmp_path, authors, argv, message):
    status, _, err = authors(*argv, "--output_dir", tmp_path)
    assert status == 2 and message in err and len(err.splitlines()) == 1
    assert parse_sha256("VGG16_train.txt=" + "A" * 64) == ("VGG16_train.txt", "a" * 64)
