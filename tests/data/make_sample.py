"""Cut the committed real-image sample (tests/data/) out of the three full archives.

    python tests/data/make_sample.py [--archives ../shared/data] [--out tests/data]

Files are copied byte for byte (no re-encoding) into the archives' own layouts, chosen by a fixed
rule so that a rerun writes identical bytes (tests/test_sample_data.py checks this when the full
archives are present):

* neu-steel: the first 6 images per class, file names sorted as strings;
* magnetic-tile: the first 16 MT_Free images and the first 4 of each defect type, sorted, each
  with its mask (same stem, .png), and the upstream README.md (the dataset's terms of use);
* deeppcb: the first 2 pairs of PCBData/trainval.txt and of PCBData/test.txt (test image,
  template, box file), those 4 lines as the split lists, and README.upstream.md.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
ARCHIVES = {  # name -> sha256 (../shared/data/README.md)
    "neu-steel.tar.gz": "811f17755d04531bf6341da7f693a3e77e36bb631d10eea291138420b357d9c8",
    "magnetic-tile.tar.gz": "310d9522e16807643007e7e653cca5a83ff391f1530682cc8ca1f12027d1e539",
    "deeppcb.tar.gz": "c6849c84b10fcdbda5dd83f205e6a5186c2e6032adcd51e8c761326cf076c676",
}
NEU_PER_CLASS = 6
MT_FREE, MT_PER_DEFECT = 16, 4
PCB_PAIRS_PER_LIST = 2


def _first_per_folder(names: list[str], suffix: str, count) -> list[str]:
    """The first ``count(folder)`` names ending in ``suffix`` of each folder, names sorted as strings."""
    by_folder: dict[str, list[str]] = {}
    for name in sorted(n for n in names if n.endswith(suffix)):
        by_folder.setdefault(str(PurePosixPath(name).parent), []).append(name)
    return [n for folder, files in sorted(by_folder.items()) for n in files[: count(folder)]]


def select_neu(names: list[str], read) -> dict[str, bytes]:
    return {n: read(n) for n in _first_per_folder(names, ".jpg", lambda folder: NEU_PER_CLASS)}


def select_magnetic_tile(names: list[str], read) -> dict[str, bytes]:
    images = _first_per_folder(names, ".jpg", lambda folder: MT_FREE if "/MT_Free/" in f"{folder}/" else MT_PER_DEFECT)
    chosen = [n for img in images for n in (img, img[: -len(".jpg")] + ".png")]
    return {n: read(n) for n in [*chosen, "magnetic-tile/README.md"]}


def select_deeppcb(names: list[str], read) -> dict[str, bytes]:
    out = {"deeppcb/README.upstream.md": read("deeppcb/README.upstream.md")}
    for split_list in ("trainval.txt", "test.txt"):
        lines = read(f"deeppcb/PCBData/{split_list}").decode().splitlines()[:PCB_PAIRS_PER_LIST]
        out[f"deeppcb/PCBData/{split_list}"] = "".join(f"{line}\n" for line in lines).encode()
        for line in lines:
            image, boxes = line.split()
            stem = f"deeppcb/PCBData/{image[: -len('.jpg')]}"
            for name in (f"{stem}_test.png", f"{stem}_temp.png", f"deeppcb/PCBData/{boxes}"):
                out[name] = read(name)
    return out


SELECT = {"neu-steel.tar.gz": select_neu, "magnetic-tile.tar.gz": select_magnetic_tile, "deeppcb.tar.gz": select_deeppcb}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cut_sample(archives: Path, out: Path) -> list[Path]:
    """Write the sample under ``out`` (replacing the three dataset folders); return the files written."""
    written = []
    for name, sha in ARCHIVES.items():
        path = archives / name
        if not path.is_file():
            raise SystemExit(f"{path}: archive not found; pass --archives <folder holding {', '.join(ARCHIVES)}>")
        if sha256_file(path) != sha:
            raise SystemExit(f"{path}: sha256 differs from {sha}; this is not the archive the sample was cut from")
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            files = SELECT[name](sorted(members), lambda n: tar.extractfile(members[n]).read())
        top = out / name.removesuffix(".tar.gz")
        shutil.rmtree(top, ignore_errors=True)
        for rel, data in sorted(files.items()):
            dest = out / rel  # rel comes from our own selection of regular-file member names
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archives", type=Path, default=HERE.parents[2] / "shared" / "data",
                        help="folder holding the three full archives (default: ../shared/data beside the project)")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write the sample (default: tests/data)")
    args = parser.parse_args(argv)
    written = cut_sample(args.archives, args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"{len(written)} files, {total / 1e6:.2f} MB under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
