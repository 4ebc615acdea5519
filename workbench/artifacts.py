"""Saving things so that a crash never leaves a half-written file behind, and saying where they go.

Every artifact is written to a temporary name in the same folder and then ``os.replace``-d into
place, which is atomic on POSIX. Tensors go to safetensors (no pickle) with a JSON sidecar for
provenance. The cache root is ``$REFUSAL_WORKBENCH_CACHE`` or ``~/.cache/refusal-workbench``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "cache_dir",
    "cache_root",
    "check_writable_dir",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_with",
    "save_tensors",
    "load_tensors",
    "library_versions",
    "sha256_file",
    "sha256_text",
    "Manifest",
]

CACHE_ENV = "REFUSAL_WORKBENCH_CACHE"


def cache_dir(*parts: str) -> Path:
    """The workbench cache folder (created), or a subfolder of it."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the cache folder {path} ({err.strerror}); set {CACHE_ENV} to a writable folder"
        ) from None
    return path


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "refusal-workbench")


def check_writable_dir(path: str | Path, what: str) -> None:
    """Raise a ValueError unless ``path`` is a folder this process can write, or can be created as
    one: found before a long job, not when its first file is written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; pass a folder (or move the file)")
    existing = path
    while not existing.exists():  # the first folder that exists is the one that must be writable
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {existing} is a file; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable ({existing} is read-only); pass a writable folder")


def _atomic(path: Path, write) -> None:
    """Call ``write(tmp)`` to fill a new temporary file beside ``path``, then move it into place with the
    usual permissions (0o666 & ~umask). If anything fails, ``path`` is unchanged and ``tmp`` is gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0o22)  # the only way to read it
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_with(path: str | Path, write) -> None:
    """Atomically create ``path`` with ``write(tmp)``, which fills a temporary file beside it (for
    writers that take a file name, e.g. ``gguf.GGUFWriter``); see ``_atomic``."""
    _atomic(Path(path), write)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``path`` (``.safetensors``) and ``path.with_suffix('.json')`` atomically.

    The sidecar is written last, so a readable sidecar means the tensors are complete.
    """
    path = Path(path)
    sidecar = json.dumps(metadata, indent=2, sort_keys=True)  # first: metadata that is not JSON changes nothing
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp))  # straight to the file: no second copy in memory
    atomic_write_text(path.with_suffix(".json"), sidecar)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`save_tensors`."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.exists() or not sidecar.exists():
        raise FileNotFoundError(f"{path} or its sidecar {sidecar.name} is missing; save it with save_tensors()")
    return load_file(str(path)), json.loads(sidecar.read_text())


def library_versions() -> dict[str, str]:
    """Versions of the libraries that change numbers, for provenance."""
    out = {}
    for name in ("torch", "transformer-lens", "transformers", "refusal-workbench"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def cpu_info() -> tuple[str, set[str]] | None:
    """This CPU's model name and flags (``avx2``, ``avx512_bf16``...) from the first core's block of
    ``/proc/cpuinfo``; None where that cannot be read (not Linux)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return None
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in block.splitlines() if ":" in line)}
    return info.get("model name", ""), set(info.get("flags", "").split())


def sha256_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> str:
    """The file's sha256, streamed in ``chunk``-byte blocks into one reused buffer (never the whole file)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Manifest:
    """A run's record, rewritten atomically after every stage: fixed facts (config, versions,
    seeds, prompt hashes) plus, per finished stage, its wall time and the sha256 of its files.

    Reopening an existing manifest keeps the stages already recorded, so a resumed run shows
    which stages it reused (``"reused": true``) and which it computed.
    """

    def __init__(self, path: str | Path, *, root: str | Path | None = None, **facts: Any):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent  # files under it: relative names
        old = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data: dict[str, Any] = {**facts, "stages": old.get("stages", {})}
        self._write()

    def stage(self, name: str, seconds: float, files: Sequence[str | Path] = (), *, reused: bool = False) -> None:
        old = self.data["stages"].get(name)
        if reused and old is not None:  # same files as when they were made: skip re-hashing
            old.update(seconds=seconds, reused=True)
            return self._write()
        files = [Path(f).resolve() for f in files if Path(f).exists()]
        root = self.root.resolve()
        name_of = lambda f: str(f.relative_to(root)) if f.is_relative_to(root) else str(f)  # noqa: E731
        self.data["stages"][name] = {
            "seconds": seconds,
            "reused": reused,
            "files": {name_of(f): sha256_file(f) for f in files},
        }
        self._write()

    def mismatched(self, name: str, files: Sequence[str | Path]) -> list[Path]:
        """Those of ``files`` whose sha256 differs from the one recorded for stage ``name`` (files
        not recorded pass): a cached artifact replaced or damaged since its stage wrote it."""
        recorded = self.data["stages"].get(name, {}).get("files", {})
        root = self.root.resolve()
        out = []
        for f in map(Path, files):
            resolved = f.resolve()
            key = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
            if key in recorded and sha256_file(f) != recorded[key]:
                out.append(f)
        return out

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str))
