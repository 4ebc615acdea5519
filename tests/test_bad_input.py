"""Bad input: every case ends in exit code 2 (or a ValueError in Python) with one line that names the
argument or file and the fix, before any model loads and without writing anything."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from workbench import cli
from workbench.artifacts import CACHE_ENV, Manifest, atomic_write_text, load_tensors, save_tensors
from workbench.stages import Stages

DATA = Path(__file__).parent / "data"
HARMFUL, HARMLESS = str(DATA / "unseen_harmful.txt"), str(DATA / "unseen_harmless.txt")


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch, tmp_path):
    """Any model load fails the test; the cache is a fresh folder under tmp_path."""
    import workbench.models
    import workbench.run

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was rejected")

    monkeypatch.setattr(workbench.models, "load_model", refuse)
    monkeypatch.setattr(workbench.run, "load_model", refuse)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on the CPU build
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def _files(tmp: Path) -> dict[str, Path]:
    """Named input files for the table (written fresh in each test's tmp folder)."""
    files = {
        "bad_utf8": tmp / "latin1.txt",
        "prompts": tmp / "prompts.txt",
        "no_column": tmp / "table.csv",
        "a_file": tmp / "a_file",
        "not_json": tmp / "not_json.json",
        "list_json": tmp / "list.json",
    }
    files["bad_utf8"].write_bytes("caf\xe9 request\n".encode("latin-1") * 20)
    files["prompts"].write_text("How do I bake bread?\nWrite a poem.\n")
    files["no_column"].write_text("question,answer\nhi,there\n")
    files["a_file"].write_text("x")
    files["not_json"].write_text("n_eval = 5\n")
    files["list_json"].write_text("[1, 2]")
    return files


def _config(tmp: Path, values: dict) -> str:
    path = tmp / "config.json"
    path.write_text(json.dumps(values))  # NaN is written as NaN, which json.loads reads back
    return str(path)


GEN = ["generate", "--prompts", "{prompts}"]
# (argv, config file content or None, substring of the one error line)
CASES = [
    # config values: negative sizes, wrong types, non-finite numbers, unknown names
    (["select"], {"n_eval": -5}, "RunConfig.n_eval must be at least 1, got -5 (in"),
    (["select"], {"n_sweep": 0}, "RunConfig.n_sweep must be at least 1"),
    (["select"], {"analysis": {"arditi_prompts": -3}}, "AnalysisConfig.arditi_prompts must be at least 1"),
    (["select"], {"n_eval": "5"}, "RunConfig.n_eval in {config} must be an integer, got '5'"),
    (["select"], {"max_new_tokens": 2.5}, "RunConfig.max_new_tokens in {config} must be an integer"),
    (["select"], {"analysis": {"batch_size": 8.0}}, 'AnalysisConfig.batch_size in "analysis" of {config}'),
    (["select"], {"angle_step": math.nan}, "RunConfig.angle_step must be a finite number"),
    (["select"], {"angle_step": 0}, "RunConfig.angle_step must be in (0, 360]"),
    (["select"], {"subset_sizes": [6, -1]}, "RunConfig.subset_sizes must be at least 1"),
    (["select"], {"analysis": {"kl_max": math.inf}}, "AnalysisConfig.kl_max must be a finite number"),
    (["select"], {"analysis": {"sites": ["resid_pr"]}}, "unknown site(s) ['resid_pr']; choose from resid_pre"),
    (["select"], {"analysis": {"plane_positions": [0]}}, "plane_positions must hold negative, end-relative"),
    (["select"], {"analysis": {"plane_b1_method": "nope"}}, "\"plane_b1_method\" of {config} is 'nope'; choose"),
    (["select"], {"protocol": "papers"}, "unknown protocol 'papers'"),
    (["select", "--config", "{not_json}"], None, "not_json.json: not valid JSON, line 1 column 1"),
    (["select", "--config", "{list_json}"], None, "list.json must hold a JSON object"),
    (["select", "--config", "{tmp}/missing.json"], None, "cannot read config file"),
    # intervention specs
    ([*GEN, "--intervention", "rotate:nan"], None, "angle must be a finite number, got 'nan'"),
    ([*GEN, "--intervention", "rotate:inf"], None, "angle must be a finite number, got 'inf'"),
    ([*GEN, "--intervention", "rotate:-inf:adaptive"], None, "angle must be a finite number"),
    ([*GEN, "--intervention", "rotate:ninety"], None, "angle 'ninety' is not a number"),
    ([*GEN, "--intervention", "rotate:90:sideways"], None, "rotate takes ':adaptive'"),
    ([*GEN, "--intervention", "add:nan"], None, "alpha must be a finite number"),
    ([*GEN, "--intervention", "add:1e999"], None, "alpha must be a finite number"),
    ([*GEN, "--intervention", "add:1@x"], None, "layer 'x' after @ must be a block index"),
    ([*GEN, "--intervention", "ablate:everywhere"], None, "'ablate:everywhere'; ablate takes one location"),
    # causal controls (workbench.controls)
    (
        [*GEN, "--intervention", "ablate:all", "--direction", "foo"],
        None,
        "--direction 'foo': unknown control 'foo'; choose random[:SEED] | null[:SEED]",
    ),
    (
        [*GEN, "--intervention", "rotate:90", "--plane", "null"],
        None,
        "--plane 'null': unknown control 'null'; choose random[:SEED]",
    ),
    ([*GEN, "--intervention", "add:1", "--direction", "random:-1"], None, "SEED '-1' must be a non-negative integer"),
    ([*GEN, "--intervention", "none", "--direction", "random"], None, "reads neither a direction nor a plane"),
    (
        [*GEN, "--intervention", "add:1", "--plane", "random"],
        None,
        "reads direction, so the control would change nothing",
    ),
    # generate's sizes, prompt files and output
    ([*GEN, "--max-new-tokens", "-1"], None, "--max-new-tokens must be a positive integer, got -1"),
    ([*GEN, "--max-new-tokens", "0"], None, "--max-new-tokens must be a positive integer"),
    ([*GEN, "--batch-size", "0"], None, "--batch-size must be a positive integer"),
    (["generate", "--prompts", "{bad_utf8}"], None, "latin1.txt is not UTF-8 text (byte 3"),
    (["generate", "--prompts", "{no_column}"], None, "rename the prompt column to 'prompt'"),
    (["generate", "--prompts", "{tmp}/missing.txt"], None, "prompt file not found"),
    (["generate", "--prompts", "{a_file}"], None, "unsupported prompt file"),
    ([*GEN, "--out", "{tmp}"], None, "is a folder; pass a file name"),
    ([*GEN, "--out", "{a_file}/out.jsonl"], None, "a_file is a file"),
    # export: format, what it carries, output
    (
        ["export", "--format", "onnx", "--out", "{tmp}/o"],
        None,
        "--format 'onnx' is not an export format; choose one of",
    ),
    (["export", "--format", "hf", "--intervention", "rotate:90", "--out", "{tmp}/o"], None, "carries only directional"),
    (["export", "--format", "lora", "--intervention", "ablate:all@3", "--out", "{tmp}/o"], None, "(orthogonalize, or"),
    (["export", "--format", "gguf", "--intervention", "add:2", "--out", "{tmp}/o.gguf"], None, "as --format control-v"),
    (["export", "--format", "control-vector", "--out", "{tmp}/cv.gguf"], None, "carries only activation addition"),
    (["export", "--format", "hf", "--out", "{a_file}"], None, "--out {a_file} exists; export never overwrites"),
    (["export", "--format", "gguf", "--out", "{tmp}/not_json"], None, "--out {tmp}/not_json.json exists"),
    (["export", "--format", "hf", "--out", "{a_file}/o"], None, "--out's folder {a_file} is a file"),
    (
        ["export", "--format", "lora", "--gguf-type", "q8_0", "--out", "{tmp}/o"],
        None,
        "--gguf-type applies to --format gguf",
    ),
    (
        ["export", "--format", "gguf", "--gguf-type", "q4", "--out", "{tmp}/o.gguf"],
        None,
        "--gguf-type 'q4' is not a GGUF",
    ),
    # own prompt sets
    (["run", "--harmful", HARMFUL], None, "pass both --harmful and --harmless"),
    (["select", "--harmful", "{bad_utf8}", "--harmless", HARMLESS], None, "latin1.txt is not UTF-8 text"),
    (["select", "--harmful", "{prompts}", "--harmless", HARMLESS], None, "at least 12 are needed"),
    # device, dtype, model
    (["select", "--device", "cuda"], None, "--device: device 'cuda': this torch"),
    (["select", "--device", "nope"], None, "--device: unknown device 'nope'; use cpu, cuda or cuda:N"),
    (["select", "--dtype", "float8"], None, "--dtype: unknown dtype 'float8'"),
    (["select", "--model", "./no/such/folder"], None, "no such file or folder"),
    (["select", "--model", "{tmp}/model.gguf"], None, "no such file or folder"),
    (["select", "--model", "not-a-model-name"], None, "unknown model 'not-a-model-name'"),
    # output and cache paths
    (["run", "--figures", "{a_file}"], None, "--figures {a_file} is a file, not a folder"),
    (["run", "--figures", "{a_file}/sub"], None, "cannot be created: {a_file} is a file"),
    # plane arguments
    (["plane", "--layers", "5"], None, "--layers '5' must be a range LO-HI of layer indices, e.g. 5-20"),
    (["plane", "--layers", "20-3"], None, "--layers 20-3: the range is reversed; write 3-20"),
    (["plane", "--layers", "a-b"], None, "must be a range LO-HI"),
    (["plane", "--b1", "nope"], None, "--b1 'nope' is not a selection method; choose one of max_sim"),
    (["plane", "--variant", "pc3"], None, "--variant 'pc3' is not a plane variant; choose one of pc1"),
    # refusal tokens: the option and the config key
    (["run", "--refusal-tokens", ""], None, "--refusal-tokens '' has an empty item; pass comma-separated ids"),
    (["select", "--refusal-tokens", "I,,Sorry"], None, "--refusal-tokens 'I,,Sorry' has an empty item"),
    (["select"], {"analysis": {"refusal_tokens": [-1]}}, "AnalysisConfig.refusal_tokens holds [-1]: each must be"),
    (["select"], {"analysis": {"refusal_tokens": [" "]}}, "AnalysisConfig.refusal_tokens holds [' ']"),
    (["select"], {"analysis": {"refusal_tokens": "I"}}, 'refusal_tokens in "analysis" of {config} must be a list'),
    (["select"], {"analysis": {"refusal_tokens": [1.5]}}, "must be int or str, got 1.5"),
]


def _expand(text: str, tmp: Path, files: dict[str, Path], config: str | None) -> str:
    return text.format(tmp=tmp, config=config, **files)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "config", "message"), CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_cli_input_is_one_line_and_exit_2_before_any_model_loads(argv, config, message, tmp_path, capsys):
    files = _files(tmp_path)
    config_path = _config(tmp_path, config) if config is not None else None
    argv = [_expand(a, tmp_path, files, config_path) for a in argv] + (["--config", config_path] if config_path else [])
    before = sorted(tmp_path.rglob("*"))
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"workbench {argv[0]}: error: ")
    assert _expand(message, tmp_path, files, config_path) in lines[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no cache, no output, no figures


def test_the_cache_path_being_a_file_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cachefile"))
    code, err = _run(["select"], capsys)
    assert code == 2 and f"the cache folder ($REFUSAL_WORKBENCH_CACHE or ~/.cache/refusal-workbench) {tmp_path}" in err
    assert "is a file, not a folder" in err
    from workbench.artifacts import cache_dir

    with pytest.raises(
        ValueError, match=r"cannot create the cache folder .*; set REFUSAL_WORKBENCH_CACHE to a writable"
    ):
        cache_dir("runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_figures_and_cache_are_named(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert _run(["run", "--figures", str(locked / "figs")], capsys)[1].count("is not writable") == 1
        monkeypatch.setenv(CACHE_ENV, str(locked / "cache"))
        assert "the cache folder" in _run(["select"], capsys)[1]
    finally:
        locked.chmod(0o700)


def test_an_offline_hub_name_is_one_line_naming_the_model(monkeypatch, capsys):
    import workbench.models

    monkeypatch.setattr(workbench.models, "_hub_cached", lambda repo: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = _run(["select", "--model", "Qwen/Qwen2.5-0.5B-Instruct"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model 'Qwen/Qwen2.5-0.5B-Instruct' is not in the local Hugging Face cache and could not be" in err
    assert "pass a local folder" in err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_select", interrupted)
    code, err = _run(["select"], capsys)
    assert code == 130 and err.strip().splitlines() == [
        "workbench select: interrupted; finished stages are saved, rerun the same command to resume from the last "
        "finished stage"
    ]


def test_a_non_fp32_dtype_says_it_recomputes_and_names_its_output(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Write a poem.\n")
    from workbench.intervention import parse
    from workbench.provenance import default_output

    def name(
        argv: list[str],
    ) -> str:  # the default output name, given the direction and plane (tests/test_provenance.py)
        args = cli.build_parser().parse_args(["generate", "--prompts", str(prompts), *argv])
        cli._validate(args)
        assert args.out_path is None  # named once the direction and the plane are known
        return default_output(
            args.prompts, args.model, args.dtype_name, {"intervention": str(parse(args.intervention))}
        ).name

    assert name(["--intervention", "rotate:90"]) == "p.organism-float32.rotate_90.jsonl"
    assert capsys.readouterr().err == ""
    # never the float32 run's file
    assert name(["--dtype", "float16", "--intervention", "add:1.5@3"]) == "p.organism-float16.add_1.5@3.jsonl"
    for spelling in ("rotate:90:adaptive", "rotate:90:b1"):  # one value, one file
        assert name(["--intervention", spelling]) == "p.organism-float32.rotate_90_b1.jsonl"
    assert "note: --dtype float16 gets its own run folder" in capsys.readouterr().err


def test_a_huge_but_finite_coefficient_is_accepted_with_a_note(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Write a poem.\n")
    args = cli.build_parser().parse_args(["generate", "--prompts", str(prompts), "--intervention", "add:1e9"])
    cli._validate(args)
    assert "expect incoherent text" in capsys.readouterr().err
    from workbench.intervention import Addition, Rotation, parse

    assert parse("rotate:-450") == Rotation(-450.0)  # valid: mod 360
    assert parse("add:2@-1") == Addition(2.0, layers=(-1,))  # the last layer, as before


# --------------------------------------------------------------------------- Python API


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: c.RunConfig(n_eval=-5), "RunConfig.n_eval must be at least 1, got -5"),
        (lambda c: c.RunConfig(n_eval="5"), "RunConfig.n_eval must be an integer, got '5'"),
        (lambda c: c.RunConfig(angle_step=math.inf), "RunConfig.angle_step must be a finite number"),
        (lambda c: c.AnalysisConfig(arditi_prompts=-3), "AnalysisConfig.arditi_prompts must be at least 1"),
        (lambda c: c.AnalysisConfig(batch_size=None), "AnalysisConfig.batch_size must be an integer, got None"),
        (lambda c: c.AnalysisConfig(arditi_site="resid"), "AnalysisConfig.arditi_site has unknown site(s)"),
    ],
)
def test_configs_check_types_and_ranges_in_python_too(make, message):
    import workbench.config as c

    with pytest.raises(ValueError) as info:
        make(c)
    assert message in str(info.value)


def test_configs_convert_like_a_file_does():
    from workbench.config import AnalysisConfig, RunConfig

    assert RunConfig(angle_step=45, subset_sizes=[6]) == RunConfig(angle_step=45.0, subset_sizes=(6,))
    assert AnalysisConfig(sites=["resid_pre"]).sites == ("resid_pre",)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(d_model=16, n_heads=2, d_mlp=32, n_ctx=16, d_vocab=20, normalization_type="RMS")


@pytest.mark.parametrize("theta", [math.nan, math.inf, -math.inf, torch.tensor([0.0, math.nan])])
def test_rotation_rejects_non_finite_angles(tiny, theta):
    from workbench.interventions import rotation_hooks

    basis = torch.linalg.qr(torch.randn(16, 2))[0].T
    with pytest.raises(ValueError, match="theta_deg must be finite"):
        rotation_hooks(tiny, basis, theta, site="pre_gain")


def test_rotation_takes_any_finite_angle_mod_360(tiny):
    from workbench.interventions import rotation_hooks

    basis = torch.linalg.qr(torch.randn(16, 2, generator=torch.Generator().manual_seed(0)))[0].T
    tokens = torch.tensor([[1, 2, 3, 4]])
    with tiny.hooks(fwd_hooks=rotation_hooks(tiny, basis, 10.0, site="pre_gain")):
        ten = tiny(tokens)
    with tiny.hooks(fwd_hooks=rotation_hooks(tiny, basis, 370.0, site="pre_gain")):
        again = tiny(tokens)
    torch.testing.assert_close(ten, again, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [math.nan, math.inf, torch.tensor([1.0, math.inf])])
def test_addition_rejects_non_finite_coefficients(alpha):
    from workbench.interventions import addition_hooks

    with pytest.raises(ValueError, match="alpha must be finite"):
        addition_hooks(torch.ones(16), alpha=alpha, layers=[0])


def test_a_prompt_longer_than_the_context_is_named():
    from workbench.chat import check_lengths

    prompts = ["short", "x" * 100_000]
    too_long = r"prompt 1 \('xxxx.*\) is 9 tokens \+ 8 new tokens, more than the model's context of 16 tokens"
    with pytest.raises(ValueError, match=too_long):
        check_lengths([[1] * 5, [1] * 9], 16, prompts, reserve=8)
    check_lengths([[1] * 5, [1] * 9], 16, prompts)  # fits without the new tokens


def test_generation_checks_prompt_lengths_before_any_forward():
    from types import SimpleNamespace

    from workbench.generation import generate, last_token_scores

    class Tokenizer:  # one token per character; the model below must never run
        add_bos_token = False

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [[1] * len(t) for t in texts]}

    model = SimpleNamespace(tokenizer=Tokenizer(), cfg=SimpleNamespace(n_ctx=64, device="cpu", d_vocab=10))
    prompts = ["short", "y" * 100_000]
    with pytest.raises(ValueError, match=r"prompt 1 \('yyy.*is 100000 tokens \+ 32 new tokens.*context of 64"):
        generate(model, prompts, templated=True)
    with pytest.raises(ValueError, match=r"prompt 1 .* is 100000 tokens, more than the model's context of 64"):
        last_token_scores(model, prompts, templated=True)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer, got -1"):
        generate(model, ["short"], templated=True, max_new_tokens=-1)


# --------------------------------------------------------------------------- cached artifacts


def _stage(stages: Stages, path: Path, calls: list[str], value: str = "42"):
    def compute():
        calls.append("compute")
        atomic_write_text(path, value)
        return value

    return stages.run("a", [path], compute, lambda: calls.append("load") or path.read_text())


def test_a_cached_file_replaced_since_its_stage_is_set_aside_and_recomputed(tmp_path, capsys):
    calls: list[str] = []
    path = tmp_path / "direction.txt"
    _stage(Stages(manifest=Manifest(tmp_path / "manifest.json")), path, calls)
    path.write_text("43")  # another valid value, not the one the manifest recorded
    assert _stage(Stages(manifest=Manifest(tmp_path / "manifest.json")), path, calls) == "42"
    assert calls == ["compute", "compute"]
    assert (tmp_path / "direction.txt.corrupt").read_text() == "43"
    err = capsys.readouterr().err
    assert f"{path} differs from the sha256 the manifest recorded; moved it to direction.txt.corrupt" in err
    _stage(Stages(manifest=Manifest(tmp_path / "manifest.json")), path, calls)
    assert calls == ["compute", "compute", "load"]  # the recomputed file is recorded and trusted again


def test_a_truncated_safetensors_is_named_set_aside_and_recomputed(tmp_path, capsys):
    path = tmp_path / "acts.safetensors"
    save_tensors(path, {"x": torch.arange(1000.0)}, {"n": 1})
    path.write_bytes(path.read_bytes()[:100])  # truncated; no manifest to compare with
    calls: list[str] = []

    def compute():
        calls.append("compute")
        save_tensors(path, {"x": torch.arange(3.0)}, {"n": 1})
        return load_tensors(path)[0]

    got = Stages().run("activations", [path], compute, lambda: load_tensors(path)[0])
    assert calls == ["compute"] and got["x"].tolist() == [0.0, 1.0, 2.0]
    err = capsys.readouterr().err
    assert f"{path} cannot be read" in err and "moved it to acts.safetensors.corrupt, recomputing" in err


def test_json_output_never_holds_nan(capsys):
    """A NaN score (e.g. a zero-norm candidate's) is printed as null: every --json line parses as JSON."""
    from workbench.cli import _emit

    _emit({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "nan", "e": 2}, True)
    line = capsys.readouterr().out.strip()
    assert json.loads(line) == {"a": None, "b": [1.0, None, {"c": None}], "d": "nan", "e": 2}
    assert "NaN" not in line and "Infinity" not in line
