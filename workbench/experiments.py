"""Experiments that run the model under interventions and return tidy tables (one row per
setting × prompt set), ready for :mod:`workbench.figures`.

Every sweep runs as *one* batched job: the prompts are repeated once per setting and each batch row
carries its own setting (candidate direction, location, angle, layer subset), so K settings × N
prompts cost one pass over K·N rows instead of K separate loops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import einops
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities import apply_softcap

from . import controls as cx
from . import interventions as iv
from .chat import format_prompts, token_lengths, tokenize
from .config import RunContext
from .generation import generate, last_token_logprobs, last_token_scores, repeat_prompts
from .intervention import Ablation, Addition, Intervention, parse
from .labels import heuristic_label, is_empty, is_refusal
from .metrics import first_token_kl, refusal_logodds
from .stats import bootstrap_ci, wilson_interval

__all__ = [
    "CONDITIONS",
    "condition",
    "condition_hooks",
    "compare_locations",
    "control_locations",
    "control_hooks_for",
    "CONTROL_SETTINGS",
    "control_sweep",
    "layer_subset_sweep",
    "angle_sweep",
    "rotation_variant_sweep",
    "mean_intervals",
    "score_responses",
    "behaviour_table",
    "relabel",
    "rate_intervals",
    "label_columns",
    "reference_cross_entropy",
    "location_hooks_for",
    "angle_hooks_for",
    "batched_cross_entropy",
]

# The location comparison's conditions: the tables' short names and the intervention each names
# (figures take their names and colours from these values). Addition gets its α and layer per run.
CONDITIONS: dict[str, Intervention] = {
    "none": parse("none"),
    "resid": parse("ablate:resid"),
    "attn": parse("ablate:attn"),
    "mlp": parse("ablate:mlp"),
    "all": parse("ablate:all"),
    "addition": parse("add"),
}


def condition(name: str | Intervention) -> Intervention:
    """The intervention a condition names: a key of :data:`CONDITIONS`, any spec string
    (``"ablate:all@0-11"``, ``"orthogonalize"`` cannot share a batch) or a value."""
    if isinstance(name, str) and name in CONDITIONS:
        return CONDITIONS[name]
    try:
        return parse(name)
    except ValueError as err:
        raise ValueError(f"unknown condition {name!r}: neither one of {tuple(CONDITIONS)} nor a spec ({err})") from None


def condition_hooks(
    model,
    direction,
    condition_of_row: Int[Tensor, " row"],
    conditions: Sequence[str | Intervention],
    *,
    layer: int,
    alpha: float = 1.0,
    layers=None,
    plane=None,
):
    """A ``hooks(rows)`` callable: row i gets ``conditions[condition_of_row[i]]``.

    Conditions are names of :data:`CONDITIONS` (``none``; ablation at ``resid``/``attn``/``mlp``/
    ``all`` over ``layers``; ``addition``, ``+α r`` at ``resid_pre`` of ``layer``) or any
    intervention value or spec that takes a row mask. Masks are disjoint, so the hooks compose.
    """
    values = []
    for name in conditions:
        value = condition(name)
        if isinstance(value, Addition) and value.layers is None:  # the named condition takes this run's α
            value = replace(value, alpha=alpha if name == "addition" else value.alpha, layers=(layer,))
        elif isinstance(value, Ablation) and value.layers is None and layers is not None:
            value = replace(value, layers=tuple(layers))
        values.append(value)

    def hooks(rows):
        cond = condition_of_row[rows.cpu()]
        out = []
        for ci, value in enumerate(values):
            mask = cond == ci
            if bool(mask.any()):
                out += value.hooks(model, direction, plane, rows=mask)
        return out

    return hooks


def score_responses(prompts: Sequence[str], responses: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": list(prompts),
            "response": list(responses),
            "refused": [is_refusal(r) for r in responses],
            "empty": [is_empty(r) for r in responses],
            "label": [heuristic_label(p, r) for p, r in zip(prompts, responses)],
        }
    )


def behaviour_table(
    model, prompt_sets: Mapping[str, Sequence[str]], ctx: RunContext | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unsteered greedy responses per prompt category, labelled: (summary, per_prompt). ``ctx``:
    batch size, token budget (default 48: a warning or redirect sentence is 20-40 tokens), progress.

    Summary: one row per category (in ``prompt_sets`` order) with ``n`` and ``share_<label>`` for
    every label that occurs. Per prompt: category, prompt, response, refused, empty, label.
    """
    ctx = ctx or RunContext(max_new_tokens=48)
    frames = []
    for category, prompts in prompt_sets.items():
        responses = generate(
            model, prompts, max_new_tokens=ctx.max_new_tokens, batch_size=ctx.batch_size, progress=ctx.progress
        )
        frames.append(score_responses(prompts, responses).assign(category=category))
    per_prompt = pd.concat(frames, ignore_index=True)
    n = per_prompt.groupby("category", sort=False).size().rename("n").reset_index()
    return rate_intervals(n.merge(_shares(per_prompt, ["category"]), on="category", how="left")), per_prompt


def _summarise(per_prompt: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = per_prompt.groupby(keys, sort=False)
    out = grouped.agg(
        refusal_rate=("refused", "mean"),
        empty_rate=("empty", "mean"),
        logodds=("logodds", "mean"),
        kl=("kl", "mean"),
        n=("refused", "size"),
    ).reset_index()
    return rate_intervals(out.merge(_shares(per_prompt, keys), on=keys, how="left"))


def _shares(per_prompt: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    shares = per_prompt.pivot_table(index=keys, columns="label", values="refused", aggfunc="size", fill_value=0)
    return shares.div(shares.sum(axis=1), axis=0).add_prefix("share_").reset_index()


def label_columns(summary: pd.DataFrame) -> list[str]:
    """The ``share_<label>`` columns of a summary (not their ``_ci_lo`` / ``_ci_hi`` intervals)."""
    return [c for c in summary.columns if c.startswith("share_") and not c.endswith(("_ci_lo", "_ci_hi"))]


def rate_intervals(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with the 95 % Wilson interval of each rate over its row's ``n`` prompts:
    ``refusal_ci_lo`` / ``refusal_ci_hi`` for ``refusal_rate``, ``empty_ci_lo`` / ``_hi`` for
    ``empty_rate`` and ``share_<label>_ci_lo`` / ``_hi`` for each label share. The rates are counts
    over n, so the intervals follow from the summary alone: a cached table gains them on load."""
    out = summary.copy()
    rates = {"refusal_rate": "refusal", "empty_rate": "empty", **{c: c for c in label_columns(out)}}
    for column, stem in rates.items():
        if column not in out:
            continue
        bounds = [
            wilson_interval(round(float(r) * int(n)), int(n)) if n and r == r else (float("nan"), float("nan"))
            for r, n in zip(out[column].fillna(0.0), out["n"])
        ]
        out[f"{stem}_ci_lo"] = [lo for lo, _ in bounds]
        out[f"{stem}_ci_hi"] = [hi for _, hi in bounds]
    return out


def relabel(summary: pd.DataFrame, per_prompt: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label the stored responses again and recompute the summary's ``share_<label>`` columns per
    ``keys``: cached tables stay right when :func:`~workbench.labels.heuristic_label` changes
    (generation is what is cached, not the labeller's verdict). Returns (summary, per_prompt)."""
    per_prompt = per_prompt.copy()
    responses = per_prompt["response"].fillna("").astype(str)  # CSV reads an empty response as NaN
    per_prompt["label"] = [heuristic_label(p, r) for p, r in zip(per_prompt["prompt"], responses)]
    kept = summary.drop(columns=[c for c in summary.columns if c.startswith("share_")])
    return rate_intervals(kept.merge(_shares(per_prompt, keys), on=keys, how="left")), per_prompt


def _run_settings(
    model,
    prompt_sets: Mapping[str, Sequence[str]],
    n_settings: int,
    hooks_for,
    ctx: RunContext,
) -> pd.DataFrame:
    """Score and generate every prompt set under every setting in one batched job per set (the
    first-token scores come from the generation's own prefill)."""
    refusal_ids = ctx.needs_refusal_ids("an intervention experiment")
    frames = []
    for split, prompts in prompt_sets.items():
        rows, setting = repeat_prompts(prompts, n_settings)
        hooks = hooks_for(setting)
        base = last_token_logprobs(model, prompts, batch_size=ctx.batch_size)
        responses, lp = generate(
            model,
            rows,
            hooks=hooks,
            groups=setting,
            max_new_tokens=ctx.max_new_tokens,
            batch_size=ctx.batch_size,
            return_logprobs=True,
            progress=ctx.progress,
        )
        frame = score_responses(rows, responses)
        frame["split"], frame["setting"] = split, setting.numpy()
        frame["logodds"] = refusal_logodds(lp, refusal_ids).numpy()
        frame["kl"] = first_token_kl(base.repeat(n_settings, 1), lp).numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def location_hooks_for(
    model,
    direction,
    conditions: Sequence[str | Intervention],
    *,
    layer: int,
    alpha: float = 1.0,
    plane=None,
):
    """``hooks_for(setting)`` of the location comparison: given each row's condition index
    (``[row]``), the ``hooks(rows)`` of :func:`condition_hooks` (what :func:`compare_locations` runs)."""
    conditions = list(conditions)
    return lambda setting: condition_hooks(model, direction, setting, conditions, layer=layer, alpha=alpha, plane=plane)


def angle_hooks_for(model, plane, angles: Sequence[float], *, site: str = "post_gain", adaptive: str | bool = "off"):
    """``hooks_for(setting)`` of the angle sweep: given each row's angle index (``[row]``), the
    ``hooks(rows)`` rotating each row to its angle (degrees) in ``plane`` (what :func:`angle_sweep` runs)."""
    theta = torch.tensor([float(a) for a in angles])

    def hooks_for(setting):
        return lambda rows: iv.rotation_hooks(model, plane, theta[setting[rows.cpu()]], site=site, adaptive=adaptive)

    return hooks_for


def compare_locations(
    model,
    direction,
    prompt_sets: Mapping[str, Sequence[str]],
    *,
    layer: int,
    ctx: RunContext,
    conditions: Sequence[str | Intervention] = tuple(CONDITIONS),
    alpha: float = 1.0,
    plane=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ablation at each location (plus none and addition) on each prompt set, side by side.

    ``conditions``: names of :data:`CONDITIONS` or any intervention specs / values that take a row
    mask (e.g. ``"ablate:all@0-11"``; pass ``plane`` for kinds that read it); the tables name each
    by its name or spec string. Returns ``(summary, per_prompt)``: summary has one row per (split, condition) with
    ``refusal_rate``, ``empty_rate``, mean first-token ``logodds``, mean ``kl`` vs the unsteered
    model, ``n`` and the label shares ``share_<label>``; per_prompt has every response.
    """
    conditions = list(conditions)
    names = [c if isinstance(c, str) else str(c) for c in conditions]
    per_prompt = _run_settings(
        model,
        prompt_sets,
        len(conditions),
        location_hooks_for(model, direction, conditions, layer=layer, alpha=alpha, plane=plane),
        ctx,
    )
    per_prompt["condition"] = [names[s] for s in per_prompt["setting"]]
    return _summarise(per_prompt, ["split", "condition"]), per_prompt


CONTROL_SETTINGS: tuple[tuple[str, str], ...] = (("random", "all"), ("random", "addition"), ("null", "all"))


def control_hooks_for(
    model, direction, harmless: Float[Tensor, "prompt d_model"], *, layer: int, alpha: float = 1.0, seed: int = 0
):
    """``(controls, settings, hooks_for)`` of :func:`control_locations`: the control directions
    (``{"random": ..., "null": ...}``, :mod:`workbench.controls`), the settings in index order
    (:data:`CONTROL_SETTINGS`: (control, base condition)) and ``hooks_for(setting)``, which gives each
    row its setting's hooks (what :func:`control_locations` runs; the damage stage prices the same)."""
    controls = {"random": cx.random_direction(direction, seed), "null": cx.null_direction(harmless, direction, seed)}
    settings = list(CONTROL_SETTINGS)

    def hooks_for(setting):  # each control's hooks act on its own rows only ("none" elsewhere)
        per_control = [
            condition_hooks(
                model, d, setting, [b if k == kind else "none" for k, b in settings], layer=layer, alpha=alpha
            )
            for kind, d in controls.items()
        ]
        return lambda rows: [h for hooks in per_control for h in hooks(rows)]

    return controls, settings, hooks_for


def control_locations(
    model,
    direction,
    harmless: Float[Tensor, "prompt d_model"],
    prompt_sets: Mapping[str, Sequence[str]],
    *,
    layer: int,
    ctx: RunContext,
    seed: int = 0,
    alpha: float = 1.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The location comparison's ``all`` (ablation everywhere) and ``addition`` under causal controls
    (:mod:`workbench.controls`), on the same prompts, in one batched job per prompt set:
    ``random:SEED/all`` and ``random:SEED/addition`` with the norm-matched random direction and
    ``null:SEED/all`` with the null direction from ``harmless`` (the harmless direction_train
    activations at ``direction``'s site, layer and position, ``[prompt, d_model]``). ``layer`` and
    ``alpha``: the real addition's. Returns ``(summary, per_prompt)`` as :func:`compare_locations`'s,
    ``condition`` being ``CONTROL/BASE`` (e.g. ``random:0/all``), plus ``control`` (``random:0``)
    and ``base`` (the real condition it stands beside: ``all`` / ``addition``)."""
    controls, settings, hooks_for = control_hooks_for(model, direction, harmless, layer=layer, alpha=alpha, seed=seed)
    per_prompt = _run_settings(model, prompt_sets, len(settings), hooks_for, ctx)
    per_prompt["control"] = [controls[settings[s][0]].method for s in per_prompt["setting"]]
    per_prompt["base"] = [settings[s][1] for s in per_prompt["setting"]]
    per_prompt["condition"] = per_prompt["control"] + "/" + per_prompt["base"]
    summary = _summarise(per_prompt, ["split", "condition"])
    named = per_prompt.drop_duplicates("condition").set_index("condition")
    summary["control"] = summary["condition"].map(named["control"])
    summary["base"] = summary["condition"].map(named["base"])
    return summary, per_prompt


def layer_subset_sweep(
    model,
    direction,
    prompts: Sequence[str],
    *,
    subsets: dict[str, list[int]],
    ctx: RunContext,
    location: str = "all",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ablation at ``location`` restricted to each named layer subset (``first_k``/``last_k``/``window``).

    Summary columns: ``subset``, ``n_blocks``, ``first_layer``, ``last_layer`` plus the scores.
    """
    names = list(subsets)

    def hooks_for(setting):
        def hooks(rows):
            s = setting[rows.cpu()]
            return [
                h
                for i, name in enumerate(names)
                if bool((s == i).any())
                for h in Ablation(location, tuple(subsets[name])).hooks(model, direction, rows=s == i)
            ]

        return hooks

    per_prompt = _run_settings(
        model,
        {"harmful": prompts},
        len(names),
        hooks_for,
        ctx,
    )
    per_prompt["subset"] = [names[s] for s in per_prompt["setting"]]
    summary = _summarise(per_prompt, ["subset"])
    summary["n_blocks"] = [len(subsets[s]) for s in summary["subset"]]
    summary["first_layer"] = [min(subsets[s]) for s in summary["subset"]]
    summary["last_layer"] = [max(subsets[s]) for s in summary["subset"]]
    return summary, per_prompt


def angle_sweep(
    model,
    plane,
    prompt_sets: Mapping[str, Sequence[str]],
    angles: Sequence[float],
    *,
    ctx: RunContext,
    adaptive: str | bool = "off",
    site: str = "post_gain",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Angular steering to each angle (degrees, 0° = b1, counter-clockwise toward b2), batched.

    ``site`` and ``adaptive`` as in :func:`workbench.interventions.rotation_hooks`. Summary: one row
    per (split, angle) with refusal rate, log-odds, KL and label shares, plus ``site`` and ``adaptive``.
    """
    angles = [float(a) for a in angles]
    per_prompt = _run_settings(
        model,
        prompt_sets,
        len(angles),
        angle_hooks_for(model, plane, angles, site=site, adaptive=adaptive),
        ctx,
    )
    per_prompt["angle"] = [angles[s] for s in per_prompt["setting"]]
    summary = _summarise(per_prompt, ["split", "angle"])
    summary["site"], summary["adaptive"] = site, str(adaptive)
    return summary, per_prompt


def control_sweep(
    model,
    plane,
    prompt_sets: Mapping[str, Sequence[str]],
    angles: Sequence[float],
    *,
    ctx: RunContext,
    seed: int = 0,
    adaptive: str | bool = "off",
    site: str = "post_gain",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`angle_sweep` in the seeded random plane of ``plane`` (:func:`workbench.controls.random_plane`:
    rotation to the same angles at the same site, in a plane that carries no refusal); the summary
    and the per-prompt table gain ``plane`` = ``random:SEED``."""
    control = cx.random_plane(plane, seed)
    summary, per_prompt = angle_sweep(model, control, prompt_sets, angles, ctx=ctx, adaptive=adaptive, site=site)
    return summary.assign(plane=control.variant), per_prompt.assign(plane=control.variant)


def rotation_variant_sweep(
    model,
    variants: Mapping[str, tuple[object, str]],
    prompt_sets: Mapping[str, Sequence[str]],
    angles: Sequence[float],
    *,
    ctx: RunContext,
    adaptive: str | bool = "off",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """First-token refusal log-odds and KL (no generation) per angle under several ways to rotate.

    ``variants``: ``{name: (plane, site)}``, e.g. the same angles in the study's plane rotated
    post-gain and pre-gain, and in the unit-candidate plane. Returns ``(summary, per_prompt)``:
    per_prompt has one row per (variant, split, angle, prompt) with ``variant``, ``site``, ``split``,
    ``angle``, ``prompt_index`` (into ``prompt_sets[split]``), ``logodds`` and ``kl`` (float64
    scores; KL in nats to the unsteered model); summary is :func:`mean_intervals` of it per
    (variant, site, split, angle): the means, their 95 % bootstrap intervals and ``n``.
    """
    angles = [float(a) for a in angles]
    refusal_ids = ctx.needs_refusal_ids("rotation_variant_sweep")
    bases = {
        split: last_token_logprobs(model, prompts, batch_size=ctx.batch_size) for split, prompts in prompt_sets.items()
    }
    frames = []
    for name, (plane, site) in variants.items():
        for split, prompts in prompt_sets.items():
            scores = _rotated_scores(model, plane, site, prompts, angles, bases[split], refusal_ids, ctx, adaptive)
            n = len(prompts)
            frame = pd.DataFrame(
                {
                    "angle": [a for a in angles for _ in range(n)],  # rows are angle-major (repeat_prompts)
                    "prompt_index": list(range(n)) * len(angles),
                    "logodds": scores[:, 0].numpy(),
                    "kl": scores[:, 1].numpy(),
                }
            )
            frames.append(frame.assign(variant=name, site=site, split=split))
    columns = ["variant", "site", "split", "angle", "prompt_index", "logodds", "kl"]
    per_prompt = pd.concat(frames, ignore_index=True)[columns]
    return mean_intervals(per_prompt, ["variant", "site", "split", "angle"]), per_prompt


def _rotated_scores(
    model, plane, site: str, prompts: Sequence[str], angles: list[float], base, refusal_ids, ctx, adaptive
) -> Float[Tensor, "row 2"]:
    """(refusal log-odds, KL to ``base``) of the first response token of every prompt rotated to
    every angle in ``plane`` at ``site``, one batched job; rows angle-major (:func:`repeat_prompts`)."""
    theta = torch.tensor(angles)
    texts, setting = repeat_prompts(prompts, len(angles))
    base = base.to(model.cfg.device)  # unsteered: the same for every variant
    n = len(prompts)

    def score(lp, r):  # per batch: only one batch's log-probs exist at a time
        kl = first_token_kl(base[r % n], lp)
        return torch.stack([refusal_logodds(lp, refusal_ids), kl], dim=-1)

    return last_token_scores(
        model,
        texts,
        score,
        hooks=lambda r: iv.rotation_hooks(model, plane, theta[setting[r.cpu()]], site=site, adaptive=adaptive),
        groups=setting,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
    )


def mean_intervals(
    per_prompt: pd.DataFrame,
    keys: Sequence[str],
    scores: Sequence[str] = ("logodds", "kl"),
    *,
    seed: int = 0,
    n_resamples: int = 2000,
) -> pd.DataFrame:
    """One row per group of ``keys`` (in order of first appearance): each score's mean over the
    group's prompts, its 95 % percentile bootstrap interval ``<score>_ci_lo`` / ``<score>_ci_hi``
    (:func:`~workbench.stats.bootstrap_ci`, ``seed`` fixed, so the same table always gives the same
    intervals) and ``n``. A pure function of the table: a cached per-prompt table gives the summary
    again. A group holding a NaN or infinite score gets NaN bounds."""
    missing = [c for c in [*keys, *scores] if c not in per_prompt]
    if missing:
        raise ValueError(f"per_prompt lacks column(s) {missing}; it needs {[*keys, *scores]}")
    rows = []
    for group, part in per_prompt.groupby(list(keys), sort=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        for column in scores:
            values = part[column].to_numpy(dtype=float)
            row[column] = float(values.mean())
            finite = all(math.isfinite(v) for v in values)
            bounds = bootstrap_ci(values.tolist(), n_resamples=n_resamples, seed=seed) if finite else (math.nan,) * 2
            row[f"{column}_ci_lo"], row[f"{column}_ci_hi"] = bounds
        rows.append({**row, "n": len(part)})
    ci_columns = [f"{c}_ci_{end}" for c in scores for end in ("lo", "hi")]
    return pd.DataFrame(rows, columns=[*keys, *scores, "n", *ci_columns])


@torch.inference_mode()
def reference_cross_entropy(
    model, prompts: Sequence[str], answers: Sequence[str], *, hooks=None, batch_size: int = 32
) -> Float[Tensor, " prompt"]:
    """Mean per-token cross-entropy (nats) of reference ``answers`` after each chat prompt, under
    ``hooks`` (Arditi et al.'s on-distribution CE: how much an intervention damages normal answers).

    Loss is taken on the answer tokens only; rows are right-aligned by left padding so one forward
    per batch scores every answer, and only the batch's last (longest answer) positions go through
    the final norm, the unembedding and the log-softmax (on CPU they cost as much as the blocks).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt")
    texts = format_prompts(model.tokenizer, prompts)
    tok = model.tokenizer
    n_answer = token_lengths(tok, answers)
    if min(n_answer) == 0:
        raise ValueError("an answer is empty; reference answers need at least one token")
    out = torch.empty(len(texts))
    for start in range(0, len(texts), batch_size):
        rows = list(range(start, min(start + batch_size, len(texts))))
        tokens, mask = tokenize(tok, [texts[i] + answers[i] for i in rows], device=model.cfg.device)
        hook_list = hooks(torch.tensor(rows)) if callable(hooks) else (hooks or [])
        k = max(n_answer[i] for i in rows)  # positions -k-1 .. -2 predict the last k tokens
        with model.hooks(fwd_hooks=list(hook_list)):
            resid = model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
            logits = model.unembed(model.ln_final(resid[:, -k - 1 : -1]))  # ln_final / unembed hooks fire
        logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        nll = -logprobs.gather(-1, tokens[:, -k:, None])[..., 0]  # [batch, k]
        lengths = torch.tensor([n_answer[i] for i in rows], device=nll.device)
        answer = torch.arange(k, device=nll.device) >= k - lengths[:, None]  # each row's last n_answer tokens
        out[rows] = (nll.masked_fill(~answer, 0.0).sum(-1) / lengths).cpu()  # one copy per batch, not per row
    return out


def batched_cross_entropy(
    model, prompts: Sequence[str], answers: Sequence[str], n_settings: int, hooks_for, *, batch_size: int = 32
) -> Float[Tensor, "setting text"]:
    """:func:`reference_cross_entropy` of every (prompt, answer) under each of ``n_settings`` settings
    in one batched pass, like the sweeps: the texts are repeated once per setting and
    ``hooks_for(setting)`` (``setting``: each row's setting index, ``[row]``; e.g.
    :func:`location_hooks_for`, :func:`angle_hooks_for`) gives the per-row ``hooks(rows)``. Rows run
    in order of token length, so a batch holds texts of one length and pads little. Returns each
    text's mean answer-token CE (nats) per setting, ``[setting, text]``; equal to one
    :func:`reference_cross_entropy` call per setting up to float rounding (other batch neighbours).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt")
    texts = format_prompts(model.tokenizer, prompts)
    lengths = token_lengths(model.tokenizer, [t + a for t, a in zip(texts, answers)]) * n_settings
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # stable: settings stay in order per length
    rows_prompt, setting = repeat_prompts(prompts, n_settings)
    rows_answer = list(answers) * n_settings
    ordered = torch.tensor(order)
    ce = reference_cross_entropy(
        model,
        [rows_prompt[i] for i in order],
        [rows_answer[i] for i in order],
        hooks=hooks_for(setting[ordered]),
        batch_size=batch_size,
    )
    out = torch.empty_like(ce)
    out[ordered] = ce
    return einops.rearrange(out, "(setting text) -> setting text", setting=n_settings)
