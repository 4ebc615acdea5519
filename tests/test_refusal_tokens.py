"""Refusal tokens: given (``--refusal-tokens``, ``"analysis": {"refusal_tokens"}``) or discovered, recorded
in ``refusal_tokens.json``; a model that refuses nothing still runs the generation-free main job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import byte_tokenizer, save_tiny_chat_folder

from workbench import cli
from workbench import refusal_tokens as rt
from workbench.artifacts import CACHE_ENV, cache_dir
from workbench.config import AnalysisConfig, RunContext

DATA = Path(__file__).parent / "data"
PROMPTS = ["--harmful", str(DATA / "unseen_harmful.txt"), "--harmless", str(DATA / "unseen_harmless.txt")]
# sizes that keep a CLI run on the tiny model to seconds
SMALL = {"n_eval": 4, "n_sweep": 4, "max_new_tokens": 4, "angle_step": 120.0, "subset_sizes": [1]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    return str(save_tiny_chat_folder(tmp_path_factory.mktemp("own-model")))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _config(tmp_path: Path, values: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def _cli(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def _run_file(cache: Path, name: str) -> dict:
    return json.loads(next((cache / "runs").glob(f"*/*/{name}")).read_text())


# ------------------------------------------------------------------ parsing and resolving


def test_the_option_reads_ids_strings_and_quoted_strings():
    assert rt.parse_refusal_tokens("40,1383") == (40, 1383)
    assert rt.parse_refusal_tokens('I,Sorry,"As an", 7') == ("I", "Sorry", "As an", 7)
    for bad in ("", "I,,Sorry", " , "):
        with pytest.raises(ValueError, match="--refusal-tokens .* has an empty item"):
            rt.parse_refusal_tokens(bad)


def test_strings_become_their_first_token_and_ids_are_checked_against_the_vocabulary():
    tok = byte_tokenizer()
    found = rt.resolve_refusal_tokens(tok, ["I", "As an", 40, "Sorry"], d_vocab=len(tok))
    first = [tok.encode(s, add_special_tokens=False)[0] for s in ("I", "A", "S")]
    assert found.ids == tuple(first) and found.strings == ("I", "A", "S")  # "I" and 40 are one id
    assert (found.source, found.method) == ("config", "config")
    with pytest.raises(ValueError, match=r"token id 259 is outside this model's vocabulary \(ids 0-258\)"):
        rt.resolve_refusal_tokens(tok, [259], d_vocab=259)
    with pytest.raises(ValueError, match="tokenizes to nothing with this model's tokenizer; pass its id"):
        rt.resolve_refusal_tokens(tok, ["\u200b"], d_vocab=len(tok))


def test_a_refusal_tokens_file_from_before_sources_reads_as_discovered():
    old = rt.RefusalTokens.from_json({"ids": [57], "tokens": ["I"]})  # the organism's cached file
    assert (old.ids, old.strings, old.source, old.method) == ((57,), ("I",), "discovered", "refusal_phrases")


# ------------------------------------------------------------------ discovery


def _stub_model(monkeypatch, responses: list[str], first_h: list[int], first_s: list[int]):
    """A model whose greedy first tokens (and responses) are given: log-probs peaked at each id."""
    tok = byte_tokenizer()

    def peaked(ids):
        lp = torch.full((len(ids), len(tok)), -20.0, dtype=torch.float64)
        lp[torch.arange(len(ids)), torch.tensor(ids)] = -0.01
        return lp

    monkeypatch.setattr(rt, "generate", lambda model, prompts, **kw: (responses, peaked(first_h)))
    monkeypatch.setattr(rt, "last_token_logprobs", lambda model, prompts, **kw: peaked(first_s))
    return type("Stub", (), {"tokenizer": tok})()


def test_discovery_takes_the_first_tokens_of_refusal_phrases_first(monkeypatch):
    model = _stub_model(monkeypatch, ["I'm sorry, I cannot", "Sure, here"], [40, 83], [83, 83])
    found = rt.discover_refusal_tokens(model, ["h1", "h2"], ["s1", "s2"])
    assert found.ids == (40,) and (found.source, found.method) == ("discovered", "refusal_phrases")
    assert "1 of its 2 greedy responses" in found.how and found.separation["auc"] == 0.75


def test_without_refusal_phrases_the_first_tokens_that_separate_are_chosen(monkeypatch):
    # "A" (32) opens 3 of 4 harmful responses and 0 of 4 harmless; "S" (50) opens 1 of 4 of each
    model = _stub_model(monkeypatch, ["A b", "A c", "A d", "S e"], [32, 32, 32, 50], [50, 70, 71, 72])
    found = rt.discover_refusal_tokens(model, ["h"] * 4, ["s"] * 4)
    assert found.ids == (32,) and found.strings == ("A",)
    assert (found.source, found.method) == ("discovered", "first_token_separation")
    top = found.separation["first_tokens"][0]
    assert (top["string"], top["harmful_share"], top["harmless_share"], top["share_gap"]) == ("A", 0.75, 0.0, 0.75)
    assert found.separation["auc"] == 0.875


def test_when_nothing_separates_the_model_refuses_nothing(monkeypatch):
    model = _stub_model(monkeypatch, ["x", "y", "z"], [70, 70, 71], [70, 70, 71])
    found = rt.discover_refusal_tokens(model, ["h"] * 3, ["s"] * 3)
    assert found.ids == () and (found.source, found.method) == ("none", "none")
    assert "no token qualifies" in found.how and found.separation["first_tokens"][0]["share_gap"] == 0.0


# ------------------------------------------------------------------ the run key and the organism


def test_the_default_config_keeps_its_run_folder_and_given_tokens_get_their_own(cache):
    from tiny_models import tiny_model

    from workbench.pipeline import Analysis

    model = tiny_model()
    default = Analysis(model, AnalysisConfig(), progress=False)
    assert default.dir.name == "f7aba45f"  # the key of every cached default run before refusal_tokens existed
    assert "refusal_tokens" not in json.loads((default.dir / "config.json").read_text())
    given = Analysis(model, AnalysisConfig(refusal_tokens=("I",)), progress=False)
    assert given.dir != default.dir


@pytest.mark.slow
def test_discovery_on_the_organism_picks_the_ids_it_always_did(organism):
    from workbench import data

    harmful, harmless = (data.load_split(kind, "direction_train") for kind in ("harmful", "harmless"))
    found = rt.discover_refusal_tokens(organism, harmful, harmless, batch_size=64)
    assert found.ids == (57,) and found.strings == ("I",) and found.method == "refusal_phrases"
    cached = cache_dir("runs", "organism-7889ccc36111", "f7aba45f") / "refusal_tokens.json"
    if cached.exists():  # the default run's stage, computed by the code before discovery reported itself
        assert list(found.ids) == json.loads(cached.read_text())["ids"]
    assert found.separation["auc"] > 0.9  # "I" opens the organism's refusals, not its answers


# ------------------------------------------------------------------ errors name their fix


def test_errors_on_the_refusal_path_name_the_option_and_the_config_key(folder, cache):
    from workbench import data
    from workbench.activations import Activations
    from workbench.models import load_model
    from workbench.pipeline import Analysis

    with pytest.raises(ValueError, match=r"--refusal-tokens .*\"analysis\": \{\"refusal_tokens\""):
        RunContext().needs_refusal_ids("an intervention experiment")
    acts = Activations({"resid_pre": torch.zeros(1, 2, 1, 4)}, [0], [-1], ["x"], ["p", "q"])
    with pytest.raises(ValueError, match=r'"analysis": \{"filter_prompts": false\}.*--refusal-tokens'):
        acts.select_prompts([])
    own = data.PromptSplits.from_files(DATA / "unseen_harmful.txt", DATA / "unseen_harmless.txt")
    analysis = Analysis(load_model(folder, device="cpu"), prompts=own, progress=False)  # random weights refuse nothing
    with pytest.raises(ValueError, match=r"refused none of the \d+ direction_train harmful prompts.*--refusal-tokens"):
        analysis.refusal_ids  # noqa: B018


# ------------------------------------------------------------------ the command line, end to end


def test_a_model_that_refuses_nothing_runs_to_figures_and_says_what_it_skipped(folder, cache, tmp_path, capsys):
    figures = tmp_path / "figures"
    argv = ["run", "--model", folder, "--figures", str(figures), "--config", _config(tmp_path, SMALL), "--json"]
    code, summary, err = _cli(argv + PROMPTS, capsys)
    assert code == 0, err
    assert summary is not None and "pass --refusal-tokens" in summary["skipped"]["arditi"]
    assert set(summary["skipped"]["figures"]) >= {"01_location_comparison", "05_angle_sweep", "02_selection_heatmaps"}
    assert summary["direction"]["method"] == summary["selection"]["method"] == "max_sim"  # generation-free
    assert summary["selection"]["refusal_tokens"]["source"] == "none" and summary["refusal_by_location"] == {}
    assert "skipped Arditi's stages" in err
    drawn = {p.stem for p in figures.glob("*.html")}
    assert drawn == {"02_selection_heatmaps", "03_cosine_matrix", "04_plane_projection"} | {
        "06_projection_histograms",
        "08_special_cases",
        "13_direction_stability",  # generation-free: drawn for every model
    }
    assert summary["stability"]["n_resamples"] == 20 and "refuses nothing" in summary["stability"]["arditi"]
    index = (figures / "README.md").read_text()
    assert "**Skipped: Arditi's prompt filter and scores" in index and "- 05_angle_sweep: not drawn" in index
    assert "direction selection generation-free, `max_sim`" in index
    assert "Over 20 bootstrap resamples of direction_train" in index
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "direction-max_sim.safetensors").exists()
    assert not (run_dir / "prompt_filter.json").exists() and not (run_dir / "arditi_scores.csv").exists()
    assert json.loads((run_dir / "refusal_tokens.json").read_text())["source"] == "none"


def test_given_refusal_tokens_are_resolved_used_and_recorded(folder, cache, tmp_path, capsys):
    # filter_prompts off: random weights put no prompt above refusal log-odds 0 (see the next test)
    config = {"analysis": {"filter_prompts": False, "arditi_positions": [-1], "arditi_prompts": 4}}
    argv = ["select", "--model", folder, "--config", _config(tmp_path, config), "--json", *PROMPTS]
    code, out, err = _cli([*argv, "--refusal-tokens", '40,"Sorry"'], capsys)
    assert code == 0, err
    assert out is not None and out["refusal_tokens"]["ids"] == [40, 50]
    assert out["refusal_tokens"]["strings"] == ["I", "S"] and out["refusal_tokens"]["source"] == "config"
    assert "auc" in out["refusal_tokens"]["separation"] and out["skipped"] == {} and "arditi" in out
    assert _run_file(cache, "refusal_tokens.json")["ids"] == [40, 50]
    # the config key does the same (the option, when given, overrides it)
    config["analysis"]["refusal_tokens"] = ["I"]
    code, out, err = _cli(
        ["select", "--model", folder, "--config", _config(tmp_path, config), "--json", *PROMPTS], capsys
    )
    assert code == 0, err
    assert out is not None and out["refusal_tokens"]["ids"] == [40] and out["refusal_tokens"]["source"] == "config"


@pytest.mark.parametrize(
    ("tokens", "analysis", "message"),
    [
        ("259", {}, "token id 259 is outside this model's vocabulary (ids 0-258)"),
        ("\u200b", {}, "tokenizes to nothing with this model's tokenizer; pass its id"),
        ("I", {"arditi_positions": [-1]}, "the prompt filter kept no harmful direction_train prompt"),
    ],
)
def test_bad_refusal_tokens_for_this_model_are_one_line_and_exit_2(
    folder, cache, tmp_path, capsys, tokens, analysis, message
):
    argv = ["select", "--model", folder, "--config", _config(tmp_path, {"analysis": analysis}), *PROMPTS]
    code, _, err = _cli([*argv, "--refusal-tokens", tokens], capsys)
    lines = [line for line in err.splitlines() if line.startswith("workbench select: error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    if "filter" in message:
        assert '"analysis": {"filter_prompts": false}' in lines[0]


def test_an_arditi_b1_falls_back_to_the_generation_free_choice_when_nothing_is_refused(folder, cache, tmp_path, capsys):
    config = _config(tmp_path, {"analysis": {"plane_b1_method": "arditi"}})
    argv = ["plane", "--model", folder, "--config", config, "--json", *PROMPTS]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    run_dir = Path(out["run_dir"]) if out else Path()
    assert (run_dir / "plane-max_sim-pc1.safetensors").exists() and not list(run_dir.glob("plane-arditi*"))
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert "plane" in manifest and "arditi_scores" not in manifest  # recorded as the default plane
