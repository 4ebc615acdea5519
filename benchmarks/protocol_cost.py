"""The least time Arditi et al.'s direction selection can take here, under each protocol.

Counts the forward work of every scoring job the selection runs, on the real prompts and candidates
of an analysis: the prompt filter, the bypass/KL rows (one ablated forward per candidate and
validation prompt, every block), the induce rows (from the candidate's own block up), each
candidate's shared template prefix and the unsteered rows they compare with. The unit is a
*token-block*: one token through one transformer block. Then it times a plain forward (no hooks,
shared prefix cached, the scoring batch shape) to get this host's attained rate in token-blocks per
second, and divides. No exact implementation runs a row cheaper than a plain forward of it, so
each quotient is a lower bound on that job's time here (attention to the context and the
last-position unembedding are left out, which only lowers the bound). The paper protocol's main job
also runs the rotation-variant comparison (first-token scores under three more rotation variants),
counted with it.

Protocols compared:

* ``paper`` (the default analysis): every post-instruction position, layers below the study's
  cut-off, validation prompts kept by the refusal-score filter, plus the filter itself;
* ``last_position``: what the main job scored before the studies' protocols were the default
  (position −1, every layer with a non-zero candidate, the first ``arditi_prompts`` validation
  prompts unfiltered, no filter).

``--old-job S`` (the last-position main job's measured cold seconds) adds the least ratio any exact
implementation of the paper protocol can reach over it: ``(S + extra) / S``.

    .venv/bin/python benchmarks/protocol_cost.py [--model organism] [--old-job 351] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from workbench.chat import encode, format_prompts, pad_left, shared_prefix_length
from workbench.config import AnalysisConfig, RunConfig
from workbench.kv import run_prefix
from workbench.models import load_model
from workbench.pipeline import Analysis
from workbench.selection import layer_cutoff


def scoring_work(
    n_layers: int,
    cand_layers: Sequence[int],
    harmful: Sequence[int],
    harmless: Sequence[int],
    prefix: int,
    filtered: Sequence[int] = (),
) -> dict[str, int]:
    """Token-blocks of each scoring job of Arditi's selection (see the module docstring).

    ``cand_layers``: the block of every scored candidate; ``harmful`` / ``harmless``: the suffix
    length (tokens after the shared ``prefix``) of every validation prompt scored; ``filtered``: the
    suffix lengths of every prompt the refusal-score filter runs (empty: no filter).
    """
    k, h, s = len(cand_layers), sum(harmful), sum(harmless)
    if k == 0:
        return {"filter": 0, "bypass_kl": 0, "induce": 0, "unsteered": 0}
    return {
        # the unsteered model on each filtered prompt (its prefix once)
        "filter": (sum(filtered) + prefix) * n_layers if filtered else 0,
        # each candidate: its ablated prefix once, then every harmful and harmless row, every block
        "bypass_kl": k * (prefix + h + s) * n_layers,
        # each candidate: its prefix and harmless rows from its own block up
        "induce": sum((n_layers - layer) * (prefix + s) for layer in cand_layers),
        # the KL's unsteered log-probs, and the unsteered residuals the induce rows start from
        "unsteered": (prefix + s) * n_layers + (prefix + s) * (max(cand_layers) + 1),
    }


def variant_work(n_layers: int, n_variants: int, n_angles: int, suffixes: Sequence[int], prefix: int) -> int:
    """Token-blocks of the main job's rotation-variant comparison (first-token scores of each
    prompt at each angle under each variant besides the sweep's own; a prefix per setting)."""
    return n_variants * n_angles * (prefix + sum(suffixes)) * n_layers


def _suffixes(model, prompts: Sequence[str]) -> tuple[list[int], int]:
    ids = encode(model.tokenizer, format_prompts(model.tokenizer, prompts))
    prefix = shared_prefix_length(ids)
    return [len(r) - prefix for r in ids], prefix


@torch.inference_mode()
def forward_rate(model, prompts: Sequence[str], batch_size: int, reps: int = 3) -> float:
    """Token-blocks per second of a plain forward of ``batch_size`` rows of the prompts' median
    suffix length on top of their cached shared prefix (the scoring jobs' batch shape; best of
    ``reps``)."""
    ids = encode(model.tokenizer, format_prompts(model.tokenizer, prompts))
    prefix = shared_prefix_length(ids)
    suffixes = sorted((r[prefix:] for r in ids), key=len)
    median = len(suffixes[len(suffixes) // 2])
    rows = [r for r in suffixes if len(r) == median]
    batch = (rows * batch_size)[:batch_size]
    kv = run_prefix(model, ids[0][:prefix]) if prefix else None
    best = float("inf")
    for _ in range(reps):
        cache = kv.seed(model, torch.zeros(len(batch), dtype=torch.long)) if kv else None
        tokens, mask = pad_left(model.tokenizer, batch, device=model.cfg.device)
        start = time.perf_counter()
        model(tokens, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
        best = min(best, time.perf_counter() - start)
    return len(batch) * median * model.cfg.n_layers / best


def protocol_work(analysis: Analysis) -> dict[str, dict[str, int]]:
    """:func:`scoring_work` of the analysis's own protocol (plus the main job's rotation-variant
    comparison, which only the paper protocol's job runs) and of the last-position one."""
    model, cfg = analysis.model, analysis.config
    n_layers = model.cfg.n_layers
    cands = analysis.arditi_candidates
    nonzero = [key for key, norm in zip(cands.keys, cands.norms().tolist()) if norm > 0]
    cutoff = layer_cutoff(n_layers)
    harmful, prefix = _suffixes(model, analysis.validation_prompts("harmful"))
    harmless, _ = _suffixes(model, analysis.validation_prompts("harmless"))
    filtered = []
    if cfg.filter_prompts:
        for split, n in (("direction_train", None), ("validation", cfg.arditi_prompts)):
            for kind in ("harmful", "harmless"):
                filtered += _suffixes(model, analysis.prompts.get(kind, split)[:n])[0]
    paper = scoring_work(
        n_layers, [key.layer for key in nonzero if key.layer < cutoff], harmful, harmless, prefix, filtered
    )
    last = [key.layer for key in nonzero if key.pos == -1]
    raw_h, _ = _suffixes(model, analysis.prompts.get("harmful", "validation")[: cfg.arditi_prompts])
    raw_s, _ = _suffixes(model, analysis.prompts.get("harmless", "validation")[: cfg.arditi_prompts])
    run = RunConfig()
    test = [p for kind in ("harmful", "harmless") for p in analysis.prompts.get(kind, "test")[: run.n_sweep]]
    n_angles = round(360 / run.angle_step)
    paper["rotation_variants"] = variant_work(n_layers, 3, n_angles, _suffixes(model, test)[0], prefix)
    return {"paper": paper, "last_position": scoring_work(n_layers, last, raw_h, raw_s, prefix)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--old-job", type=float, default=None, help="the last-position main job's cold seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    analysis = Analysis(model, AnalysisConfig(), progress=False)
    work = protocol_work(analysis)
    prompts = analysis.validation_prompts("harmful") + analysis.validation_prompts("harmless")
    rate = forward_rate(model, prompts, analysis.config.batch_size)
    out: dict = {"model": args.model, "threads": torch.get_num_threads(), "token_blocks_per_s": round(rate)}
    for name, jobs in work.items():
        total = sum(jobs.values())
        out[name] = {**jobs, "total": total, "least_seconds": round(total / rate, 1)}
    extra = out["paper"]["least_seconds"] - out["last_position"]["least_seconds"]
    out["least_extra_seconds"] = round(extra, 1)
    if args.old_job:
        out["old_job_seconds"] = args.old_job
        out["least_ratio"] = round((args.old_job + extra) / args.old_job, 3)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.model}: {rate:,.0f} token-blocks/s attained by a plain forward ({out['threads']} threads)")
    for name in work:
        row = out[name]
        jobs = ", ".join(f"{k} {v:,}" for k, v in work[name].items())
        print(f"  {name:14s} {row['total']:>12,} token-blocks ({jobs}) ≥ {row['least_seconds']} s")
    print(f"  the paper protocol needs ≥ {extra:.1f} s more than the last-position one")
    if args.old_job:
        print(f"  over a {args.old_job:g} s last-position job: ratio ≥ {out['least_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
