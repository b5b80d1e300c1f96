"""Data sources: URL (local HTTP server on 127.0.0.1), local archive, directory, pip package."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from conftest import SAMPLE, make_tar, save_image
from defectbench.data.sources import download_url, fetch_dataset, pip_package_root, sha256_file
from defectbench.runtime import DefectbenchError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


NEU_SAMPLE_IMAGES = 36  # tests/data/neu-steel: 6 classes x 6 images


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory) -> tuple[Path, str]:
    """A small real tar.gz: the committed NEU sample (``neu-steel/<class>/*.jpg``), packed."""
    out = tmp_path_factory.mktemp("small") / "neu-small.tar.gz"
    return out, make_tar(SAMPLE / "neu-steel", out)


class _Server:
    """Serves one payload with Range support; can cut the first transfer off half way or
    corrupt the bytes. Records the Range headers it received."""

    def __init__(self, payload: bytes, *, cut_first: bool = False, corrupt: bool = False, status: int = 200):
        self.payload, self.cut_first, self.corrupt, self.status = payload, cut_first, corrupt, status
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                if outer.status != 200:
                    self.send_error(outer.status)
                    return
                data = outer.payload
                if outer.corrupt:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut_first and len(outer.ranges) == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/neu-small.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"defect" * 1000)
    assert sha256_file(p, chunk=7) == hashlib.sha256(b"defect" * 1000).hexdigest()


def test_url_download_verified_and_atomic(tmp_path, small_archive):
    archive, sha = small_archive
    with _Server(archive.read_bytes()) as srv:
        out = download_url(srv.url, tmp_path / "dl" / "a.tar.gz", sha, backoff=0.01)
    assert out.read_bytes() == archive.read_bytes()
    assert srv.ranges == [None]
    assert not list((tmp_path / "dl").glob("*.part"))


def test_url_download_resumes_after_cut_transfer(tmp_path, small_archive):
    archive, sha = small_archive
    payload = archive.read_bytes()
    with _Server(payload, cut_first=True) as srv:
        out = download_url(srv.url, tmp_path / "a.tar.gz", sha, backoff=0.01)
    assert sha256_file(out) == sha
    # the second request asked only for the missing second half
    assert srv.ranges[0] is None
    assert srv.ranges[1] == f"bytes={len(payload) // 2}-"
    assert len(srv.ranges) == 2


def test_url_wrong_bytes_is_a_checksum_error_and_leaves_nothing(tmp_path, small_archive):
    archive, sha = small_archive
    with _Server(archive.read_bytes(), corrupt=True) as srv:
        with pytest.raises(DefectbenchError) as exc:
            download_url(srv.url, tmp_path / "a.tar.gz", sha, backoff=0.01)
    msg = _one_line(exc)
    assert "sha256 mismatch" in msg and srv.url in msg
    assert list(tmp_path.iterdir()) == []


def test_url_http_error_is_one_line(tmp_path, small_archive):
    _, sha = small_archive
    with _Server(b"", status=404) as srv:
        with pytest.raises(DefectbenchError) as exc:
            download_url(srv.url, tmp_path / "a.tar.gz", sha, backoff=0.01)
    assert "HTTP 404" in _one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_fetch_url_source_extracts_and_writes_marker(tmp_path, small_archive):
    archive, sha = small_archive
    with _Server(archive.read_bytes()) as srv:
        rec = fetch_dataset("neu", {"kind": "url", "url": srv.url, "sha256": sha},
                            tmp_path / "resources/datasets/neu/.fetched.json", workdir=tmp_path, backoff=0.01)
    marker = json.loads((tmp_path / "resources/datasets/neu/.fetched.json").read_text())
    assert marker == json.loads(json.dumps(rec))
    assert marker["sha256"] == sha and marker["kind"] == "url"
    # single top-level folder neu-steel/ is the layout root; paths relative to the project root
    assert marker["root"] == f"resources/extracted/{sha[:16]}/neu-steel"
    assert len(list((tmp_path / marker["root"]).rglob("*.jpg"))) == NEU_SAMPLE_IMAGES


def test_fetch_archive_source_extracted_once_and_shared(tmp_path, small_archive):
    archive, sha = small_archive
    src = {"kind": "archive", "path": str(archive), "sha256": sha}
    rec = fetch_dataset("a", src, tmp_path / "m.json", workdir=tmp_path)
    root = tmp_path / rec["root"]
    assert len(list(root.glob("*/*.jpg"))) == NEU_SAMPLE_IMAGES and rec["sha256"] == sha
    stamp = (root / "crazing").stat().st_mtime_ns
    # a second dataset entry using the same archive (e.g. another MVTec category) reuses it
    rec2 = fetch_dataset("b", src, tmp_path / "m2.json", workdir=tmp_path)
    assert rec2["root"] == rec["root"] and (root / "crazing").stat().st_mtime_ns == stamp
    assert len([p for p in (tmp_path / "resources" / "extracted").iterdir() if p.is_dir()]) == 1


def test_archive_relative_path_resolves_against_workdir(tmp_path, small_archive):
    archive, sha = small_archive
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.tar.gz").write_bytes(archive.read_bytes())
    rec = fetch_dataset("x", {"kind": "archive", "path": "data/x.tar.gz", "sha256": sha}, tmp_path / "m.json", workdir=tmp_path)
    assert rec["archive"] == "data/x.tar.gz"


def test_archive_wrong_checksum_leaves_nothing(tmp_path, small_archive):
    archive, sha = small_archive
    wrong = "0" * 64
    marker = tmp_path / "resources/datasets/x/.fetched.json"
    with pytest.raises(DefectbenchError) as exc:
        fetch_dataset("x", {"kind": "archive", "path": str(archive), "sha256": wrong}, marker, workdir=tmp_path)
    msg = _one_line(exc)
    assert str(archive) in msg and "sha256 mismatch" in msg and "datasets.x.source.sha256" in msg
    assert not marker.exists()
    assert not (tmp_path / "resources" / "extracted").exists()  # checked before anything is extracted


def test_truncated_archive_is_refused_and_leaves_nothing(tmp_path, small_archive):
    archive, _ = small_archive
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    marker = tmp_path / "resources/datasets/x/.fetched.json"
    with pytest.raises(DefectbenchError) as exc:  # the checksum is of the truncated file itself
        fetch_dataset("x", {"kind": "archive", "path": str(cut), "sha256": sha256_file(cut)}, marker, workdir=tmp_path)
    msg = _one_line(exc)
    assert str(cut) in msg and "truncated or corrupt" in msg
    assert not marker.exists()
    # no extracted or partially extracted directory (only the lock file remains)
    assert [p.name for p in (tmp_path / "resources" / "extracted").iterdir() if p.is_dir()] == []


def test_missing_archive_and_missing_sha(tmp_path):
    with pytest.raises(DefectbenchError, match="archive not found"):
        fetch_dataset("x", {"kind": "archive", "path": "nope.tar.gz", "sha256": "a" * 64}, tmp_path / "m.json", workdir=tmp_path)
    with pytest.raises(DefectbenchError, match=r"datasets\.x\.source\.sha256: required"):
        fetch_dataset("x", {"kind": "archive", "path": "nope.tar.gz"}, tmp_path / "m.json", workdir=tmp_path)
    assert not (tmp_path / "m.json").exists()


def test_directory_source(tmp_path):
    save_image(tmp_path / "mydata" / "good" / "0.png")
    rec = fetch_dataset("d", {"kind": "directory", "path": "mydata"}, tmp_path / "m.json", workdir=tmp_path)
    assert rec["root"] == "mydata"
    with pytest.raises(DefectbenchError) as exc:
        fetch_dataset("d", {"kind": "directory", "path": "missing"}, tmp_path / "m2.json", workdir=tmp_path)
    assert "directory not found" in _one_line(exc)
    assert not (tmp_path / "m2.json").exists()


def test_pip_source_elpv_verified_against_record(tmp_path):
    root, info = pip_package_root("elpv-dataset")
    assert (root / "data" / "labels.csv").is_file()
    assert info["files_verified"] >= 2624  # every image checked against the wheel's RECORD
    rec = fetch_dataset("elpv", {"kind": "pip", "package": "elpv-dataset"}, tmp_path / "m.json", workdir=tmp_path)
    assert Path(rec["root"]) == root and rec["version"] == info["version"]


def test_pip_source_missing_package(tmp_path):
    with pytest.raises(DefectbenchError) as exc:
        fetch_dataset("e", {"kind": "pip", "package": "no-such-defect-data"}, tmp_path / "m.json", workdir=tmp_path)
    assert "not installed" in _one_line(exc)

