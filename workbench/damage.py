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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .artifacts import atomic_write_text
from .data import PROMPT_DIR, load_split
from .experiments import reference_cross_entropy
from .generation import generate, last_token_logprobs
from .labels import degeneration
from .metrics import first_token_kl
from .models import load_model
from .stats import bootstrap_ci, bootstrap_diff_ci, wilson_interval

__all__ = ["HELDOUT_ANSWERS", "load_heldout_answers", "write_heldout_answers", "measure_damage"]

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
    held-out harmless prompts and answers (default all). Returns a JSON-ready dict (see the CLI)."""
    prompts, answers = load_heldout_answers()
    if n is not None:
        prompts, answers = prompts[:n], answers[:n]
    base_ce = reference_cross_entropy(model, prompts, answers, batch_size=batch_size).tolist()
    base_lp = last_token_logprobs(model, prompts, batch_size=batch_size)
    base_text = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    edited = value.edit(model, direction, plane)  # weight edits (orthogonalize) act through a copy
    hooks = value.hooks(edited, direction, plane)
    ce = reference_cross_entropy(edited, prompts, answers, hooks=hooks, batch_size=batch_size).tolist()
    kl = first_token_kl(base_lp, last_token_logprobs(edited, prompts, hooks=hooks, batch_size=batch_size)).tolist()
    text = generate(
        edited, prompts, hooks=hooks, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
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
