"""What content-keyed run folders cost: hashing a model folder, and a 7B-sized file, cold and warm.

For the model (``--model``: the organism's installed folder by default, or any folder / ``.gguf``)
and for a file of ``--big-gb`` GB of random, non-sparse bytes written to ``--big-dir`` (and deleted
afterwards), it times:

* ``cold_s``: ``fingerprints.content_hash`` with an empty hash cache, the files evicted from the
  page cache first (``posix_fadvise(DONTNEED)``), so they are read from the disk;
* ``warm_s``: the same call again, every file's cache entry reused (size, mtime, ctime, inode match);
* ``read_s``: reading the evicted files without hashing (the disk's share, a floor under any load);
* ``load_s`` (the model only): ``load_model`` of the folder on the CPU, fp32, hash cache warm;
* ``sha256_gb_per_s``: sha256 alone on bytes in memory, the bound when the disk is not.

The hash cache is a temporary folder, never the workbench's. ``peak_rss_mb`` shows the hashing is
streamed (it stays far below the file's size). The last stdout line is one JSON object.

    .venv/bin/python benchmarks/hash_cost.py [--model organism] [--big-gb 15] [--big-dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from workbench import fingerprints
from workbench.artifacts import CACHE_ENV
from workbench.models import load_model
from workbench.organism import RECIPES, organism_dir

_BLOCK = 64 << 20


def model_folder(spec: str) -> Path:
    """The folder (or GGUF file) behind ``spec``: an organism's installed folder, or the path itself."""
    return organism_dir(RECIPES[spec]) if spec in RECIPES else Path(spec).expanduser()


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(paths: list[Path]) -> None:
    buffer = memoryview(bytearray(8 << 20))
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 4)


def hash_cost(path: Path, hash_cache: Path) -> dict:
    """cold / warm hash and plain read times of the model files at ``path`` (see module docs)."""
    files = fingerprints.model_files(path)
    os.environ[CACHE_ENV] = str(hash_cache)
    evict(files)
    read_s = timed(lambda: read_all(files))
    evict(files)
    cold_s = timed(lambda: fingerprints.content_hash(path))
    warm_s = timed(lambda: fingerprints.content_hash(path))
    size = sum(f.stat().st_size for f in files)
    return {
        "path": str(path),
        "files": len(files),
        "bytes": size,
        "cold_s": cold_s,
        "cold_gb_per_s": round(size / 1e9 / cold_s, 2) if cold_s else None,
        "warm_s": warm_s,
        "read_s": read_s,
        "key": fingerprints.content_key(path),
    }


def sha256_rate(mb: int = 256) -> float:
    """sha256's own speed here in GB/s, on random bytes already in memory (no disk)."""
    data = memoryview(os.urandom(mb << 20))
    digest = hashlib.sha256()
    start = time.perf_counter()
    for i in range(0, len(data), 8 << 20):
        digest.update(data[i : i + (8 << 20)])
    return round(len(data) / 1e9 / (time.perf_counter() - start), 2)


def write_big(path: Path, gb: float) -> None:
    """``gb`` GB of random bytes: one random 64 MiB block, each copy stamped with its index, so no
    two blocks are equal and nothing is sparse."""
    block = bytearray(os.urandom(_BLOCK))
    left = int(gb * 1e9)
    with open(path, "wb") as fh:
        index = 0
        while left > 0:
            block[:8] = index.to_bytes(8, "little")
            fh.write(block[: min(left, _BLOCK)])
            left -= _BLOCK
            index += 1
        fh.flush()
        os.fsync(fh.fileno())
    # as a model saved a while ago: a file hashed within 2 s of its mtime is hashed again (RACY_NS)
    old = path.stat().st_mtime_ns - 60 * 10**9
    os.utime(path, ns=(old, old))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism", help="organism, organism-graded, a folder or a .gguf file")
    parser.add_argument("--big-gb", type=float, default=15.0, help="size of the big file in GB (0: skip it)")
    parser.add_argument("--big-dir", default=tempfile.gettempdir(), help="where the big file is written")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    folder = model_folder(args.model)  # before the hash cache is moved: the organism lives in the real cache
    out: dict = {"cpu_count": os.cpu_count(), "sha256_gb_per_s": sha256_rate()}
    saved = os.environ.get(CACHE_ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="wb-hash-cost-") as hash_cache:
            out["model"] = {"spec": args.model, **hash_cost(folder, Path(hash_cache) / "model")}
            out["model"]["load_s"] = timed(lambda: load_model(str(folder), device="cpu", dtype="float32"))
            if args.big_gb > 0:
                with tempfile.TemporaryDirectory(prefix="wb-hash-cost-", dir=args.big_dir) as big_dir:
                    big = Path(big_dir) / "big-model.gguf"
                    out["big_write_s"] = timed(lambda: write_big(big, args.big_gb))
                    out["big"] = hash_cost(big, Path(hash_cache) / "big")
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if not args.json:
        for name in ("model", "big"):
            if name in out:
                r = out[name]
                gb = r["bytes"] / 1e9
                print(f"{name}: {gb:.2f} GB in {r['files']} files, cold {r['cold_s']} s, warm {r['warm_s']} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
