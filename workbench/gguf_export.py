"""GGUF files for llama.cpp: a Hugging Face folder as one model GGUF, and steering vectors as a
llama.cpp control vector.

``write_model_gguf`` writes what llama.cpp's ``convert_hf_to_gguf.py`` writes for the families the
workbench's GGUF loader verifies (``families.gguf_verified``): its metadata keys (hyper-parameters
under ``<arch>.*``, the tokenizer under ``tokenizer.ggml.*``, the chat template), its tensor names
(``gguf.get_tensor_name_map``: ``token_embd.weight``, ``blk.N.attn_q.weight`` ...) and its tensor
layouts (Llama-type q/k rows interleaved for its rotary, Gemma-2/3 norm gains stored as ``1 + w``,
GPT-2's Conv1D weights stored ``out × in``). Types: ``f32``; ``f16`` / ``bf16`` (matrices in that
type, vectors in f32); ``q8_0`` (matrices whose rows split into 32-blocks in Q8_0, others f16,
vectors f32), as the converter does.

``write_control_vector`` writes llama.cpp's control-vector file (what ``--control-vector`` reads),
and ``control_vector_layers`` maps the workbench's addition layers onto its layer numbering. How
llama.cpp reads the file (``common/common.cpp``, ``common_control_vector_load_one``;
``src/llama-adapter.cpp``, ``llama_adapter_cvec``; ``src/models/llama.cpp``):

* every tensor must be named ``direction.<k>``, 1-D, F32, all of one width (n_embd); ``k == 0`` or an
  unparsable ``k`` makes it reject the whole file ("invalid (zero) direction tensor layer index");
* ``direction.k`` is added, at every position, to the output of block ``k`` (0-based): the graph
  calls ``build_cvec(cur, il)`` right after the block's second residual add (the ``l_out`` tensor),
  and the adapter holds no tensor for block 0. So ``direction.k`` acts on the workbench's
  ``blocks.k.hook_resid_post`` = ``blocks.{k+1}.hook_resid_pre``; valid ``k`` is ``1 … n_layers−1``;
* the metadata (``general.architecture = controlvector``, ``controlvector.model_hint``,
  ``controlvector.layer_count``) is not read by llama.cpp; repeng's ``import_gguf`` requires
  ``model_hint`` (it writes the HF ``model_type``) and writes ``layer_count`` as the number of
  direction tensors, which is what this module writes too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from . import families
from .artifacts import atomic_write_with

__all__ = [
    "GGUF_TYPES",
    "write_model_gguf",
    "add_hparams",
    "add_tensors",
    "write_control_vector",
    "control_vector_layers",
]

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32  # Q8_0 quantises rows in blocks of 32 values

# llama.cpp's pre-tokenizer names for the split rules it and transformers' GGUF reader both know,
# told apart by the split regex a ``tokenizer.json`` carries (``_pre_tokenizer``)
_PRE_BY_SPLIT = {"llama3": "llama-bpe", "qwen2": "qwen2", "tekken": "tekken", "gpt-4o": "gpt-4o"}


def _supported() -> str:
    names = [f.name for f in families.FAMILIES.values() if f.gguf and f.gguf_verified]
    return ", ".join(names)


def _check_outtype(outtype: str) -> str:
    if outtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type {outtype!r} is not one of {', '.join(GGUF_TYPES)}; pick one of those")
    return outtype


def _family(folder: Path) -> tuple[families.Family, dict]:
    """The folder's family record (one whose GGUF the loader verifies) and its ``config.json``."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json); pass one")
    config = json.loads(config_path.read_text())
    arch = (config.get("architectures") or ["?"])[0]
    record = families.FAMILIES.get(arch)
    if record is None or not (record.gguf and record.gguf_verified):
        why = f" ({record.gguf_refused})" if record is not None and record.gguf_refused else ""
        raise ValueError(
            f"{folder.name}: GGUF export does not support {arch}{why}; it supports the families whose GGUF "
            f"files the workbench verifies: {_supported()}; export a Hugging Face folder (format hf) instead"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kinds = {p.get("rope_type", "default") for p in rope.values() if isinstance(p, dict)} or {
        rope.get("rope_type", rope.get("type", "default"))
    }
    if kinds - {"default"}:
        raise ValueError(
            f"{folder.name}: rope scaling {sorted(kinds - {'default'})} is not written to GGUF here (only "
            "unscaled rotary); export a Hugging Face folder (format hf) instead"
        )
    return record, config


def write_model_gguf(folder: Path, out: Path, *, outtype: str = "f32") -> None:
    """Write the Hugging Face model ``folder`` (config, safetensors, tokenizer, chat template) as one
    GGUF file ``out`` in llama.cpp's converter layout, its matrices in ``outtype`` (``GGUF_TYPES``).
    Only the families whose GGUF files the workbench verifies are written (others: a ``ValueError``
    naming those); ``out`` appears whole or not at all."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, out = Path(folder), Path(out)
    _check_outtype(outtype)
    record, _ = _family(folder)
    arch = record.gguf
    assert arch is not None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        writer.add_type("model")
        writer.add_name(folder.name)
        writer.add_file_type(_FILE_TYPES[outtype])
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_hparams(writer, hf.config, arch)
        _add_tokenizer(writer, tokenizer, arch, _vocab_size(hf.config))
        add_tensors(writer, hf, arch, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write_with(out, write)


def _file_types() -> dict[str, int]:
    import gguf

    t = gguf.LlamaFileType
    return {"f32": t.ALL_F32, "f16": t.MOSTLY_F16, "bf16": t.MOSTLY_BF16, "q8_0": t.MOSTLY_Q8_0}


_FILE_TYPES = _file_types()


def _vocab_size(cfg) -> int:
    return int(cfg.vocab_size)


# --------------------------------------------------------------------------- hyper-parameters


def add_hparams(writer, cfg, arch: str) -> None:
    """Add to the ``gguf.GGUFWriter`` the ``<arch>.*`` keys llama.cpp's converter writes for the HF
    config ``cfg`` (and transformers' GGUF reader maps back)."""
    if arch == "gpt2":
        writer.add_context_length(cfg.n_positions)
        writer.add_block_count(cfg.n_layer)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    if getattr(cfg, "rms_norm_eps", None) is not None:
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    else:  # GPT-NeoX
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
    writer.add_rope_freq_base(float(families.rope(cfg)["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) is not False:
        writer.add_sliding_window(cfg.sliding_window)
    for key, add in (("attn_logit_softcapping", "add_attn_logit_softcapping"),
                     ("final_logit_softcapping", "add_final_logit_softcapping")):  # fmt: skip
        if getattr(cfg, key, None) is not None:
            getattr(writer, add)(float(getattr(cfg, key)))
    if getattr(cfg, "num_local_experts", None):  # (a file of this is refused by the loader: no writer path uses it)
        writer.add_expert_count(cfg.num_local_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_vocab_size(_vocab_size(cfg))


# --------------------------------------------------------------------------- tokenizer

_CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 3, 4, 5, 6  # gguf.TokenType values
_NORMAL, _UNKNOWN = 1, 2


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("GGUF export needs a fast tokenizer (tokenizer.json) in the model folder; save one")
    return json.loads(backend.to_str())


def _byte_level(spec: dict) -> bool:
    """Whether the tokenizer is byte-level (GPT-2 style: its pre-tokenizer or decoder is ByteLevel)."""
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    return '"ByteLevel"' in text


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level tokenizer: the known split regexes by name,
    SmolLM's digit split, GPT-2's own; anything else ``default`` (llama.cpp warns and uses its default)."""
    text = json.dumps(spec.get("pre_tokenizer"))
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS as splits
    except ImportError:  # another transformers: the digit and GPT-2 rules below still apply
        splits = {}
    for name, pre in _PRE_BY_SPLIT.items():
        regex = splits.get(name)
        if regex is not None and json.dumps(regex) in text:
            return pre
    if '"Split"' not in text:
        if '"individual_digits": true' in text:
            return "smollm"
        if '"use_regex": true' in text:
            return "gpt-2"
    return "default"


def _tokens(tokenizer, vocab_size: int, *, spm: bool) -> tuple[list[str], list[int]]:
    """The vocabulary by id, padded to the model's ``vocab_size`` with unused ``[PAD<i>]`` tokens, and
    llama.cpp's token types (added special → control, added plain → user-defined, ``<0xNN>`` → byte;
    in a sentencepiece-style vocabulary the unknown token → unknown, as its converter does)."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    size = max(vocab_size, max(by_id) + 1)
    added = {i: t.special for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(_CONTROL if added[i] else _USER_DEFINED)
        else:
            tokens.append(token)
            types.append(_BYTE if re.fullmatch(r"<0x[0-9A-F]{2}>", token) else _NORMAL)
    if spm and tokenizer.unk_token_id is not None and types[tokenizer.unk_token_id] != _UNUSED:
        types[tokenizer.unk_token_id] = _UNKNOWN
    return tokens, types


def _merges(spec: dict) -> list[str]:
    merges = spec["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _add_tokenizer(writer, tokenizer, arch: str, vocab_size: int) -> None:
    """``tokenizer.ggml.*``: a byte-level BPE as ``gpt2`` (tokens, types, merges, pre-tokenizer), a
    sentencepiece-style BPE (``▁`` for spaces) as ``llama`` (tokens, types, scores); the special ids,
    whether a BOS is added, the chat template."""
    spec = _tokenizer_json(tokenizer)
    kind = spec["model"]["type"]
    if kind != "BPE":
        raise ValueError(f"tokenizer model {kind!r} is not written to GGUF here (BPE only); export format hf")
    byte_level = _byte_level(spec)
    tokens, types = _tokens(tokenizer, vocab_size, spm=not byte_level)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if byte_level:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(spec))
        writer.add_token_merges(_merges(spec))
        writer.add_add_space_prefix('"add_prefix_space": true' in json.dumps(spec.get("pre_tokenizer")))
    else:
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(_spm_scores(spec, tokens))
        writer.add_add_space_prefix(_space_prefix(spec))
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    if tokenizer.chat_template:
        template = tokenizer.chat_template
        writer.add_chat_template(template if isinstance(template, str) else template.get("default", ""))


def _space_prefix(spec: dict) -> bool:
    """Whether a sentencepiece-style tokenizer puts ``▁`` before the text (Llama-2, Phi-3: yes; Gemma:
    no): a ``Prepend`` normalizer or a ``Metaspace`` pre-tokenizer whose prepend scheme is not never."""
    normalizer, pre = json.dumps(spec.get("normalizer")), json.dumps(spec.get("pre_tokenizer"))
    metaspace = '"Metaspace"' in pre and '"prepend_scheme": "never"' not in pre
    return '"Prepend"' in normalizer or metaspace


def _spm_scores(spec: dict, tokens: list[str]) -> list[float]:
    """Scores for llama.cpp's sentencepiece tokenizer, which merges the pair whose result scores
    highest: the token made by the r-th BPE merge scores −r; tokens no merge makes score below all."""
    made = {"".join(m.split(" ")): r for r, m in reversed(list(enumerate(_merges(spec))))}
    floor = -float(len(made) + 1)
    return [-float(made[t]) if t in made else floor - i for i, t in enumerate(tokens)]


# --------------------------------------------------------------------------- tensors


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order for its rotary: per head, the two rotary halves interleaved
    (transformers' GGUF reader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _layout(name: str, suffix: str, w: np.ndarray, arch: str, cfg) -> np.ndarray:
    """An HF tensor in llama.cpp's layout for ``name`` (its GGUF stem)."""
    if arch == "llama" and name.endswith(("attn_q", "attn_k")):
        heads = cfg.num_attention_heads if name.endswith("q") else cfg.num_key_value_heads
        return _llama_cpp_permute(w, heads)
    if arch in ("gemma2", "gemma3") and name.endswith("norm"):
        return w + 1.0  # llama.cpp stores Gemma's (1 + w) gains
    if arch == "gpt2" and suffix == "weight" and name.endswith(("attn_qkv", "attn_output", "ffn_up", "ffn_down")):
        return np.ascontiguousarray(w.T)  # Conv1D (in × out) to out × in
    return w


def _encode(w: np.ndarray, outtype: str) -> tuple[np.ndarray, Any]:
    """``w`` (f32) as stored for ``outtype``: (data, raw ggml type or None for a plain numpy dtype)."""
    import gguf

    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim < 2 or outtype == "f32":
        return w, None
    if outtype == "q8_0" and w.shape[-1] % Q8_BLOCK == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(w, q), q
    if outtype == "bf16":
        q = gguf.GGMLQuantizationType.BF16
        return gguf.quants.quantize(w, q), q
    return w.astype(np.float16), None  # f16, and Q8_0's fallback for rows that do not split into blocks


def add_tensors(writer, hf, arch: str, outtype: str = "f32", *, skip_unnamed: bool = False) -> None:
    """Add the HF model ``hf``'s weights to the ``gguf.GGUFWriter`` under llama.cpp's names and in
    its layouts, in ``outtype``; a weight with no GGUF name raises, unless ``skip_unnamed`` (for
    test files of families the loader refuses anyway)."""
    import gguf

    cfg = hf.config
    n_layers = cfg.n_layer if arch == "gpt2" else cfg.num_hidden_layers
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(model_arch, n_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in hf.state_dict().items():
        stem, suffix = hf_name.rsplit(".", 1)
        if tied and stem == "lm_head":
            continue  # llama.cpp writes no output.weight for tied embeddings
        name = name_map.get_name(stem)
        if name is None:
            if skip_unnamed or stem.endswith(("rotary_emb", "attn.bias", "masked_bias")):
                continue  # buffers, not weights
            raise ValueError(f"{arch}: no GGUF tensor name for {hf_name}; this checkpoint cannot be written")
        w = _layout(name, suffix, tensor.detach().float().numpy().copy(), arch, cfg)
        data, raw = _encode(w, outtype)
        writer.add_tensor(f"{name}.{suffix}", data, raw_dtype=raw)


# --------------------------------------------------------------------------- control vectors


def control_vector_layers(workbench_layers: Sequence[int], n_layers: int) -> dict[int, int]:
    """``{workbench layer L: llama.cpp direction index k}`` with ``k = L − 1``.

    The workbench's addition adds αr at ``blocks.L.hook_resid_pre``, the input of block L, which is
    the output of block L−1; llama.cpp adds ``direction.k`` to the output of block k (see the module
    docs). Negative L counts from the end. llama.cpp has no slot before block 1's input, so L = 0
    (the embeddings) and L = 1 (block 0's output, ``direction.0``, which it rejects) are refused."""
    mapping: dict[int, int] = {}
    for layer in workbench_layers:
        resolved = layer + n_layers if layer < 0 else layer
        if not 0 <= resolved < n_layers:
            raise ValueError(f"layer {layer} is outside the model's {n_layers} layers (0 … {n_layers - 1})")
        if resolved < 2:
            raise ValueError(
                f"layer {layer}: llama.cpp's control vectors cannot add at resid_pre of layer {resolved} "
                f"(its first slot, direction.1, is the output of block 1 = resid_pre of layer 2); "
                + (f"use a layer in 2 … {n_layers - 1}" if n_layers > 2 else "this model has no such layer")
            )
        mapping[resolved] = resolved - 1
    return mapping


def write_control_vector(vectors: Mapping[int, Float[Tensor, " d_model"]], out: Path, *, model_hint: str) -> None:
    """Write llama.cpp's control-vector GGUF ``out``: one F32 ``direction.<k>`` per item of ``vectors``
    (``{llama.cpp layer k ≥ 1: the vector added to block k's output}``, e.g. α·r at the keys of
    :func:`control_vector_layers`), ``general.architecture = controlvector``,
    ``controlvector.model_hint`` (repeng writes the HF ``model_type``) and ``controlvector.layer_count``
    (the number of directions, as repeng writes it). ``out`` appears whole or not at all."""
    import gguf

    if not vectors:
        raise ValueError("no vectors to write; pass {llama.cpp layer: vector}")
    if not model_hint:
        raise ValueError("model_hint is empty; pass the model's type (config.json's model_type, e.g. 'llama')")
    rows: dict[int, np.ndarray] = {}
    for k, v in sorted(vectors.items()):
        if not isinstance(k, int) or k < 1:
            raise ValueError(
                f"control-vector layer {k!r}: llama.cpp reads direction.k for k ≥ 1 only; "
                "map workbench layers with control_vector_layers"
            )
        row = torch.as_tensor(v).detach().to("cpu", torch.float32).numpy()
        if row.ndim != 1 or not np.isfinite(row).all():
            raise ValueError(f"vector for layer {k} must be 1-D and finite (shape {tuple(row.shape)}); pass [d_model]")
        rows[k] = np.ascontiguousarray(row)
    if len({r.shape[0] for r in rows.values()}) != 1:
        raise ValueError(f"vectors differ in width {sorted({r.shape[0] for r in rows.values()})}; pass one model's")

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(rows))
        for k, row in rows.items():
            writer.add_tensor(f"direction.{k}", row)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write_with(Path(out), write)
