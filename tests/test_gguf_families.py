"""GGUF files of every family transformers can read, written offline from the tiny random models of
``test_families``: ``load_model(path.gguf)`` loads each, its logits equal the source HF model's
(fp32 tensors), and a short generation runs. Families transformers cannot read from GGUF are
refused by name, before any weight is read.

``write_gguf`` writes what llama.cpp's ``convert_hf_to_gguf.py`` would, with the export's own writer
(``workbench.gguf_export``): its metadata keys, its tensor names (from ``gguf.get_tensor_name_map``,
the table transformers inverts) and its tensor layouts (Llama-type q/k rows interleaved for its
rotary, Gemma norm gains stored as ``1 + w``, GPT-2's Conv1D weights as ``out × in``), each undone by
transformers' loader; the vocabulary is a small synthetic one. A GGUF states less
than a ``config.json``; where transformers' reader drops a field, the family's GGUF twin below
(``GGUF_TWIN``) sets it to the value transformers assumes, so the comparison is exact; those are
the limits of GGUF loading itself (see the README).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_families import FAMILIES, V, _configs, _randomize

from workbench import families, gguf_export
from workbench.generation import generate
from workbench.gguf_export import add_hparams, add_tensors
from workbench.models import check_model_spec, load_model

TOL = 1e-4  # fp32 logits, GGUF-loaded TL vs the source HF model

# family -> its llama.cpp architecture name (``general.architecture``)
GGUF_ARCH = {
    "llama": "llama",
    "llama-tied": "llama",
    "mistral": "llama",  # llama.cpp writes Mistral as "llama"; it loads as LlamaForCausalLM
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "phi3": "phi3",
    "gpt2": "gpt2",
}
# families whose llama.cpp architecture transformers 5 cannot read from a GGUF
UNREADABLE = {"gemma": "gemma", "gpt-neox": "gptneox", "olmo2": "olmo2", "mixtral": "llama", "olmo3": "olmo3"}

# Config fields a GGUF does not carry to transformers, set on the twin to what transformers assumes:
GGUF_TWIN: dict[str, dict] = {
    "mistral": dict(sliding_window=None),  # read as Llama: no sliding window (Mistral v0.2+ has none)
    "qwen3": dict(head_dim=128),  # attention.key_length is not read: Qwen3Config's default 128
    "gemma2": dict(  # llama.cpp's softcap keys are not read, nor is query_pre_attn_scalar
        query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0
    ),
    "gemma3": dict(  # layer_types is rebuilt from the default pattern: every 6th layer global
        query_pre_attn_scalar=256, num_hidden_layers=6
    ),
    "gpt2": dict(n_positions=1024),  # context_length sets n_ctx; the position table is n_positions
}

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"  # an instruct GGUF carries one


def build_twin(family: str):
    """The tiny random ``family`` model of ``test_families``, with ``GGUF_TWIN``'s changes."""
    config, cls = _configs()[family]
    for key, value in GGUF_TWIN.get(family, {}).items():
        setattr(config, key, value)
    if family == "gemma3":
        config = type(config)(**{k: v for k, v in config.to_dict().items() if k != "layer_types"})
    config.architectures = [cls.__name__]
    torch.manual_seed(FAMILIES.index(family))
    hf = cls(config).eval()
    _randomize(hf, family)
    return hf


def _vocab(byte_level: bool) -> tuple[list[str], list[str]]:
    """V tokens (pad/unk, BOS, EOS, letters, space+letter, letter pairs) and the merges that build
    the multi-character ones; the space is "Ġ" in a byte-level vocabulary, "▁" in sentencepiece."""
    space = "Ġ" if byte_level else "▁"
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = [space, *letters, *(space + c for c in letters)]
    pieces += [a + b for a in letters for b in letters][: V - 3 - len(pieces)]
    tokens = ["<unk>", "<s>", "</s>", *pieces]
    merges = [f"{t[0]} {t[1:]}" for t in pieces if len(t) > 1]
    return tokens, merges


def write_gguf(hf, family: str, path: Path, *, arch: str | None = None) -> Path:
    """Write the HF model ``hf`` of ``family`` as an fp32 GGUF at ``path``, as llama.cpp would: the
    hyper-parameters and tensors by ``workbench.gguf_export`` (the export's own writer), the
    vocabulary the small one above."""
    import gguf

    arch = arch or GGUF_ARCH.get(family) or UNREADABLE[family]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {family}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_hparams(writer, hf.config, arch)

    byte_level = arch not in ("gemma", "gemma2", "gemma3", "phi3")  # the tokenizers those families ship
    tokens, merges = _vocab(byte_level)
    writer.add_tokenizer_model("gpt2" if byte_level else "llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(V)])
    writer.add_token_types([2, 3, 3] + [1] * (V - 3))  # unknown, control, control, normal
    if byte_level:
        writer.add_token_merges(merges)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)

    known = [k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch]
    assert known or family in UNREADABLE, f"gguf has no architecture {arch!r}"
    if known:  # (OLMo-3's is unknown to this gguf: its file is metadata only; it is refused on that)
        # only an unreadable family's file may miss a tensor: it is refused anyway
        add_tensors(writer, hf, arch, "f32", skip_unnamed=family in UNREADABLE)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(str(path), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", list(GGUF_ARCH))
@torch.inference_mode()
def test_gguf_loads_and_logits_equal_hf(family, tmp_path, tokens):
    hf = build_twin(family)
    path = write_gguf(hf, family, tmp_path / f"tiny-{family}.gguf")
    check_model_spec(str(path))
    model = _load(path)
    expected = "LlamaForCausalLM" if family == "mistral" else hf.config.architectures[0]
    assert model.cfg.original_architecture == expected
    gap = (model(tokens) - hf(input_ids=tokens).logits).abs().max().item()
    assert gap <= TOL, f"{family}: GGUF-loaded logits differ from HF's by {gap:.1e}"
    if getattr(hf.config, "sliding_window", None):  # 8 < the 11 tokens: the window bites
        assert model.cfg.use_local_attn and model.cfg.window_size == hf.config.sliding_window
    # the tokenizer is the GGUF's own vocabulary (the byte-level or sentencepiece one written above)
    ids = model.tokenizer.encode("hello world", add_special_tokens=False)
    vocab, _ = _vocab(byte_level=family not in ("gemma2", "gemma3", "phi3"))
    assert ids[-4:] == [vocab.index(c) for c in "orld"] and model.tokenizer.decode(ids).strip() == "hello world"
    assert model.tokenizer.chat_template == CHAT_TEMPLATE
    texts = generate(model, ["hello world", "abc"], max_new_tokens=2, batch_size=2)  # through the template
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@torch.inference_mode()
def test_llama_gguf_without_the_q_k_permutation_differs(tmp_path, tokens, monkeypatch):
    """The control: the test above would see a q/k row order the loader failed to undo."""
    monkeypatch.setattr(gguf_export, "_llama_cpp_permute", lambda w, n_head: w)
    hf = build_twin("llama")
    model = _load(write_gguf(hf, "llama", tmp_path / "unpermuted.gguf"))
    assert (model(tokens) - hf(input_ids=tokens).logits).abs().max().item() > 1e-3  # vs ~1e-7 permuted


@pytest.mark.parametrize("family", list(UNREADABLE))
def test_gguf_family_transformers_cannot_read_is_refused_by_name(family, tmp_path):
    path = write_gguf(build_twin(family), family, tmp_path / f"tiny-{family}.gguf")
    arch = UNREADABLE[family]
    why = "mixture of experts" if family == "mixtral" else "cannot be loaded from a GGUF"
    for load in (check_model_spec, _load):
        with pytest.raises(ValueError, match=rf"architecture '{arch}'.*{why}.*verified here: llama"):
            load(str(path) if load is check_model_spec else path)


def test_family_records_state_this_matrix():
    architectures = {family: cls.__name__ for family, (_, cls) in _configs().items()}
    for family, arch in GGUF_ARCH.items():
        record = families.FAMILIES[architectures[family]]
        assert (record.gguf, record.gguf_verified, record.gguf_refused) == (arch, True, None), family
    for family, arch in UNREADABLE.items():
        record = families.FAMILIES[architectures[family]]
        assert record.gguf == arch and not record.gguf_verified and record.gguf_refused, family
