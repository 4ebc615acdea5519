"""The least time Arditi et al.'s direction selection can take here, under each protocol.

Counts the forward work of every scoring job the selection runs, on the real prompts and candidates
of an analysis: the prompt filter, the bypass/KL rows (one ablated forward per candidate and
validation prompt), the induce rows (from the candidate's own block up), each candidate's shared
template prefix and the unsteered rows they compare with. The unit is a *token-block*: one token
through one transformer block. The count is the least any exact implementation needs: every row
through every block, except that the last block serves only the last position (the scores read
nothing else) and the unsteered rows come with the filter's pass. The paper protocol's main job
also runs the rotation-variant comparison (first-token scores under three more rotation
variants), counted with it.

Then it measures two rates here, in token-blocks per second: a plain TransformerLens forward of the
scoring batch shape (no hooks, shared prefix cached), and the block's weight matmuls alone, each at
its best time (as if attention, norms, activations, hooks and Python cost nothing). Work / rate is
a lower bound on that work's time: the first for an implementation built on TransformerLens's
forward, the second even if everything but the weight matmuls were free (fp32, this CPU's BLAS).

Protocols compared:

* ``paper`` (the default analysis): every post-instruction position, layers below the study's
  cut-off, validation prompts kept by the refusal-score filter, plus the filter itself;
* ``last_position``: what the main job scored before the studies' protocols were the default
  (position −1, every layer with a non-zero candidate, the first ``arditi_prompts`` validation
  prompts unfiltered, no filter).

``--old-job S`` (the last-position main job's measured cold seconds, same host) adds the least
ratio an exact implementation of the paper protocol can reach over it, ``(S + extra) / S``, with
the job's other stages as fast as they are.

    .venv/bin/python benchmarks/protocol_cost.py [--model organism] [--old-job 406] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

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
    """The least token-blocks of each scoring job of Arditi's selection (see the module docstring).

    ``cand_layers``: the block of every scored candidate; ``harmful`` / ``harmless``: the suffix
    length (tokens after the shared ``prefix``) of every validation prompt scored; ``filtered``: the
    suffix lengths of every prompt the refusal-score filter runs (empty: no filter).

    Counted low wherever an exact implementation could save: a row needs the last block for its
    last token only (the scores read the last position), a prefix not at all; the unsteered
    log-probs and residuals come free with the filter's pass over the same prompts when it runs.
    """
    if not cand_layers:
        return {"filter": 0, "bypass_kl": 0, "induce": 0, "unsteered": 0}

    def rows(suffixes: Sequence[int], first: int = 0) -> int:  # rows from block ``first`` to the end
        return sum((n_layers - 1 - first) * tokens + 1 for tokens in suffixes)

    def head(first: int = 0) -> int:  # a prefix from block ``first`` up to the last block
        return (n_layers - 1 - first) * prefix

    return {
        # the unsteered model on every prompt the filter scores (one prefix)
        "filter": head() + rows(filtered) if filtered else 0,
        # each candidate: its ablated prefix once, then every harmful and harmless row
        "bypass_kl": len(cand_layers) * (head() + rows(harmful) + rows(harmless)),
        # each candidate: its prefix and harmless rows from its own block up
        "induce": sum(head(layer) + rows(harmless, layer) for layer in cand_layers),
        # the KL's unsteered log-probs (the residuals the induce rows start from come with them)
        "unsteered": 0 if filtered else head() + rows(harmless),
    }


def variant_work(n_layers: int, n_variants: int, n_angles: int, suffixes: Sequence[int], prefix: int) -> int:
    """The least token-blocks of the main job's rotation-variant comparison (first-token scores of
    each prompt at each angle under each variant besides the sweep's own; a prefix per setting,
    counted as in :func:`scoring_work`)."""
    per_setting = (n_layers - 1) * prefix + sum((n_layers - 1) * tokens + 1 for tokens in suffixes)
    return n_variants * n_angles * per_setting


def _tokenized(model, prompts: Sequence[str]) -> tuple[list[list[int]], int]:
    """The chat-formatted prompts' token ids and the length of their shared prefix."""
    ids = encode(model.tokenizer, format_prompts(model.tokenizer, prompts))
    return ids, shared_prefix_length(ids)


def _suffixes(model, prompts: Sequence[str]) -> tuple[list[int], int]:
    ids, prefix = _tokenized(model, prompts)
    return [len(r) - prefix for r in ids], prefix


@torch.inference_mode()
def forward_rate(model, prompts: Sequence[str], batch_size: int, reps: int = 5) -> float:
    """Token-blocks per second of a plain forward of ``batch_size`` rows of the prompts' median
    suffix length on top of their cached shared prefix (the scoring jobs' batch shape; best of
    ``reps``)."""
    ids, prefix = _tokenized(model, prompts)
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


@torch.inference_mode()
def matmul_rate(model, tokens: int, seconds: float = 0.5) -> float:
    """Token-blocks per second if a block cost nothing but its weight matmuls (``F.linear`` at
    block 0's weight shapes on ``tokens`` rows): no attention, norms, activations, hooks or Python.
    Each shape runs for ``seconds`` after a warm-up; its best mean over windows of 5 calls counts."""
    d_model, total = model.cfg.d_model, 0.0
    for name, weight in model.blocks[0].named_parameters():
        if weight.dim() < 2:
            continue
        reads = weight.numel() // d_model if name.endswith(("W_O", "W_out")) else d_model
        w = torch.randn(weight.numel() // reads, reads, dtype=weight.dtype, device=weight.device)
        x = torch.randn(tokens, reads, dtype=weight.dtype, device=weight.device)
        for _ in range(3):
            F.linear(x, w)
        best, stop = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < stop:
            start = time.perf_counter()
            for _ in range(5):
                F.linear(x, w)
            best = min(best, (time.perf_counter() - start) / 5)
        total += best
    return tokens / total


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
    batch = analysis.config.batch_size
    rates = {"forward": forward_rate(model, prompts, batch)}
    rates["matmul"] = matmul_rate(model, batch * round(sum(_suffixes(model, prompts)[0]) / len(prompts)))
    out: dict = {"model": args.model, "threads": torch.get_num_threads()}
    out["token_blocks_per_s"] = {k: round(v) for k, v in rates.items()}
    for name, jobs in work.items():
        total = sum(jobs.values())
        out[name] = {**jobs, "total": total, "least_seconds": {k: round(total / v, 1) for k, v in rates.items()}}
    extra = {k: out["paper"]["least_seconds"][k] - out["last_position"]["least_seconds"][k] for k in rates}
    out["least_extra_seconds"] = {k: round(v, 1) for k, v in extra.items()}
    if args.old_job:
        out["old_job_seconds"] = args.old_job
        out["least_ratio"] = {k: round((args.old_job + v) / args.old_job, 3) for k, v in extra.items()}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.model} ({out['threads']} threads), token-blocks per second:")
    print(f"  {rates['forward']:>9,.0f}  a plain forward of the scoring batch shape (TransformerLens, no hooks)")
    print(f"  {rates['matmul']:>9,.0f}  the block's weight matmuls alone, each at its best time")
    for name in work:
        row = out[name]
        jobs = ", ".join(f"{k} {v:,}" for k, v in work[name].items())
        least = " / ".join(f"{v} s" for v in row["least_seconds"].values())
        print(f"{name}: {row['total']:,} token-blocks ({jobs}): ≥ {least} (forward / matmul rate)")
    print("the paper protocol's added work: ≥ " + " / ".join(f"{v:.1f} s" for v in extra.values()))
    if args.old_job:
        ratios = " / ".join(str(v) for v in out["least_ratio"].values())
        print(f"over a {args.old_job:g} s last-position job: ratio ≥ {ratios} (forward / matmul rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
