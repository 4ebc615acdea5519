"""Content-keyed run folders: a local model's key follows its files' content, and the per-file hash
cache is reused only while a file's size, mtime, ctime and inode still match."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_families import _tokenizer, build_family_folder

from workbench import fingerprints
from workbench.artifacts import CACHE_ENV
from workbench.fingerprints import content_key, file_sha256, model_files

# user turns between w3 and w4, then w5: a two-token end of instruction, as the positions need
CHAT_TEMPLATE = "{% for m in messages %}w3 {{ m['content'] }} w4{% endfor %} w5"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def hashed(monkeypatch):
    """The files streamed through sha256, in order (the cache's misses)."""
    seen: list[Path] = []
    stream = fingerprints.sha256_file

    def counting(path: Path, chunk: int) -> str:
        seen.append(path)
        return stream(path, chunk)

    monkeypatch.setattr(fingerprints, "sha256_file", counting)
    return seen


def _backdate(path: Path, seconds: float = 60.0) -> None:
    """Move the mtime out of the racy window, as for any file not written just now."""
    old = path.stat().st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(old, old))


def test_hash_is_sha256_and_reused_while_the_file_is_unchanged(cache, hashed, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(3 * fingerprints._BLOCK + 5))  # several blocks and a remainder
    _backdate(weights)
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights) == file_sha256(tmp_path / "." / "model.safetensors")
    assert hashed == [weights]  # streamed once; the other two calls read the entry
    assert len(list((cache / fingerprints.HASH_DIR).iterdir())) == 1


def test_same_size_rewrite_is_rehashed_even_with_its_old_mtime_restored(cache, hashed, tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    _backdate(weights)
    first = file_sha256(weights)
    st = weights.stat()
    with open(weights, "r+b") as fh:  # in place: same inode, same size (as `cp -p` onto it)
        fh.write(b"b")
    assert file_sha256(weights) != first  # the mtime changed
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # old mtime back: only the ctime tells
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert file_sha256(weights) == hashlib.sha256(b"b" + b"a" * 999).hexdigest()
    assert len(hashed) == 3


@pytest.mark.parametrize("field", ["size", "mtime_ns", "ctime_ns", "ino"])
def test_an_entry_is_trusted_only_while_every_stat_field_matches(field):
    now = {"size": 10, "mtime_ns": 1_000_000_000_000, "ctime_ns": 1_000_000_000_000, "ino": 7}
    entry = {**now, "recorded_ns": now["mtime_ns"] + 10 * fingerprints.RACY_NS, "sha256": "x"}
    assert fingerprints._trusted(entry, now)
    assert not fingerprints._trusted({**entry, field: now[field] + 1}, now)


def test_a_file_hashed_within_its_mtime_tick_is_hashed_again(cache, hashed, tmp_path):
    # written just now: a same-size write within the timestamp tick would keep the mtime
    fresh = tmp_path / "config.json"
    fresh.write_text("{}")
    file_sha256(fresh)
    file_sha256(fresh)
    assert len(hashed) == 2


def test_a_file_changing_while_hashed_is_an_error(cache, tmp_path, monkeypatch):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 100)

    def appending(path: Path, chunk: int) -> str:
        with open(path, "ab") as fh:
            fh.write(b"more")
        return "0" * 64

    monkeypatch.setattr(fingerprints, "sha256_file", appending)
    with pytest.raises(ValueError, match="changed while it was being hashed; wait until it is fully written"):
        file_sha256(weights)
    assert not (cache / fingerprints.HASH_DIR).exists() or not list((cache / fingerprints.HASH_DIR).iterdir())


def test_model_files_of_a_folder_and_of_a_gguf(tmp_path):
    folder = tmp_path / "m"
    (folder / "checkpoint-10").mkdir(parents=True)
    names = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model"]
    for name in [*names, "README.md", ".gitattributes", "LICENSE", "checkpoint-10/optimizer.pt"]:
        (folder / name).write_text(name)
    assert [f.name for f in model_files(folder)] == sorted(names)
    gguf = tmp_path / "q4.gguf"
    for name in ("q4.gguf", "q8.gguf", "tokenizer_config.json", "chat_template.jinja", "notes.txt"):
        (tmp_path / name).write_text(name)
    assert [f.name for f in model_files(gguf)] == ["q4.gguf", "chat_template.jinja", "tokenizer_config.json"]
    with pytest.raises(FileNotFoundError, match="GGUF file .*missing.gguf does not exist; check the path"):
        model_files(tmp_path / "missing.gguf")


def test_content_key_follows_content_not_path(cache, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    key = content_key(folder)
    assert key.startswith("my-model-") and len(key) == len("my-model-") + 12
    (folder / "README.md").write_text("notes")  # documentation: not part of the model
    assert content_key(folder) == key
    shutil.copytree(folder, tmp_path / "elsewhere" / "my-model")
    assert content_key(tmp_path / "elsewhere" / "my-model") == key
    (folder / "model.safetensors").write_bytes(b"\0" * 63 + b"\1")  # same size, new weights
    assert content_key(folder) != key
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer_config.json").write_text("{}")  # a new tokenizer file
    assert content_key(folder) != key
    gguf = tmp_path / "tiny.Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    gguf_key = content_key(gguf)
    assert gguf_key.startswith("tiny.Q8_0-")
    gguf.write_bytes(b"GGUF" + b"\0" * 59 + b"\1")
    assert content_key(gguf) != gguf_key


def _save_tiny_chat_model(folder: Path) -> None:
    build_family_folder("llama", str(folder))
    tok = _tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)


def _prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("\n".join(f"w{5 + i % 40} w{50 + i % 30} w9" for i in range(24)))
    harmless.write_text("\n".join(f"w{6 + i % 40} w{60 + i % 30}" for i in range(24)))
    return harmful, harmless


def _activations(folder: Path, splits):
    from workbench.config import AnalysisConfig
    from workbench.models import load_model
    from workbench.pipeline import Analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(folder), device="cpu", dtype="float32")
    analysis = Analysis(model, AnalysisConfig(sites=("resid_pre",)), prompts=splits, progress=False)
    return model.workbench_key, analysis.dir, analysis.activations["harmful_train"].acts["resid_pre"]


def test_new_weights_at_the_same_path_get_a_new_run_folder_and_fresh_activations(cache, tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.data import PromptSplits

    folder = tmp_path / "my-model"
    _save_tiny_chat_model(folder)
    splits = PromptSplits.from_files(*_prompt_files(tmp_path))
    key, run_dir, before = _activations(folder, splits)
    assert _activations(folder, splits)[1] == run_dir  # unchanged weights: the same run folder

    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    hf = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for p in hf.parameters():
            p.mul_(1.5)
    hf.save_pretrained(folder)  # new weights, same path, same size
    assert weights.stat().st_size == size

    new_key, new_dir, after = _activations(folder, splits)
    assert not torch.allclose(before, after)  # computed from the new weights, not read from the old folder
    assert new_dir != run_dir and (run_dir / "activations.safetensors").exists()  # the old run stays
    assert new_key == content_key(folder) != key and new_dir.parent.name == new_key


def test_a_gguf_loads_under_its_content_key(cache, tmp_path):
    from test_gguf_families import build_twin, write_gguf

    from workbench.models import load_model

    gguf = write_gguf(build_twin("llama"), "llama", tmp_path / "tiny-llama.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(gguf), device="cpu", dtype="float32")
    assert model.workbench_name == str(gguf)
    assert model.workbench_key == content_key(gguf) and model.workbench_key.startswith("tiny-llama-")


def test_embedded_models_keep_their_keys():
    # their run folders in every user's cache stay valid: their keys already follow their weights
    from workbench.config import GRADED_RECIPE, Recipe
    from workbench.models import model_key_of
    from workbench.organism import organism_name

    assert model_key_of("organism") == organism_name(Recipe())
    assert model_key_of("organism-graded") == organism_name(GRADED_RECIPE)
    assert model_key_of("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_a_hub_name_is_keyed_by_its_cached_commit(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from workbench.models import model_key_of

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_key_of("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct-0123456789ab"
    assert model_key_of("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"  # not cached: the name


def test_hash_cost_benchmark_reports_cold_warm_and_load(load_script, tmp_path, monkeypatch, capsys):
    bench = load_script("benchmarks/hash_cost.py")
    folder = tmp_path / "my-model"
    _save_tiny_chat_model(folder)
    for f in folder.iterdir():
        _backdate(f)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    argv = ["--model", str(folder), "--big-gb", "0.1", "--big-dir", str(tmp_path), "--json"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert os.environ[CACHE_ENV] == str(tmp_path / "cache")  # restored
    assert out["model"]["key"] == content_key(folder) and out["model"]["load_s"] > 0
    assert out["big"]["bytes"] == 100_000_000 and out["big"]["files"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("wb-hash-cost-")] == []  # deleted
    assert out["big"]["warm_s"] < out["big"]["cold_s"] / 5  # 100 MB hashed, then its entry read
