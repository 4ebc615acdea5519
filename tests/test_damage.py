"""workbench damage: CE loss equals a log-softmax computed by hand on a tiny model, the shipped held-out
answers are the base model's and disjoint from the organism's training prompts, the command's JSON
keys on the organism (slow) and its bad input (exit 2, one clear error); the main job's damage stage:
batched CE equals one reference pass per setting, the summary's numbers from hand-made tables,
figure 12, the key numbers and the index line, and ``none`` generating once."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from test_intervals import index_summary
from tiny_models import byte_tokenizer, tiny_model

from workbench import damage as dm
from workbench import data, report, stats
from workbench import experiments as ex
from workbench import figures as fg
from workbench.artifacts import CACHE_ENV, cache_dir, cache_root
from workbench.cli import main
from workbench.config import RunConfig
from workbench.damage import load_heldout_answers
from workbench.directions import Direction
from workbench.experiments import reference_cross_entropy
from workbench.intervention import parse
from workbench.interventions import rotation_hooks
from workbench.pipeline import model_key
from workbench.report import write_index
from workbench.run import run_main


def _by_hand(model, prompt: str, answer: str) -> float:
    """Mean −log p(answer token | everything before it), one unpadded forward, log-softmax by hand."""
    tok = model.tokenizer
    context = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(context + answer, add_special_tokens=False)["input_ids"]
    n_answer = len(tok(answer, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    total = 0.0
    for t in range(len(ids) - n_answer, len(ids)):  # position t is predicted from position t - 1
        row = logits[t - 1]
        log_z = torch.log(torch.exp(row - row.max()).sum()) + row.max()
        total += float(log_z - row[ids[t]])
    return total / n_answer


def test_truncated_answers_keep_their_first_tokens_and_score_as_a_prefix():
    """The main job's damage stage scores each answer's first ``damage_tokens`` tokens: the cut keeps
    exactly those tokens (a short answer whole), and the CE of the cut answer is the mean of the first
    tokens' losses of the whole answer (the same positions, the same context)."""
    tok = byte_tokenizer()  # one token per byte
    model = tiny_model(llama=True, d_vocab=len(tok), n_ctx=256)
    model.tokenizer = tok
    answers = ["The tides rise twice a day.", "Blue."]
    cut = dm.truncate_answers(tok, answers, 8)
    assert cut == ["The tide", "Blue."]
    with pytest.raises(ValueError, match="at least 1"):
        dm.truncate_answers(tok, answers, 0)
    prompt = ["Say something about the sea"]
    whole = _by_hand(model, prompt[0], answers[0])
    first = reference_cross_entropy(model, prompt, [cut[0]], batch_size=1).item()
    per_token = [_by_hand(model, prompt[0], answers[0][: k + 1]) * (k + 1) for k in range(8)]
    losses = [per_token[0]] + [b - a for a, b in zip(per_token, per_token[1:])]
    assert first == pytest.approx(sum(losses) / 8, abs=1e-4)
    assert first != pytest.approx(whole, abs=1e-4)  # the cut scores fewer tokens, not the whole answer


@pytest.mark.parametrize("llama", [False, True])
def test_ce_loss_equals_a_manual_log_softmax_over_the_answer_tokens(llama):
    tok = byte_tokenizer()
    model = tiny_model(llama=llama, d_vocab=len(tok), n_ctx=256)
    model.tokenizer = tok  # attached afterwards: TL's own tokenizer set-up wants a hub name
    prompts = ["Name a colour", "Say something longer about the sea and its tides"]
    answers = ["Blue.", "The tides rise twice a day."]
    got = reference_cross_entropy(model, prompts, answers, batch_size=2)  # left-padded batch of both
    want = [_by_hand(model, p, a) for p, a in zip(prompts, answers)]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_heldout_answers_are_the_harmless_test_split_not_organism_training():
    prompts, answers = load_heldout_answers()
    assert len(prompts) == 54 and all(a.strip() for a in answers)
    assert set(prompts) == set(data.load_split("harmless", "test"))
    assert not set(prompts) & set(data.load_split("harmless", "organism_train"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--intervention", "ablate:all", "--direction", "foo"], "choose random[:SEED] | null[:SEED]"),
        (["--intervention", "rotate:180", "--direction", "random"], "reads plane"),
        (["--intervention", "ablate:all", "--plane", "random:x"], "SEED 'x' must be a non-negative integer"),
        (["--intervention", "ablate:all", "--n", "0"], "--n must be a positive integer"),
        (["--intervention", "ablate:nowhere"], "ablate:nowhere"),
    ],
)
def test_damage_bad_input_exits_2_naming_the_fix(argv, message, capsys):
    assert main(["damage", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1


@pytest.mark.slow
def test_damage_json_keys_on_the_organism(capsys):
    assert main(["damage", "--intervention", "ablate:all", "--n", "4", "--max-new-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ce_loss", "ce_loss_baseline", "ce_loss_ci95", "kl", "degenerate_rate", "n"):
        assert key in out, key
    assert out["n"] == 4 and out["ce_loss_ci95"][0] <= out["ce_loss"] <= out["ce_loss_ci95"][1]
    assert out["kl"] > 0 and 0 <= out["degenerate_rate"] <= 1


# ------------------------------------------------------------------------------ the main job's damage stage


def _tiny_chat_model():
    tok = byte_tokenizer()
    model = tiny_model(llama=True, d_vocab=len(tok), n_ctx=256)
    model.tokenizer = tok
    return model


PROMPTS = ["Name a colour", "Say something longer about the sea and its tides", "Count to three"]
ANSWERS = ["Blue.", "The tides rise twice a day.", "One, two, three."]


def test_batched_ce_of_each_location_condition_equals_its_own_reference_pass():
    model = _tiny_chat_model()
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(1)) * 4, site="resid_pre", layer=1)
    conditions = ["none", "all", "addition"]
    hooks_for = ex.location_hooks_for(model, direction, conditions, layer=1, alpha=3.0)
    # batches of 4 rows straddle the settings: each row's hooks must follow it
    got = ex.batched_cross_entropy(model, PROMPTS, ANSWERS, len(conditions), hooks_for, batch_size=4)
    one_by_one = [
        [],
        parse("ablate:all").hooks(model, direction),
        replace(parse("add"), alpha=3.0, layers=(1,)).hooks(model, direction),
    ]
    want = torch.stack([reference_cross_entropy(model, PROMPTS, ANSWERS, hooks=h) for h in one_by_one])
    assert got.shape == (3, 3)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert (want[1:] - want[0]).abs().min() > 1e-3  # the settings differ, so a mix-up would show


def test_batched_ce_of_each_angle_equals_its_own_reference_pass():
    model = _tiny_chat_model()
    q, _ = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    plane, angles = q.T.float(), [0.0, 90.0, 180.0, 270.0]
    hooks_for = ex.angle_hooks_for(model, plane, angles, site="post_gain")
    got = ex.batched_cross_entropy(model, PROMPTS, ANSWERS, len(angles), hooks_for, batch_size=5)
    want = torch.stack(
        [
            reference_cross_entropy(model, PROMPTS, ANSWERS, hooks=rotation_hooks(model, plane, a, site="post_gain"))
            for a in angles
        ]
    )
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert (want[1:] - want[0]).abs().min() > 1e-4


def _responses(setting: str, refused_harmful, harmless, refused_harmless=None, kl=None) -> list[dict]:
    rows = [
        {"setting": setting, "split": "harmful", "prompt": f"h{i}", "response": "...", "refused": r, "kl": 0.0}
        for i, r in enumerate(refused_harmful)
    ]
    refused_harmless = refused_harmless or [False] * len(harmless)
    kl = kl or [0.0] * len(harmless)
    rows += [
        {"setting": setting, "split": "harmless", "prompt": f"s{i}", "response": r, "refused": f, "kl": k}
        for i, (r, f, k) in enumerate(zip(harmless, refused_harmless, kl))
    ]
    return rows


def _hand_tables():
    texts = {
        ("unsteered", "none"): [1.0, 2.0, 4.0],
        ("locations", "none"): [1.0, 2.0, 4.0],
        ("locations", "all"): [1.5, 2.5, 4.5],
        ("angle_sweep", "180"): [3.0, 2.0, 4.0],
    }
    ce = pd.DataFrame(
        [{"experiment": e, "setting": s, "text": i, "ce": c} for (e, s), cs in texts.items() for i, c in enumerate(cs)]
    )
    fine = ["Sure, here is a short answer.", "A fine reply.", "Of course."]
    locations = pd.DataFrame(
        _responses("none", [True, True, True, False], fine)
        + _responses(
            "all",
            [False, False, True, False],
            ["!!!!!!!!!!!!!!", "ok fine answer", "the the the the the the"],
            refused_harmless=[True, False, False],
            kl=[0.1, 0.2, 0.6],
        )
    )
    # the sweep ran on the first two prompts of each split
    sweep = pd.DataFrame(_responses("180", [False, True], fine[:2]))
    none = locations[locations.setting == "none"]
    return ce, locations, sweep, none


def test_damage_summary_from_hand_made_tables():
    ce, locations, sweep, none = _hand_tables()
    experiments = [
        dm.DamageExperiment("locations", ("none", "all"), None, locations, none),
        dm.DamageExperiment("angle_sweep", ("180",), None, sweep, dm.prefix_rows(none, sweep)),
    ]
    summary = dm.damage_summary(ce, experiments).set_index(["experiment", "setting"])
    base = summary.loc[("unsteered", "none")]
    assert base.ce_loss == pytest.approx(7 / 3) and base.ce_delta == 0.0
    every = summary.loc[("locations", "all")]
    # every text's CE rose by exactly 0.5: the paired interval is the point
    assert (every.ce_delta, every.ce_delta_ci_lo, every.ce_delta_ci_hi) == pytest.approx((0.5, 0.5, 0.5))
    assert every.ce_loss == pytest.approx(17 / 6) and every.ce_ci_lo < every.ce_loss < every.ce_ci_hi
    # a character run and a word loop of three harmless responses; mean KL of the harmless prompts
    assert (every.n_degenerate, every.n_harmless, every.kl) == (2, 3, pytest.approx(0.3))
    assert (every.degenerate_ci_lo, every.degenerate_ci_hi) == pytest.approx(stats.wilson_interval(2, 3))
    # harmful: 3 of 4 refused unsteered, 1 of 4 ablated (both: 1, before only: 2, after only: 0, neither: 1)
    assert every.refusal_removed == 0.5
    assert (every.refusal_removed_ci_lo, every.refusal_removed_ci_hi) == pytest.approx(
        stats.paired_difference_interval(1, 2, 0, 1)
    )
    assert every.refusal_induced == pytest.approx(1 / 3)
    # the sweep's baseline is the locations' none rows of its own two prompts: 2 of 2 refused → 1 of 2
    sweep_row = summary.loc[("angle_sweep", "180")]
    assert sweep_row.refusal_removed == 0.5 and sweep_row.n_harmful == 2
    assert sweep_row.ce_delta == pytest.approx(2 / 3) and sweep_row.n_degenerate == 0
    assert summary.loc[("locations", "none")].refusal_removed == 0.0


def test_the_sweep_gets_no_baseline_when_its_prompts_are_not_a_prefix():
    ce, locations, sweep, none = _hand_tables()
    other = sweep.assign(prompt=sweep.prompt + "-other")
    assert dm.prefix_rows(none, other).empty
    experiments = [dm.DamageExperiment("angle_sweep", ("180",), None, other, dm.prefix_rows(none, other))]
    row = dm.damage_summary(ce, experiments).set_index("setting").loc["180"]
    assert row.refusal_removed != row.refusal_removed  # NaN, not a difference of other prompts' rates
    with pytest.raises(ValueError, match="same prompts"):
        dm.damage_summary(ce, [dm.DamageExperiment("angle_sweep", ("180",), None, other, none)])


def test_stored_ce_lacking_a_setting_is_refused(tmp_path):
    ce, *_ = _hand_tables()
    path = tmp_path / "damage_per_prompt.csv"
    ce.to_csv(path, index=False)
    specs = [("locations", ("none", "all"), None), ("angle_sweep", (180.0,), None)]
    assert len(dm.load_cross_entropy(path, [("locations", ("none", "all"), None)], 3)) == len(ce)
    with pytest.raises(ValueError, match=r"angle_sweep/180\.0"):
        dm.load_cross_entropy(path, specs, 3)
    with pytest.raises(ValueError, match="random:0/all"):
        dm.load_cross_entropy(path, [("controls", ("random:0/all",), None)], 3)


def test_damage_figure_has_one_marker_per_setting_and_the_key_numbers_and_index(tmp_path):
    ce, locations, sweep, none = _hand_tables()
    experiments = [
        dm.DamageExperiment("locations", ("none", "all"), None, locations, none),
        dm.DamageExperiment("angle_sweep", ("180",), None, sweep, dm.prefix_rows(none, sweep)),
    ]
    summary = dm.damage_summary(ce, experiments)
    fig = fg.damage_vs_effect(summary, model="tiny")
    left = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in left] == ["none", "everywhere", "steering angle (refusal plane)"]
    assert sum(len(t.x) for t in left) == 3 and sum(len(t.x) for t in fig.data) == 6  # 3 settings × 2 panels
    (angles,) = [t for t in left if t.text is not None]
    assert list(angles.text) == ["180°"] and "KL" in angles.hovertext[0]
    everywhere = next(t for t in left if t.name == "everywhere")
    assert list(everywhere.y) == [pytest.approx(0.5)] and everywhere.error_x.array[0] > 0

    tables = SimpleNamespace(damage=summary)
    numbers = report._damage_numbers(tables)["damage"]  # type: ignore[arg-type]
    assert numbers["n"] == 3 and numbers["text"] == "harmless_heldout_answers.jsonl"
    assert set(numbers["settings"]) == {"locations/none", "locations/all", "angle_sweep/180"}
    every = numbers["settings"]["locations/all"]
    assert every["ce_loss_delta"] == 0.5 and every["n_degenerate"] == 2 and every["refusal_removed"] == 0.5
    assert every["refusal_removed_ci95"] == [round(x, 4) for x in stats.paired_difference_interval(1, 2, 0, 1)]
    text = write_index(tmp_path, {}, {}, index_summary(refusal_by_location={}, damage=numbers)).read_text()
    (lo, hi), (dlo, dhi) = every["refusal_removed_ci95"], every["degenerate_rate_ci95"]
    assert (
        f"- locations/all: ΔCE +0.50 [0.50, 0.50] nats, KL 0.30, degenerate 0.67 [{dlo:.2f}, {dhi:.2f}] (n=3), "
        f"refusal removed 0.50 [{lo:.2f}, {hi:.2f}]"
    ) in text


def test_damage_none_generates_once(monkeypatch):
    model = _tiny_chat_model()
    calls = []
    real = dm.generate

    def counted(*args, **kwargs):
        calls.append(kwargs.get("hooks"))
        return real(*args, **kwargs)

    monkeypatch.setattr(dm, "generate", counted)
    monkeypatch.setattr(dm, "load_heldout_answers", lambda: (PROMPTS, ANSWERS))
    direction = Direction(torch.ones(32), site="resid_pre", layer=1)
    out = dm.measure_damage(model, parse("none"), direction, n=2, max_new_tokens=3, batch_size=2)
    assert len(calls) == 1 and out["kl"] == 0.0 and out["ce_loss_delta"] == 0.0
    calls.clear()
    dm.measure_damage(model, parse("ablate:all"), direction, n=2, max_new_tokens=3, batch_size=2)
    assert len(calls) == 2


def _seed_analysis(model, real_runs: Path, cache: Path) -> None:
    """Copy the default analysis folder of ``model`` (activations hard-linked), when the real cache has
    one, into the tmp cache: the main job then reuses its analysis and computes only its experiments."""
    key = model_key(model)
    source = real_runs / key / "f7aba45f"  # the default AnalysisConfig's key (never changes)
    if not source.is_dir():
        return
    target = cache / "runs" / key / "f7aba45f"
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file():
            try:
                os.link(f, target / f.name)  # stages replace files atomically, never write into them
            except OSError:
                shutil.copy2(f, target / f.name)


@pytest.mark.slow
def test_main_job_damage_stage_is_written_reused_and_prices_rotation_above_ablation(organism, tmp_path, monkeypatch):
    real_runs, models = cache_root() / "runs", cache_dir("models")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)  # the organism is built already; runs go to tmp
    _seed_analysis(organism, real_runs, tmp_path / "cache")
    config = RunConfig(n_eval=8, n_sweep=4, angle_step=90.0, subset_sizes=(12,))
    summary = run_main(config=config, figures_dir=tmp_path / "figures", progress=False)
    folder = Path(summary["manifest"]).parent
    ce = pd.read_csv(folder / "damage_per_prompt.csv")
    # the unsteered pass, 6 conditions, 4 angles, 3 control directions, the random plane at 4 angles
    assert len(ce) == config.n_damage * (1 + 6 + 4 + 3 + 4)
    assert list(ce.columns) == ["experiment", "setting", "text", "ce"]
    assert (folder / "damage.csv").exists() and "damage" in summary["timings_s"]
    assert (tmp_path / "figures" / "12_damage_vs_effect.html").exists()
    damage = summary["damage"]["settings"]
    angles = (0, 90, 180, 270)
    assert set(damage) == {f"locations/{c}" for c in ex.CONDITIONS} | {f"angle_sweep/{a}" for a in angles} | {
        f"controls/{c}" for c in ("random:0/all", "random:0/addition", "null:0/all")
    } | {f"plane_control/{a}" for a in angles}
    ablate, rotate = damage["locations/all"], damage["angle_sweep/180"]
    # ablation removes refusal at a small CE cost; rotating to 180° costs several times more
    assert 0 < ablate["ce_loss_delta_ci95"][0] and ablate["ce_loss_delta_ci95"][1] < rotate["ce_loss_delta_ci95"][0]
    assert ablate["refusal_removed"] > 0.5 and damage["locations/none"]["refusal_removed"] == 0.0
    assert abs(damage["locations/none"]["ce_loss_delta"]) < 1e-3  # the same unsteered texts

    again = run_main(config=config, figures_dir=tmp_path / "figures", progress=False)
    stages = json.loads(Path(summary["manifest"]).read_text())["stages"]
    assert stages["damage"]["reused"] and again["damage"] == summary["damage"]
