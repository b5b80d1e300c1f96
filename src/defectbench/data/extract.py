"""Safe, atomic archive extraction (tar, tar.gz/bz2/xz, zip).

Every member is checked *before* it is written: absolute paths, ``..`` components, links whose
target leaves the extraction directory, and device/FIFO members are refused with a one-line
:class:`~defectbench.runtime.DefectbenchError`. Extraction goes into a temporary sibling
directory that is renamed into place only when every member was written, so an interrupted or
refused extraction never leaves a directory that looks complete.

>>> import io, tarfile, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with tarfile.open(d / "a.tar", "w") as tar:
...     info = tarfile.TarInfo("top/hello.txt"); data = b"hi"; info.size = len(data)
...     tar.addfile(info, io.BytesIO(data))
>>> out = safe_extract(d / "a.tar", d / "out")
>>> (out / "top" / "hello.txt").read_bytes()
b'hi'
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from defectbench.runtime import DefectbenchError, new_temp_dir

log = logging.getLogger("defectbench")

# What truncated/corrupt archives raise (not generic OSError: a full disk is not a corrupt archive).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


def check_member_name(archive: Path, name: str) -> PurePosixPath:
    """Return the member's relative path, or raise if it is absolute or climbs out with ``..``."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise DefectbenchError(f"{archive}: member {name!r} has an absolute path; refusing to extract this archive")
    rel = PurePosixPath(norm)
    if ".." in rel.parts:
        raise DefectbenchError(f"{archive}: member {name!r} contains '..' (path traversal); refusing to extract this archive")
    return rel


def _check_link(archive: Path, member_rel: PurePosixPath, link: str, *, hard: bool) -> None:
    """A symlink target is relative to the member's directory, a hardlink's to the archive root."""
    if link.startswith("/"):
        raise DefectbenchError(f"{archive}: link {str(member_rel)!r} -> {link!r} points outside the target; refusing to extract")
    base = PurePosixPath() if hard else member_rel.parent
    depth = 0
    for part in (base / link).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise DefectbenchError(
                    f"{archive}: link {str(member_rel)!r} -> {link!r} points outside the target; refusing to extract"
                )
        elif part not in (".", ""):
            depth += 1


def _extract_tar(archive: Path, dest: Path) -> int:
    count = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:  # streaming: one pass over (possibly compressed) data
            rel = check_member_name(archive, member.name)
            if member.issym() or member.islnk():
                _check_link(archive, rel, member.linkname, hard=member.islnk())
            elif not (member.isfile() or member.isdir()):
                raise DefectbenchError(f"{archive}: member {member.name!r} is a device or FIFO; refusing to extract")
            # The 'data' filter repeats these checks inside the stdlib (defence in depth) and drops
            # permissions/ownership we do not want from foreign archives.
            tar.extract(member, dest, filter="data")
            count += 1
    return count


def _extract_zip(archive: Path, dest: Path) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            check_member_name(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DefectbenchError(f"{archive}: member {info.filename!r} is a symbolic link; refusing to extract")
        for info in infos:
            zf.extract(info, dest)
            count += 1
    return count


def archive_kind(path: Path) -> str:
    """'tar' (any compression) or 'zip', by content; raise for anything else."""
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError as exc:
        raise DefectbenchError(f"{path}: cannot read archive ({exc.strerror or exc}); check the path") from None
    raise DefectbenchError(f"{path}: not a tar or zip archive (or truncated); download it again or fix source.path")


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract ``archive`` into ``target`` (which must not exist yet), atomically.

    Members go into a temporary directory beside ``target``; on success it is renamed to
    ``target``; on any error (refused member, truncated or corrupt archive) it is removed and a
    one-line DefectbenchError names the archive.
    """
    archive, target = Path(archive), Path(target)
    kind = archive_kind(archive)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_dir(target.parent, f".{target.name}.partial-")
    try:
        n = _extract_tar(archive, tmp) if kind == "tar" else _extract_zip(archive, tmp)
        os.replace(tmp, target)
    except DefectbenchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except tarfile.FilterError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DefectbenchError(f"{archive}: unsafe member refused ({exc}); refusing to extract this archive") from None
    except _READ_ERRORS as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DefectbenchError(
            f"{archive}: archive is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "download it again"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %d members of %s into %s", n, archive.name, target)
    return target


def single_top_dir(path: Path) -> Path:
    """The layout root of an extracted archive: its only top-level directory if it has exactly
    one visible entry and that is a directory (``neu-steel/...``), else ``path`` itself."""
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return path
