"""Content fingerprints of local models: what a local folder's or GGUF file's run key is made of.

``content_key(path)`` is ``<name>-<12 hex>``: the folder's name (or the GGUF file's stem) and the
start of :func:`content_hash`, a sha256 over the name and sha256 of each of :func:`model_files`.
New weights, tokenizer or config saved at the same path give a new key, so no stage computed from
the old ones is reused; the same files at another path give the same key.

Each file's sha256 is read in 8 MiB blocks (never a whole file in memory) and cached in
``<cache>/hashes/``, one JSON entry per resolved path, written atomically. An entry is reused only
while the file's size, ``mtime_ns``, ``ctime_ns`` and inode all still match: a rewrite changes
mtime; a copy that restores the old mtime (``cp -p``, ``touch -d``) changes ctime; a replacement
renamed into place (``rsync``, ``save_pretrained``) changes the inode. The device number is left
out: it can change when a network or overlay file system is remounted, which only the path needs
to survive. An entry recorded within :data:`RACY_NS` of the file's mtime is not trusted (git's
"racy" rule): a write in the same timestamp tick would keep the mtime, so that file is hashed again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from pathlib import Path

from .artifacts import atomic_write_text, cache_dir, sha256_file, sha256_text

__all__ = ["content_key", "content_hash", "model_files", "file_sha256", "RACY_NS", "HASH_DIR"]

HASH_DIR = "hashes"  # the cache subfolder of the per-file entries
RACY_NS = 2_000_000_000  # timestamps tick in 1-10 ms on Linux, 2 s on FAT: beyond both
_BLOCK = 8 << 20
# In a model folder every top-level file counts but these (hidden files and documentation): a file
# the loader reads and a list of weight names forgot would leave the key stale; an extra file costs
# one hash. Subfolders (``checkpoint-*/``) are not read by ``from_pretrained`` and do not count.
_NOT_MODEL = (".*", "*.md", "LICENSE*", "LICENCE*", "NOTICE*", "USE_POLICY*")
# Beside a GGUF file, transformers also reads the folder's tokenizer and generation configs.
_GGUF_SIDECARS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template*",
)


def content_key(path: str | Path) -> str:
    """``<folder name or GGUF stem>-<first 12 hex of content_hash>``: the run key of a local model."""
    path = _absolute(path)
    name = path.stem if path.suffix == ".gguf" else path.name
    return f"{name}-{content_hash(path)[:12]}"


def content_hash(path: str | Path) -> str:
    """sha256 over each model file's name (relative to the folder) and sha256, in name order."""
    path = _absolute(path)
    base = path.parent if path.suffix == ".gguf" else path
    lines = [f"{f.relative_to(base).as_posix()}\0{file_sha256(f)}\n" for f in model_files(path)]
    return sha256_text("".join(lines))


def _absolute(path: str | Path) -> Path:
    # not resolve(): a GGUF that is a symlink into the Hugging Face cache keeps its name and suffix
    return Path(os.path.abspath(Path(path).expanduser()))


def model_files(path: str | Path) -> list[Path]:
    """The files that define the model at ``path``, sorted: a GGUF file and the tokenizer/config
    files beside it, or a folder's top-level files except hidden ones and documentation."""
    path = Path(path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist; check the path given as the model")
        siblings = [f for f in path.parent.iterdir() if _matches(f.name, _GGUF_SIDECARS) and f.suffix != ".gguf"]
        return [path, *sorted(f for f in siblings if f.is_file())]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a model folder nor a .gguf file; check the path given as the model")
    files = sorted(f for f in path.iterdir() if f.is_file() and not _matches(f.name, _NOT_MODEL))
    if not files:
        raise FileNotFoundError(f"model folder {path} holds no files; pass a folder with config.json and weights")
    return files


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def file_sha256(path: str | Path) -> str:
    """The file's sha256, from its cache entry when size, mtime, ctime and inode still match it,
    else streamed from the file and recorded (see module docs)."""
    path = Path(path).resolve()
    entry_file = cache_dir(HASH_DIR) / f"{sha256_text(str(path))[:32]}.json"
    before = _stat(path)
    cached = _read_entry(entry_file)
    if cached is not None and cached.get("path") == str(path) and _trusted(cached, before):
        return cached["sha256"]
    recorded_ns = time.time_ns()
    digest = sha256_file(path, chunk=_BLOCK)
    if _stat(path) != before:
        raise ValueError(f"{path} changed while it was being hashed; wait until it is fully written, then run again")
    entry = {"path": str(path), **before, "recorded_ns": recorded_ns, "sha256": digest}
    atomic_write_text(entry_file, json.dumps(entry, indent=1))
    return digest


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _read_entry(entry_file: Path) -> dict | None:
    try:
        entry = json.loads(entry_file.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: hash again
        return None
    return entry if isinstance(entry, dict) else None


def _trusted(entry: dict, now: dict[str, int]) -> bool:
    same = all(entry.get(k) == v for k, v in now.items())
    return same and isinstance(entry.get("recorded_ns"), int) and now["mtime_ns"] < entry["recorded_ns"] - RACY_NS
