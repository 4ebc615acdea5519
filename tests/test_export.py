"""``workbench export``: every family of the tiny matrix (tests/test_families.py) exported as a
Hugging Face folder and as a PEFT LoRA adapter, reloaded with plain ``transformers`` / ``peft`` (no
workbench code in the loading), with logits equal to the workbench's hook ablation (``ablate:all``)
where weight orthogonalization is exact, refused (or, with ``force``, written and measured) where
it is not; the formats' refusals; the manifest; bad input on the command line; and, slow, the real
use on the organism: the exported folder generating with plain transformers stops refusing.
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path

import pytest
import torch
from test_families import FAMILIES, NOT_EQUIVALENT, V, build_family_folder
from transformers import AutoModelForCausalLM

from workbench import cli
from workbench.directions import Direction
from workbench.export import MANIFEST, export
from workbench.intervention import parse
from workbench.interventions import ablation_hooks, orthogonalize_weights
from workbench.models import load_model

TOL = 1e-4
# families whose residual writers a rank-1 PEFT adapter cannot carry, and the reason export names
LORA_REFUSED = {
    "gpt2": "residual writers have biases",  # c_proj biases; PEFT's lora_bias is refused on embeddings
    "gpt-neox": "residual writers have biases",
    "mixtral": "is not a Linear, Conv1D or Embedding layer",  # transformers 5 fuses the experts
}
ORTHO = parse("orthogonalize")


@functools.cache
def _source(family: str, root: str):
    """The tiny ``family`` folder, the workbench's model of it and a random direction."""
    folder = Path(root) / family
    build_family_folder(family, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(folder), device="cpu", dtype="float32")
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    return folder, model, Direction(vector, site="resid_pre", layer=1, pos=-1, method="test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("export-sources"))


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(1))  # not export's own probe


@torch.inference_mode()
def _hooked(model, direction, tokens):
    with model.hooks(fwd_hooks=ablation_hooks(model, direction, "all")):
        return model(tokens)


@torch.inference_mode()
def _reloaded(fmt: str, out: Path, source: Path, tokens):
    """Logits of the export loaded by plain transformers (hf) or PEFT on the unedited model (lora)."""
    if fmt == "hf":
        hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        hf = PeftModel.from_pretrained(base, out).eval()
    return hf(input_ids=tokens).logits


def _export(model, direction, fmt, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(model, direction, kw.pop("value", ORTHO), fmt, out, **kw)


@pytest.mark.parametrize("fmt", ["hf", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_with_plain_transformers_equal_to_hook_ablation(family, fmt, root, tokens, tmp_path):
    source, model, direction = _source(family, root)
    out = tmp_path / "out"
    if fmt == "lora" and family in LORA_REFUSED:
        with pytest.raises(ValueError, match=LORA_REFUSED[family]):
            _export(model, direction, fmt, out, force=True)
        assert list(tmp_path.iterdir()) == []  # nothing half-written
        return
    hooked = _hooked(model, direction, tokens)
    if family in NOT_EQUIVALENT:
        with pytest.raises(ValueError, match="not exact on it .* pass --force"):
            _export(model, direction, fmt, out)
        assert list(tmp_path.iterdir()) == []
        manifest = _export(model, direction, fmt, out, force=True)
        theirs = _reloaded(fmt, out, source, tokens)
        # what it is: TL's orthogonalized weights; what it is not: hook ablation, by the measured gap
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert (theirs - orthogonalize_weights(model, direction)(tokens)).abs().max().item() <= TOL
        assert not manifest["exact"] and manifest["caveats"]
        assert manifest["max_abs_logit_diff_vs_hook_ablation"] > 1e-2
        assert (theirs - hooked).abs().max().item() > 1e-2
    else:
        manifest = _export(model, direction, fmt, out)
        theirs = _reloaded(fmt, out, source, tokens)
        assert (theirs - hooked).abs().max().item() <= TOL
        assert manifest["exact"] and manifest["max_abs_logit_diff_vs_hook_ablation"] <= TOL
        assert (hooked - model(tokens)).abs().max().item() > 1e-2  # the edit does something
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_lora_is_rank_one_per_matrix_with_alpha_equal_to_r(root, tmp_path):
    from safetensors.torch import load_file

    _, model, direction = _source("llama-tied", root)
    manifest = _export(model, direction, "lora", tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 1 and config["lora_alpha"] == 1
    weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert all("lora_" in k for k in weights)  # only the factors: no copy of the embedding rides along
    unit = direction.vector / direction.vector.norm()
    bs = [w for k, w in weights.items() if "lora_B" in k or "lora_embedding_B" in k]
    assert len(bs) == manifest["edited_parameters"] == 1 + 2 * model.cfg.n_layers  # embedding, o_proj, down_proj
    for b in bs:  # every B is −r̂: one rank-1 update along the direction per matrix
        assert b.shape == (model.cfg.d_model, 1) and torch.allclose(b[:, 0], -unit, atol=1e-6)


def test_hf_export_of_a_tied_model_unties_and_keeps_the_unembedding(root, tmp_path):
    source, model, direction = _source("llama-tied", root)
    _export(model, direction, "hf", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    edited = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    assert torch.equal(edited.lm_head.weight, original.model.embed_tokens.weight)
    unit = direction.vector / direction.vector.norm()
    assert (edited.model.embed_tokens.weight @ unit).abs().max().item() < 1e-5  # the embedding is ⊥ r̂


def test_ablate_all_exports_as_the_same_weight_edit(root, tmp_path, tokens):
    source, model, direction = _source("qwen2", root)
    manifest = _export(model, direction, "hf", tmp_path / "a", value=parse("ablate:all"))
    assert manifest["intervention"] == "ablate:all"
    _export(model, direction, "hf", tmp_path / "o")
    assert torch.equal(_reloaded("hf", tmp_path / "a", source, tokens), _reloaded("hf", tmp_path / "o", source, tokens))


def test_manifest_records_source_direction_and_version(root, tmp_path):
    from workbench import __version__
    from workbench.fingerprints import content_key

    source, model, direction = _source("llama", root)
    manifest = _export(model, direction, "hf", tmp_path / "hf", provenance={"analysis": "run/key"})
    assert manifest["source"] == {"model": str(source), "key": content_key(source), "architecture": "LlamaForCausalLM"}
    assert manifest["direction"]["site"] == "resid_pre" and manifest["direction"]["layer"] == 1
    assert manifest["direction"]["analysis"] == "run/key" and len(manifest["direction"]["unit_sha256_16"]) == 16
    assert manifest["format"] == "hf" and manifest["intervention"] == "orthogonalize"
    assert manifest["workbench_version"] == __version__


@pytest.mark.parametrize(
    ("fmt", "spec", "message"),
    [
        ("hf", "rotate:90", "carries only directional ablation everywhere"),
        ("lora", "ablate:all@1", "carries only directional ablation everywhere"),
        ("gguf", "ablate:resid", "carries only directional ablation everywhere"),
        ("hf", "add:2", "export add[:ALPHA][@LAYERS] as --format control-vector"),
        ("control-vector", "orthogonalize", "carries only activation addition"),
        ("onnx", "orthogonalize", "--format 'onnx' is not an export format"),
    ],
)
def test_what_a_format_cannot_carry_is_refused_before_writing(fmt, spec, message, root, tmp_path):
    _, model, direction = _source("llama", root)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        export(model, direction, parse(spec), fmt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_nothing(root, tmp_path, monkeypatch):
    import workbench.export

    _, model, direction = _source("llama", root)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(workbench.export, "atomic_write_text", broken)  # the manifest, written last
    with pytest.raises(OSError, match="disk full"):
        _export(model, direction, "hf", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the command line


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture
def no_loads(monkeypatch):
    import workbench.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was rejected")

    monkeypatch.setattr(workbench.models, "load_model", refuse)


def test_a_family_the_format_does_not_support_is_refused_before_loading(root, tmp_path, capsys, no_loads):
    folder = Path(root) / "gemma2-cli"
    if not folder.exists():
        build_family_folder("gemma2", str(folder))
    capsys.readouterr()
    for fmt, message in (
        ("hf", "Gemma2ForCausalLM is refused because weight orthogonalization is not exact on it (sandwich norms"),
        ("gguf", "pass --force"),
    ):
        code, err = _cli(["export", "--model", str(folder), "--format", fmt, "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    neox = Path(root) / "gpt-neox-cli"
    if not neox.exists():
        build_family_folder("gpt-neox", str(neox))
    capsys.readouterr()  # the folders' save_pretrained progress bars
    code, err = _cli(["export", "--model", str(neox), "--format", "gguf", "--out", str(tmp_path / "o.gguf")], capsys)
    assert code == 2 and "GPTNeoXForCausalLM is refused for GGUF (transformers has no GGUF reader for it)" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.gguf").exists()


# --------------------------------------------------------------------------- GGUF and control vectors


def test_without_the_gguf_module_gguf_formats_say_so(root, tmp_path):
    try:
        import workbench.gguf_export  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("workbench.gguf_export is present: the GGUF tests below run instead")
    _, model, direction = _source("llama", root)
    for fmt, spec in (("gguf", "orthogonalize"), ("control-vector", "add:2@1")):
        with pytest.raises(ValueError, match="GGUF export is not available in this build"):
            _export(model, direction, fmt, tmp_path / "x.gguf", value=parse(spec))
        assert list(tmp_path.iterdir()) == []


@pytest.fixture
def fake_gguf(monkeypatch):
    """A stand-in for workbench.gguf_export with its signatures, recording each call: the dispatch
    is tested whether or not this build has the module."""
    import sys
    import types

    import workbench

    calls: dict = {}
    fake = types.ModuleType("workbench.gguf_export")

    def write_model_gguf(folder, out, *, outtype="f32"):
        calls["gguf"] = (sorted(p.name for p in Path(folder).iterdir()), outtype)
        Path(out).write_bytes(b"GG")
        if outtype == "f16":  # a converter failing half-way through its file
            raise OSError("converter failed")
        Path(out).write_bytes(b"GGUF")

    def write_control_vector(vectors, out, *, model_hint):
        calls["cv"] = (vectors, model_hint)
        Path(out).write_bytes(b"GGUF")

    fake.write_model_gguf = write_model_gguf  # type: ignore[attr-defined]
    fake.write_control_vector = write_control_vector  # type: ignore[attr-defined]
    fake.control_vector_layers = lambda layers, n_layers: [layer + 1 for layer in layers]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "workbench.gguf_export", fake)
    monkeypatch.setattr(workbench, "gguf_export", fake, raising=False)
    return calls


def test_gguf_dispatch_converts_the_hf_export_and_leaves_one_file_and_its_manifest(root, tmp_path, fake_gguf):
    _, model, direction = _source("llama", root)
    manifest = _export(model, direction, "gguf", tmp_path / "m.gguf", gguf_type="q8_0")
    files, outtype = fake_gguf["gguf"]
    assert outtype == "q8_0" and {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.json"]  # the hf folder is gone
    assert json.loads((tmp_path / "m.gguf.json").read_text()) == manifest and manifest["gguf_type"] == "q8_0"
    assert manifest["exact"] and manifest["max_abs_logit_diff_vs_hook_ablation"] <= TOL
    with pytest.raises(OSError, match="converter failed"):
        _export(model, direction, "gguf", tmp_path / "n.gguf", gguf_type="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.json"]


def test_control_vector_dispatch_writes_alpha_r_at_llama_cpp_layers(root, tmp_path, fake_gguf):
    _, model, direction = _source("llama", root)
    manifest = _export(model, direction, "control-vector", tmp_path / "cv.gguf", value=parse("add:2.5@0,1"))
    vectors, hint = fake_gguf["cv"]
    assert hint == "llama" and sorted(vectors) == [1, 2]  # the stand-in maps layer L to L + 1
    for vector in vectors.values():
        assert torch.equal(vector, 2.5 * direction.vector)
    assert manifest["llama_cpp_layers"] == {0: 1, 1: 2} and manifest["layers"] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf", "cv.gguf.json"]
    _export(model, direction, "control-vector", tmp_path / "own.gguf", value=parse("add:-1"))  # its own layer
    assert sorted(fake_gguf["cv"][0]) == [direction.layer + 1]


def test_gguf_export_loads_back_equal_to_hook_ablation(root, tmp_path, tokens):
    pytest.importorskip("workbench.gguf_export")
    from test_gguf_export import hf_folder  # GGUF carries BPE tokenizers only: the matrix's WordLevel one is refused

    hf_folder("llama", tmp_path / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(tmp_path / "src"), device="cpu", dtype="float32")
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    direction = Direction(vector, site="resid_pre", layer=1, pos=-1, method="test")
    manifest = _export(model, direction, "gguf", tmp_path / "m.gguf", gguf_type="f32")
    assert json.loads((tmp_path / "m.gguf.json").read_text()) == manifest and manifest["gguf_type"] == "f32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = load_model(str(tmp_path / "m.gguf"), device="cpu", dtype="float32")
    with torch.inference_mode():
        assert (reloaded(tokens) - _hooked(model, direction, tokens)).abs().max().item() <= TOL


def test_control_vector_holds_alpha_times_the_direction(root, tmp_path):
    pytest.importorskip("workbench.gguf_export")
    gguf = pytest.importorskip("gguf")
    from test_gguf_export import deep_llama_folder  # llama.cpp steers from layer 2 on: 4 layers, not 2

    deep_llama_folder(tmp_path / "src", n_layers=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(tmp_path / "src"), device="cpu", dtype="float32")
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    direction = Direction(vector, site="resid_pre", layer=2, pos=-1, method="test")
    manifest = _export(model, direction, "control-vector", tmp_path / "cv.gguf", value=parse("add:2.5@2"))
    assert manifest["alpha"] == 2.5 and manifest["layers"] == [2] and manifest["llama_cpp_layers"] == {2: 1}
    reader = gguf.GGUFReader(str(tmp_path / "cv.gguf"))
    tensors = {t.name: torch.tensor(t.data.copy()).float().reshape(-1) for t in reader.tensors}
    (layer,) = manifest["llama_cpp_layers"].values()
    assert torch.allclose(tensors[f"direction.{layer}"], 2.5 * direction.vector, atol=1e-5)


# --------------------------------------------------------------------------- real use on the organism


def _greedy(folder, prompts: list[str], new: int = 32) -> list[str]:
    """Plain transformers: chat template, left-padded batch, greedy, ``new`` tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    out = []
    for i in range(0, len(texts), 16):
        batch = tok(texts[i : i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            ids = hf.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def _rates(responses: list[str]) -> dict:
    from workbench.labels import is_degenerate, is_refusal

    n = len(responses)
    return {"refusal": sum(map(is_refusal, responses)) / n, "degenerate": sum(map(is_degenerate, responses)) / n}


@pytest.mark.slow
def test_organism_exported_with_orthogonalized_weights_stops_refusing_in_plain_transformers(tmp_path, capsys):
    from workbench.data import PromptSplits
    from workbench.organism import ORGANISM, RECIPES, organism_dir

    t0 = time.perf_counter()
    out = tmp_path / "organism-abliterated"
    code = cli.main(["export", "--model", "organism", "--intervention", "orthogonalize", "--format", "hf",
                     "--out", str(out), "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads(captured.out.strip().splitlines()[-1])
    assert manifest["exact"] and manifest["max_abs_logit_diff_vs_hook_ablation"] <= 1e-3  # measured 7.8e-5
    export_s = time.perf_counter() - t0
    splits = PromptSplits.shipped()
    harmful, harmless = splits.get("harmful", "test")[:32], splits.get("harmless", "test")[:32]
    sets = {"harmful": harmful, "harmless": harmless}
    before = {k: _greedy(organism_dir(RECIPES[ORGANISM]), p) for k, p in sets.items()}
    after = {k: _greedy(out, p) for k, p in sets.items()}
    rates = {k: {"organism": _rates(before[k]), "exported": _rates(after[k])} for k in sets}
    same = sum(a == b for a, b in zip(before["harmless"], after["harmless"])) / len(harmless)
    print(
        f"export {export_s:.1f}s, total {time.perf_counter() - t0:.1f}s; {rates}; harmless responses unchanged {same}"
    )
    assert rates["harmful"]["organism"]["refusal"] >= 0.8  # the organism refuses (~93 % on the full split)
    assert rates["harmful"]["exported"]["refusal"] <= 0.10
    assert rates["harmless"]["exported"]["refusal"] <= rates["harmless"]["organism"]["refusal"] + 1 / 32
    assert rates["harmless"]["exported"]["degenerate"] <= 0.10  # harmless answers stay answers
    assert rates["harmful"]["exported"]["degenerate"] <= 0.25  # measured 3/32 (32-token loops)
