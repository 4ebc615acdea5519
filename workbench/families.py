"""One record per model family: everything the workbench knows about a Hugging Face architecture.

A :class:`Family` says, for one architecture (``config.json``'s ``architectures[0]``, which the
loader copies into TL's ``cfg.original_architecture``):

* how a local folder's TransformerLens config is built (``tl_cfg``: the workbench's own mapping,
  or ``None`` for TL's ``convert_hf_model_config``);
* where its norms sit (``norm``: ``pre``, ``sandwich`` or ``post``);
* whether the fast paths may engage (``fast_paths``: on the tested allow-list, a tiny model of it in
  ``tests/test_families.py``) and why the fast attention never runs on it (``attention_excluded``);
* the parameters that write into the residual stream, in its Hugging Face names and layout
  (``residual_writers``: what weight orthogonalization edits when an intervention is exported);
* its GGUF side: llama.cpp's architecture name (``gguf``), the key transformers' GGUF reader files
  it under where that differs (``gguf_reader``), and whether a GGUF of it is verified here
  (``gguf_verified``) or refused, and why (``gguf_refused``).

:data:`FAMILIES` holds them, keyed by architecture; ``models.OWN_MAPPINGS``,
``fastpath.TESTED_FAMILIES``, the fast attention's exclusions, ``hub.GGUF_VERIFIED`` and the
GGUF renames, and the norm placement that ``interventions`` and ``doctor`` read are all derived
from it. The module imports nothing from the workbench and needs neither torch nor TransformerLens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Family",
    "FAMILIES",
    "family",
    "norm_placement",
    "own_mappings",
    "fast_path_families",
    "attention_excluded",
    "gguf_verified",
    "gguf_renames",
    "hf_activation",
    "Writer",
    "residual_writers",
]

NormPlacement = Literal["pre", "sandwich", "post"]
CfgBuilder = Callable[[Any, str], dict]  # (Hugging Face config, architecture) -> TL config dict
# (Hugging Face parameter name with "*" for the layer index, the axis that is d_model). A ``.bias``
# entry is optional (written where the checkpoint has it); every other entry must exist.
Writer = tuple[str, int]


@dataclass(frozen=True)
class Family:
    """What the workbench knows about one Hugging Face architecture (see the module docs)."""

    architecture: str  # the HF class name: config.json's architectures[0], TL's original_architecture
    name: str  # for people
    norm: NormPlacement = "pre"
    tl_cfg: CfgBuilder | None = None  # the workbench's own TL config for a local folder; None: TL's
    fast_paths: bool = False  # on the fast paths' tested allow-list (tests/test_families.py)
    attention_excluded: str | None = None  # why the fast attention never runs on this family
    gguf: str | None = None  # llama.cpp's general.architecture for it
    gguf_reader: str | None = None  # transformers' GGUF reader key, where it differs from ``gguf``
    gguf_verified: bool = False  # a GGUF loads with logits equal to the source (tests/test_gguf_families.py)
    gguf_refused: str | None = None  # why a GGUF of it is refused before any weight is read
    residual_writers: tuple[Writer, ...] = ()  # what writes the residual stream (export's weight edit)


# --------------------------------------------------------------------------- config helpers


def need(c, arch: str, *names: str):
    """``c.<name>`` for the first of ``names`` the config has (not None), else a clear error."""
    for name in names:
        value = getattr(c, name, None)
        if value is not None:
            return value
    raise ValueError(f"{arch}: config.json is missing {' / '.join(names)}, which TransformerLens needs")


def hf_activation(c) -> str | None:
    """The activation the Hugging Face config names (Gemma's ``hidden_activation`` first)."""
    for name in ("hidden_activation", "hidden_act", "activation_function"):
        value = getattr(c, name, None)
        if isinstance(value, str):
            return value
    return None


def rope(c, kind: str = "full_attention") -> dict:
    """The rope parameters of ``kind`` layers, old (flat) or transformers-5 (per layer type) style."""
    params = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    if isinstance(params.get(kind), dict):
        params = params[kind]
    elif kind == "sliding_attention" and getattr(c, "rope_local_base_freq", None) is not None:
        params = {"rope_theta": c.rope_local_base_freq}  # Gemma-3 configs before transformers 5
    theta = params.get("rope_theta", getattr(c, "rope_theta", None))
    return {**params, "rope_theta": 10000.0 if theta is None else theta}


# --------------------------------------------------------------------------- the workbench's own TL configs
# TL 3.9 builds these only from official hub names (Gemma, OLMo-2) or reads a field transformers 5
# no longer has (GPT-2's ``n_ctx``), while its weight converters take any such model.


def _gpt2_cfg(c, arch: str) -> dict:
    d_model, n_heads = need(c, arch, "n_embd", "hidden_size"), need(c, arch, "n_head", "num_attention_heads")
    return {
        "d_model": d_model,
        "d_head": d_model // n_heads,
        "n_heads": n_heads,
        "d_mlp": getattr(c, "n_inner", None) or 4 * d_model,
        "n_layers": need(c, arch, "n_layer", "num_hidden_layers"),
        "eps": need(c, arch, "layer_norm_epsilon"),
        "d_vocab": need(c, arch, "vocab_size"),
        "act_fn": need(c, arch, "activation_function"),
        "use_attn_scale": getattr(c, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": getattr(c, "scale_attn_by_inverse_layer_idx", False),
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
    }


def _rotary_rms_cfg(c, arch: str, *, linear_rope: bool = False) -> dict:
    """What Gemma 1/2/3 and OLMo-2 share: RMS norms, rotary positions, a gated MLP; ``linear_rope``
    allows linear rope scaling (Gemma-3)."""
    d_model, n_heads = need(c, arch, "hidden_size"), need(c, arch, "num_attention_heads")
    d_head = getattr(c, "head_dim", None) or d_model // n_heads
    params = rope(c)
    cfg: dict = {
        "d_model": d_model,
        "d_head": d_head,
        "n_heads": n_heads,
        "d_mlp": need(c, arch, "intermediate_size"),
        "n_layers": need(c, arch, "num_hidden_layers"),
        "eps": need(c, arch, "rms_norm_eps"),
        "d_vocab": need(c, arch, "vocab_size"),
        "act_fn": hf_activation(c) or need(c, arch, "hidden_act"),
        "initializer_range": getattr(c, "initializer_range", 0.02),
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "rotary_adjacent_pairs": False,
        "rotary_base": params["rope_theta"],
        "gated_mlp": True,
        "final_rms": True,
    }
    if getattr(c, "attention_bias", False):
        raise ValueError(f"{arch}: attention_bias=True; TransformerLens' {arch} converter drops q/k/v biases")
    kind = params.get("rope_type", "default")
    if kind not in ("default", "linear") or (kind == "linear" and not linear_rope):
        raise ValueError(f"{arch}: rope type {params.get('rope_type')!r} is not mapped to TransformerLens")
    return cfg


def _kv_heads(c, cfg: dict) -> int:
    return getattr(c, "num_key_value_heads", None) or cfg["n_heads"]


def _olmo2_cfg(c, arch: str) -> dict:
    cfg = _rotary_rms_cfg(c, arch)
    if _kv_heads(c, cfg) != cfg["n_heads"]:
        raise ValueError(
            f"{arch}: num_key_value_heads={_kv_heads(c, cfg)} < num_attention_heads={cfg['n_heads']}; "
            "TransformerLens' OLMo-2 converter supports only full multi-head attention"
        )
    return {**cfg, "attn_types": ["global"] * cfg["n_layers"]}


def _gemma_cfg(c, arch: str, *, linear_rope: bool = False) -> dict:
    # Gemma 1/2/3: TL's converter adds 1 to the RMSNorm gains and scales W_E by sqrt(d_model).
    cfg = _rotary_rms_cfg(c, arch, linear_rope=linear_rope)
    cfg["n_key_value_heads"] = _kv_heads(c, cfg)
    cfg["use_attn_scale"] = True
    return cfg


def _sandwich_cfg(c, arch: str, *, linear_rope: bool = False) -> dict:
    """Gemma-2/3: Gemma's config plus sandwich norms, the query scale and the soft-caps."""
    cfg = _gemma_cfg(c, arch, linear_rope=linear_rope)
    cfg["use_normalization_before_and_after"] = True
    cfg["attn_scale"] = float(need(c, arch, "query_pre_attn_scalar")) ** 0.5
    for ours, theirs in (
        ("attn_scores_soft_cap", "attn_logit_softcapping"),
        ("output_logits_soft_cap", "final_logit_softcapping"),
    ):
        if getattr(c, theirs, None) is not None:
            cfg[ours] = float(getattr(c, theirs))
    return cfg


def _with_sliding_layers(c, cfg: dict) -> dict:
    layer_types = getattr(c, "layer_types", None)
    if layer_types and "sliding_attention" in layer_types and getattr(c, "sliding_window", None):
        cfg["use_local_attn"] = True
        cfg["window_size"] = c.sliding_window
        cfg["attn_types"] = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    return cfg


def _gemma2_cfg(c, arch: str) -> dict:
    return _with_sliding_layers(c, _sandwich_cfg(c, arch))


def _gemma3_cfg(c, arch: str) -> dict:
    cfg = _sandwich_cfg(c, arch, linear_rope=True)
    cfg["use_qk_norm"] = True
    local = rope(c, "sliding_attention")["rope_theta"]
    if local != cfg["rotary_base"]:
        cfg["rotary_base_local"] = local
    params = rope(c)
    if params.get("rope_type") == "linear":
        cfg["rotary_scaling_factor"] = float(params.get("factor", 1.0))
    return _with_sliding_layers(c, cfg)


# --------------------------------------------------------------------------- residual writers
# The matrices (and biases) whose outputs are added to the residual stream: the token embedding
# (GPT-2: and the learned positions), each attention output projection, each MLP output projection.
# nn.Linear stores [out, in], so d_model is axis 0; embeddings [vocab, d_model] and GPT-2's Conv1D
# [in, out] have it last; Mixtral's fused experts are [experts, d_model, d_ff] (transformers 5).


def _writers(embed: str, layers: str, attn_out: str, mlp_out: str, axis: int = 0) -> tuple[Writer, ...]:
    per_layer = [
        (f"{layers}.*.{m}.{p}", axis if p == "weight" else 0) for m in (attn_out, mlp_out) for p in ("weight", "bias")
    ]
    return ((f"{embed}.weight", -1), *per_layer)


_LLAMA_WRITERS = _writers("model.embed_tokens", "model.layers", "self_attn.o_proj", "mlp.down_proj")
_MIXTRAL_WRITERS = (*_LLAMA_WRITERS[:3], ("model.layers.*.mlp.experts.down_proj", 1))
_GPT2_WRITERS = (
    ("transformer.wpe.weight", -1),
    *_writers("transformer.wte", "transformer.h", "attn.c_proj", "mlp.c_proj", axis=-1),
)
_NEOX_WRITERS = _writers("gpt_neox.embed_in", "gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h")

# --------------------------------------------------------------------------- the registry

_NO_GGUF_READER = "transformers has no GGUF reader for it"
_OLMO_QK_NORM = (
    "TL's OLMo attention applies its qk-norm to the full projected q/k before the head split, "
    "which the fast forward does not reproduce"
)

_RECORDS = (
    Family(
        "LlamaForCausalLM", "Llama", fast_paths=True, gguf="llama", gguf_verified=True, residual_writers=_LLAMA_WRITERS
    ),
    # llama.cpp writes Mistral as "llama": it loads from a GGUF as Llama, its sliding window lost
    Family(
        "MistralForCausalLM",
        "Mistral",
        fast_paths=True,
        gguf="llama",
        gguf_verified=True,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family(
        "MixtralForCausalLM",
        "Mixtral",
        fast_paths=True,
        gguf="llama",
        gguf_refused="a llama GGUF with llama.expert_count: transformers would read it as a dense Llama, "
        "its experts dropped",
        residual_writers=_MIXTRAL_WRITERS,
    ),
    Family(
        "Qwen2ForCausalLM", "Qwen2", fast_paths=True, gguf="qwen2", gguf_verified=True, residual_writers=_LLAMA_WRITERS
    ),
    Family(
        "Qwen3ForCausalLM", "Qwen3", fast_paths=True, gguf="qwen3", gguf_verified=True, residual_writers=_LLAMA_WRITERS
    ),
    Family(
        "Phi3ForCausalLM", "Phi-3", fast_paths=True, gguf="phi3", gguf_verified=True, residual_writers=_LLAMA_WRITERS
    ),
    Family(
        "GemmaForCausalLM",
        "Gemma",
        tl_cfg=_gemma_cfg,
        fast_paths=True,
        gguf="gemma",
        gguf_refused=_NO_GGUF_READER,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family(
        "Gemma2ForCausalLM",
        "Gemma-2",
        norm="sandwich",
        tl_cfg=_gemma2_cfg,
        fast_paths=True,
        gguf="gemma2",
        gguf_verified=True,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family(
        "Gemma3ForCausalLM",
        "Gemma-3 text",
        norm="sandwich",
        tl_cfg=_gemma3_cfg,
        fast_paths=True,
        gguf="gemma3",
        gguf_verified=True,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family(
        "Olmo2ForCausalLM",
        "OLMo-2",
        norm="post",
        tl_cfg=_olmo2_cfg,
        fast_paths=True,
        attention_excluded=_OLMO_QK_NORM,
        gguf="olmo2",
        gguf_refused=_NO_GGUF_READER,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family(
        "Olmo3ForCausalLM",
        "OLMo-3",
        norm="post",
        fast_paths=True,
        attention_excluded=_OLMO_QK_NORM,
        gguf="olmo3",
        gguf_refused=_NO_GGUF_READER,
        residual_writers=_LLAMA_WRITERS,
    ),
    Family("OlmoeForCausalLM", "OLMoE", attention_excluded=_OLMO_QK_NORM),  # not in the tested matrix
    Family(
        "GPT2LMHeadModel",
        "GPT-2",
        tl_cfg=_gpt2_cfg,
        fast_paths=True,
        gguf="gpt2",
        gguf_verified=True,
        residual_writers=_GPT2_WRITERS,
    ),
    Family(
        "GPTNeoXForCausalLM",
        "GPT-NeoX",
        fast_paths=True,
        gguf="gptneox",
        gguf_refused=_NO_GGUF_READER,
        residual_writers=_NEOX_WRITERS,
    ),
    # known only for their GGUF names, which transformers' reader files under another key
    Family("Qwen2MoeForCausalLM", "Qwen2-MoE", gguf="qwen2moe", gguf_reader="qwen2_moe"),
    Family("Qwen3MoeForCausalLM", "Qwen3-MoE", gguf="qwen3moe", gguf_reader="qwen3_moe"),
    Family("GptOssForCausalLM", "gpt-oss", gguf="gpt-oss", gguf_reader="gpt_oss"),
    Family("MiniMaxM2ForCausalLM", "MiniMax-M2", gguf="minimax-m2", gguf_reader="minimax_m2"),
)
FAMILIES: dict[str, Family] = {f.architecture: f for f in _RECORDS}


# --------------------------------------------------------------------------- views


def family(architecture: str | None) -> Family | None:
    """The record of ``architecture`` (an HF class name), or None for a family the workbench has none of."""
    return FAMILIES.get(architecture) if architecture is not None else None


def norm_placement(cfg) -> NormPlacement:
    """Where a loaded model's norms sit: ``sandwich`` when its TL config has a norm before and after
    each sublayer (Gemma-2/3), ``post`` for a post-norm family (a norm on each sublayer's output
    only: OLMo-2/3), else ``pre``."""
    if getattr(cfg, "use_normalization_before_and_after", False):
        return "sandwich"
    record = family(getattr(cfg, "original_architecture", None))
    return "post" if record is not None and record.norm == "post" else "pre"


def own_mappings() -> tuple[str, ...]:
    """The architectures whose TL config the workbench builds itself for a local folder."""
    return tuple(a for a, f in FAMILIES.items() if f.tl_cfg is not None)


def fast_path_families() -> frozenset[str]:
    """The architectures on the fast paths' tested allow-list."""
    return frozenset(a for a, f in FAMILIES.items() if f.fast_paths)


def attention_excluded(architecture: str | None) -> str | None:
    """Why the fast attention never runs on ``architecture``, or None when its guards decide."""
    record = family(architecture)
    return record.attention_excluded if record is not None else None


def gguf_verified() -> tuple[str, ...]:
    """llama.cpp architecture names whose GGUF files load here with logits equal to the source model's."""
    return tuple(dict.fromkeys(f.gguf for f in FAMILIES.values() if f.gguf and f.gguf_verified))


def gguf_renames() -> dict[str, str]:
    """llama.cpp architecture names that transformers' GGUF reader keys under another name."""
    return {f.gguf: f.gguf_reader for f in FAMILIES.values() if f.gguf and f.gguf_reader}


def residual_writers(architecture: str | None) -> tuple[Writer, ...]:
    """The residual writers of ``architecture`` in its Hugging Face names (empty: not known)."""
    record = family(architecture)
    return record.residual_writers if record is not None else ()
