"""What an intervention costs the model on harmless text (``workbench damage``), three ways:

* **CE loss**: the mean next-token cross-entropy (nats) of shipped held-out answers, given each
  chat-formatted prompt, over the answer tokens only
  (:func:`~workbench.experiments.reference_cross_entropy`), with and without the intervention.
  The answers are the *base* model's own (:data:`HELDOUT_ANSWERS`: SmolLM2-135M-Instruct, greedy,
  to the harmless ``test`` split, disjoint from the organism's training prompts), never the
  organism's training targets. Each text's CE is the mean over its answer tokens; ``ce_loss`` is
  the mean over texts, its interval a seeded bootstrap over texts;
* **KL**: the first-token KL(unsteered ‖ steered) on the same harmless prompts
  (:func:`~workbench.metrics.first_token_kl`);
* **degenerate rate**: the share of greedy generations of those prompts under the intervention that
  :func:`~workbench.labels.degeneration` flags (loops, character runs, near-empty output), with
  its Wilson interval; the unsteered rate beside it.

The main job prices every setting of its experiments the same way (the ``damage`` stage):
:func:`cross_entropy_table` runs each experiment's settings over the held-out answers in one batched
pass (:func:`~workbench.experiments.batched_cross_entropy`), and :func:`damage_summary` puts each
setting's CE beside what the experiment itself measured: its first-token KL and degenerate rate on
harmless prompts, and its effect, the harmful refusal it removes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .artifacts import atomic_write_text
from .data import PROMPT_DIR, load_split
from .experiments import batched_cross_entropy, reference_cross_entropy
from .generation import generate, last_token_logprobs
from .labels import degeneration
from .metrics import first_token_kl
from .models import load_model
from .stats import bootstrap_ci, bootstrap_diff_ci, paired_rate_difference, wilson_interval

__all__ = [
    "HELDOUT_ANSWERS",
    "load_heldout_answers",
    "truncate_answers",
    "write_heldout_answers",
    "measure_damage",
    "UNSTEERED",
    "DamageExperiment",
    "setting_rows",
    "prefix_rows",
    "cross_entropy_table",
    "load_cross_entropy",
    "damage_summary",
]

HELDOUT_ANSWERS: Path = PROMPT_DIR / "harmless_heldout_answers.jsonl"
ANSWER_MODEL = "smollm2-135m-instruct"
ANSWER_TOKENS = 64


def load_heldout_answers(path: str | Path = HELDOUT_ANSWERS) -> tuple[list[str], list[str]]:
    """``(prompts, answers)`` of the held-out answer file (JSONL rows ``{"prompt", "answer"}``);
    rows with an empty answer are skipped (CE needs at least one answer token)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall refusal-workbench so workbench/prompts/ is complete, or rebuild it "
            "with workbench.damage.write_heldout_answers()"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if str(r.get("answer", "")).strip()]
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def truncate_answers(tokenizer, answers: Sequence[str], max_tokens: int) -> list[str]:
    """Each answer cut to its first ``max_tokens`` tokens (no special tokens; decoded back to text,
    so an answer shorter than that stays whole): the main job's damage stage scores the start of
    each answer, where CE costs the same per token and the forward half as much."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 answer token, got {max_tokens}")
    ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    return [a if len(i) <= max_tokens else tokenizer.decode(i[:max_tokens]) for a, i in zip(answers, ids)]


def write_heldout_answers(path: str | Path = HELDOUT_ANSWERS, *, batch_size: int = 27, progress: bool = True) -> Path:
    """Rebuild :data:`HELDOUT_ANSWERS`: the base model's greedy answers (chat template,
    ``ANSWER_TOKENS`` new tokens, stripped) to the 54 harmless ``test`` prompts, in split order."""
    model = load_model(ANSWER_MODEL, device="cpu")
    prompts = load_split("harmless", "test")
    answers = generate(model, prompts, max_new_tokens=ANSWER_TOKENS, batch_size=batch_size, progress=progress)
    lines = [json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) for p, a in zip(prompts, answers)]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def _rounded(pair: Sequence[float], digits: int = 4) -> list[float]:
    return [round(float(x), digits) for x in pair]


def measure_damage(
    model,
    value,
    direction=None,
    plane=None,
    *,
    n: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """CE loss, first-token KL and the degenerate-output rate of intervention ``value`` (a
    :mod:`workbench.intervention` value reading ``direction`` / ``plane``) on the first ``n``
    held-out harmless prompts and answers (default all). Returns a JSON-ready dict (see the CLI).
    An intervention that changes nothing (``none``: no hooks, no weight edit) reuses the unsteered
    CE, log-probs and generations instead of computing them twice."""
    prompts, answers = load_heldout_answers()
    if n is not None:
        prompts, answers = prompts[:n], answers[:n]
    base_ce = reference_cross_entropy(model, prompts, answers, batch_size=batch_size).tolist()
    base_lp = last_token_logprobs(model, prompts, batch_size=batch_size)
    base_text = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    edited = value.edit(model, direction, plane)  # weight edits (orthogonalize) act through a copy
    hooks = value.hooks(edited, direction, plane)
    if edited is model and not hooks:
        ce, lp, text = base_ce, base_lp, base_text
    else:
        ce = reference_cross_entropy(edited, prompts, answers, hooks=hooks, batch_size=batch_size).tolist()
        lp = last_token_logprobs(edited, prompts, hooks=hooks, batch_size=batch_size)
        text = generate(
            edited, prompts, hooks=hooks, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
        )
    kl = first_token_kl(base_lp, lp).tolist()
    flags = [degeneration(t) for t in text]
    count, n_bad = len(prompts), sum(f is not None for f in flags)
    n_base_bad = sum(degeneration(t) is not None for t in base_text)
    return {
        "n": count,
        "ce_loss": round(sum(ce) / count, 4),
        "ce_loss_ci95": _rounded(bootstrap_ci(ce, seed=seed)),
        "ce_loss_baseline": round(sum(base_ce) / count, 4),
        "ce_loss_baseline_ci95": _rounded(bootstrap_ci(base_ce, seed=seed)),
        "ce_loss_delta": round((sum(ce) - sum(base_ce)) / count, 4),
        "ce_loss_delta_ci95": _rounded(bootstrap_diff_ci(ce, base_ce, seed=seed)),
        "kl": round(sum(kl) / count, 4),
        "kl_ci95": _rounded(bootstrap_ci(kl, seed=seed)),
        "degenerate_rate": round(n_bad / count, 4),
        "degenerate_rate_ci95": _rounded(wilson_interval(n_bad, count)),
        "degenerate_rate_baseline": round(n_base_bad / count, 4),
        "degenerate_reasons": {r: flags.count(r) for r in sorted({f for f in flags if f is not None})},
        "max_new_tokens": max_new_tokens,
        "text": str(HELDOUT_ANSWERS.name),
        "examples": [{"prompt": p, "response": t, "degenerate": f} for p, t, f in list(zip(prompts, text, flags))[:3]],
    }


# The experiment name of the held-out answers' CE without any hooks: every setting's ΔCE is against it
UNSTEERED = "unsteered"
RESPONSE_COLUMNS = ["setting", "split", "prompt", "response", "refused", "kl"]


@dataclass(frozen=True)
class DamageExperiment:
    """One experiment the ``damage`` stage prices: its ``name`` (``locations``, ``angle_sweep``), its
    ``settings`` (names, in setting-index order), ``hooks_for(setting)`` (the per-row ``hooks(rows)``
    from each row's setting index, as the experiment ran them: e.g.
    :func:`~workbench.experiments.location_hooks_for`), its ``responses`` (its per-prompt table in
    the form of :func:`setting_rows`) and ``unsteered``: the unsteered rows of the *same* prompts
    (split, prompt, refused; None or empty: no baseline, so no refusal removed)."""

    name: str
    settings: tuple[str, ...]
    hooks_for: Callable
    responses: pd.DataFrame
    unsteered: pd.DataFrame | None = None


def setting_rows(per_prompt: pd.DataFrame, column: str) -> pd.DataFrame:
    """An experiment's per-prompt table as the damage summary reads it: ``setting`` (the ``column``
    value as text; a float angle without its ``.0``: 180.0 → ``"180"``), split, prompt, response
    (a CSV's empty response read as NaN back to ``""``), refused, kl."""
    names = [f"{v:g}" if isinstance(v, float) else str(v) for v in per_prompt[column]]
    out = per_prompt.assign(setting=names)[RESPONSE_COLUMNS].reset_index(drop=True)
    out["response"] = out["response"].fillna("").astype(str)
    return out


def prefix_rows(unsteered: pd.DataFrame, responses: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``unsteered`` for the prompts of ``responses``, split by split, when that split's
    prompts in ``responses`` (under its first setting, in order) are the first k prompts of the
    same split in ``unsteered`` (the angle sweep's n_sweep test prompts are a prefix of the location
    comparison's n_eval): checked, not assumed. A split where they are not is left out (its refusal
    removed is then NaN)."""
    first = responses[responses["setting"] == responses["setting"].iloc[0]] if len(responses) else responses
    kept = []
    for split, rows in first.groupby("split", sort=False):
        base = unsteered[unsteered["split"] == split]
        prompts = list(rows["prompt"])
        if list(base["prompt"].iloc[: len(prompts)]) == prompts:
            kept.append(base.iloc[: len(prompts)])
    return pd.concat(kept, ignore_index=True) if kept else unsteered.iloc[:0]


def cross_entropy_table(
    model,
    prompts: Sequence[str],
    answers: Sequence[str],
    experiments: Sequence[tuple[str, Sequence[str], Callable]],
    *,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Each text's mean answer-token CE (nats) under every setting of every experiment
    (``(name, settings, hooks_for)``), one batched pass per experiment, plus :data:`UNSTEERED`
    (setting ``none``, no hooks) first. Columns: experiment, setting, text (index into the
    answers), ce."""
    frames = []
    for name, settings, hooks_for in [(UNSTEERED, ("none",), lambda setting: None), *experiments]:
        settings = [str(s) for s in settings]
        ce = batched_cross_entropy(model, prompts, answers, len(settings), hooks_for, batch_size=batch_size)
        frames.append(
            pd.DataFrame(
                {
                    "experiment": name,
                    "setting": [s for s in settings for _ in prompts],
                    "text": list(range(len(prompts))) * len(settings),
                    "ce": ce.flatten().tolist(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def load_cross_entropy(path: str | Path, experiments: Sequence[tuple[str, Sequence[str], Callable]], n_texts: int):
    """A stored :func:`cross_entropy_table`; ValueError when it lacks a setting of ``experiments`` (an
    experiment added since it was computed), which makes the ``damage`` stage compute it again."""
    table = pd.read_csv(path, dtype={"experiment": str, "setting": str})
    have = table.groupby(["experiment", "setting"]).size().to_dict()
    wanted = [(UNSTEERED, "none"), *((name, str(s)) for name, settings, _ in experiments for s in settings)]
    missing = [f"{e}/{s}" for e, s in wanted if have.get((e, s)) != n_texts]
    if missing:
        raise ValueError(f"{Path(path).name} lacks the CE of {missing} on {n_texts} texts")
    return table


def _ce_of(ce: pd.DataFrame, experiment: str, setting: str) -> list[float]:
    rows = ce[(ce["experiment"] == experiment) & (ce["setting"].astype(str) == setting)].sort_values("text")
    if rows.empty:
        raise ValueError(f"the CE table has no rows for {experiment}/{setting}; compute it with cross_entropy_table()")
    return rows["ce"].astype(float).tolist()


def _ce_numbers(ce: list[float], base: list[float], seed: int) -> dict[str, float]:
    """CE loss, its bootstrap interval over texts, and ΔCE vs ``base`` with its paired interval."""
    (lo, hi), (dlo, dhi) = bootstrap_ci(ce, seed=seed), bootstrap_diff_ci(ce, base, seed=seed)
    mean, delta = sum(ce) / len(ce), (sum(ce) - sum(base)) / len(ce)
    return {
        "n_texts": len(ce),
        "ce_loss": mean,
        "ce_ci_lo": lo,
        "ce_ci_hi": hi,
        "ce_delta": delta,
        "ce_delta_ci_lo": dlo,
        "ce_delta_ci_hi": dhi,
    }


def _degenerate(harmless: pd.DataFrame) -> dict:
    """KL and the degenerate rate (with its Wilson interval) of one setting's harmless rows."""
    n = len(harmless)
    if not n:
        return {"kl": float("nan"), "n_harmless": 0, "n_degenerate": 0, "degenerate_rate": float("nan")}
    bad = sum(degeneration(r) is not None for r in harmless["response"])
    lo, hi = wilson_interval(bad, n)
    return {
        "kl": float(harmless["kl"].mean()),
        "n_harmless": n,
        "n_degenerate": bad,
        "degenerate_rate": bad / n,
        "degenerate_ci_lo": lo,
        "degenerate_ci_hi": hi,
    }


def _refusal_change(steered: pd.DataFrame, unsteered: pd.DataFrame | None, split: str, stem: str) -> dict:
    """``refusal_removed`` (harmful: unsteered − steered refusal) or ``refusal_induced`` (harmless:
    steered − unsteered), paired by prompt, with Newcombe's paired interval; NaN without a baseline."""
    rows = steered[steered["split"] == split]
    base = unsteered[unsteered["split"] == split] if unsteered is not None else rows.iloc[:0]
    if rows.empty or base.empty:
        return {stem: float("nan")}
    if list(rows["prompt"]) != list(base["prompt"]):
        raise ValueError(
            f"{split} prompts of a setting and of its unsteered rows differ; pass the unsteered rows of "
            "the same prompts, in the same order (damage.prefix_rows)"
        )
    first, second = (base, rows) if stem == "refusal_removed" else (rows, base)
    diff, (lo, hi) = paired_rate_difference(list(first["refused"].astype(bool)), list(second["refused"].astype(bool)))
    return {f"n_{split}": len(rows), stem: diff, f"{stem}_ci_lo": lo, f"{stem}_ci_hi": hi}


def damage_summary(ce: pd.DataFrame, experiments: Sequence[DamageExperiment], *, seed: int = 0) -> pd.DataFrame:
    """One row per (experiment, setting), :data:`UNSTEERED` first, with

    * ``ce_loss`` (mean over texts of each text's mean answer-token CE, nats), ``ce_ci_lo`` / ``_hi``
      (seeded bootstrap over texts), ``ce_delta`` vs the unsteered CE and its paired bootstrap
      interval ``ce_delta_ci_lo`` / ``_hi``, ``n_texts``;
    * ``kl``: the mean first-token KL on the experiment's harmless prompts (the mean of its per-prompt
      ``kl``: its summary's ``kl``);
    * ``degenerate_rate`` (:func:`~workbench.labels.degeneration` of the experiment's own greedy
      harmless responses: in the main job ``max_new_tokens`` = 24 tokens long, shorter than the CLI's
      48, so a loop has less room to show), ``n_degenerate`` of ``n_harmless``, Wilson interval
      ``degenerate_ci_lo`` / ``_hi``;
    * ``refusal_removed``: harmful refusal unsteered − under the setting, on the same prompts, and
      ``refusal_induced``: harmless refusal under the setting − unsteered, each with Newcombe's
      paired hybrid score interval (:func:`~workbench.stats.paired_difference_interval`;
      ``…_ci_lo`` / ``_hi``), NaN where the experiment has no unsteered rows of its prompts.
    """
    base = _ce_of(ce, UNSTEERED, "none")
    rows = [{"experiment": UNSTEERED, "setting": "none", **_ce_numbers(base, base, seed)}]
    for e in experiments:
        for setting in map(str, e.settings):
            steered = e.responses[e.responses["setting"] == setting]
            rows.append(
                {
                    "experiment": e.name,
                    "setting": setting,
                    **_ce_numbers(_ce_of(ce, e.name, setting), base, seed),
                    **_degenerate(steered[steered["split"] == "harmless"]),
                    **_refusal_change(steered, e.unsteered, "harmful", "refusal_removed"),
                    **_refusal_change(steered, e.unsteered, "harmless", "refusal_induced"),
                }
            )
    return pd.DataFrame(rows)
