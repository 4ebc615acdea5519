"""``workbench models``: the report on tiny random Llama and Gemma-2 folders (built offline by
test_families' builder), loaded through ``load_model``; every field comes from the code that decides it."""

from __future__ import annotations

import json
import warnings

import pytest
from test_families import build_family_folder

from workbench import fastpath
from workbench.cli import main
from workbench.doctor import describe, diagnose
from workbench.models import load_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    def build(family: str) -> str:
        path = str(tmp_path_factory.mktemp(f"doctor-{family}"))
        build_family_folder(family, path)
        return path

    return {family: build(family) for family in ("llama", "gemma2")}


def _report(path: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diagnose(load_model(path, device="cpu", dtype="float32"), path)


def test_llama_fast_paths_on_and_orthogonalization_equivalent(folder):
    report = _report(folder["llama"])
    assert report["family"] == report["original_architecture"] == "LlamaForCausalLM"
    assert (report["n_layers"], report["d_model"], report["dtype"], report["device"]) == (2, 64, "float32", "cpu")
    assert report["n_ctx"] <= 128
    assert report["norm"] == {"type": "RMS", "placement": "pre"}
    assert report["sliding_window"] is None and report["softcap"] is None
    fp = report["fast_paths"]
    tested = fastpath.tl_version_tested()
    assert fp["weight_layout"]["engaged"] is tested
    assert fp["attention"]["engaged_layers"] == ([0, 1] if tested else [])
    assert fp["chunked_unembed"]["engaged"] is tested and fp["chunked_unembed"]["slices_here"] is tested
    if tested:
        assert fp["attention"]["why_not"] == {}
    iv = report["interventions"]
    assert all(iv[k]["exact"] for k in iv), iv
    assert "linearly" in iv["weight_orthogonalization"]["why"]
    assert "chunked unembedding: yes" in describe(report) if tested else True


def test_gemma2_softcap_window_and_orthogonalization_not_equivalent(folder):
    report = _report(folder["gemma2"])
    assert report["family"] == report["original_architecture"] == "Gemma2ForCausalLM"
    assert report["norm"] == {"type": "RMS", "placement": "sandwich"}
    assert report["softcap"] == {"attn": 4.0, "final": 30.0}
    window = report["sliding_window"]
    assert window is not None and window["size"] == 8 and window["layers"]
    attention = report["fast_paths"]["attention"]
    assert attention["engaged_layers"] == []  # the attention soft-cap keeps TL's forward on every layer
    assert attention["why_not"]["attention-score soft-cap"] == [0, 1]
    assert set(window["layers"]) <= set(attention["why_not"]["local (sliding-window) layer"])
    ortho = report["interventions"]["weight_orthogonalization"]
    assert ortho["exact"] is False and "NOT exactly" in ortho["why"]
    assert report["interventions"]["ablation"]["exact"] is True
    text = describe(report)
    assert "sandwich-norm" in text and "weight_orthogonalization: NOT exact" in text


def test_cli_models_json_is_one_line_with_the_fields(folder, capsys):
    assert main(["models", folder["llama"], "--json", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    for field in (
        "family",
        "original_architecture",
        "n_layers",
        "d_model",
        "n_ctx",
        "dtype",
        "device",
        "norm",
        "sliding_window",
        "softcap",
        "fast_paths",
        "interventions",
    ):
        assert field in report, field
    assert report["family"] == "LlamaForCausalLM"


def test_cli_models_validates_the_spec_before_loading(tmp_path, capsys):
    assert main(["models", str(tmp_path / "missing.gguf")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
