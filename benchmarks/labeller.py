"""How well the heuristic labeller agrees with hand labels: confusion matrix, precision and recall.

    .venv/bin/python benchmarks/labeller.py                       # prints the report (markdown)
    .venv/bin/python benchmarks/labeller.py --json                # the same numbers as JSON
    .venv/bin/python benchmarks/labeller.py --out figures/organism-graded/labeller.md
    .venv/bin/python benchmarks/labeller.py --draw RUN/experiments/HASH   # a fresh sample to label

Two hand-labelled sets of organism-graded responses, one JSON object per line with ``prompt``,
``response``, ``hand_label`` (one of ``workbench.labels.ALL_LABELS``) and where it came from
(``source``, ``category``, ``angle``):

* **held-out**, ``tests/data/graded_hand_labels_heldout.jsonl``: drawn by ``--draw`` (seed
  :data:`HELDOUT_SEED`) from the graded main job's cached per-prompt tables, none of them in the
  in-sample set, labelled blind to the heuristic (``labeller`` says by whom and how); the labeller
  was not changed after. Its agreement is the one to quote.
* **in-sample**, ``tests/data/graded_hand_labels.jsonl``: the 196 responses the labeller's rules
  were revised on, so its agreement there is optimistic.

``tests/test_labeller.py`` checks the committed report and the README's numbers against these.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter
from pathlib import Path

from workbench.labels import ALL_LABELS, heuristic_label, label_agreement

HAND_LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "graded_hand_labels.jsonl"
HELDOUT_LABELS = HAND_LABELS.with_name("graded_hand_labels_heldout.jsonl")
HELDOUT_SEED = 20261204


def read_hand_labels(path: Path = HAND_LABELS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _table(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def draw_heldout(experiments: Path, exclude: list[dict], *, seed: int = HELDOUT_SEED, unsteered: int = 5) -> list[dict]:
    """A fresh sample of a graded main job's responses for hand labelling, without their labels.

    ``experiments`` is the job's ``<run folder>/experiments/<hash>/``: one response per swept set and
    angle (``angle_sweep_per_prompt.csv``) and ``unsteered`` per held-out category
    (``behaviours_per_prompt.csv``), drawn with ``random.Random(seed)``; a (prompt, response) pair in
    ``exclude`` (the hand labels the labeller was revised on) or drawn before is never drawn.
    """
    rng, seen = random.Random(seed), {(r["prompt"], r["response"]) for r in exclude}
    strata: dict[tuple, list[dict]] = {}
    for r in _table(experiments / "angle_sweep_per_prompt.csv"):
        strata.setdefault(("steered", r["split"], float(r["angle"])), []).append(r)
    for r in _table(experiments / "behaviours_per_prompt.csv"):
        strata.setdefault(("unsteered", r["category"], None), []).append(r)
    out = []
    for (source, category, angle), rows in sorted(strata.items(), key=lambda kv: str(kv[0])):
        fresh = [r for r in rows if (r["prompt"], r["response"]) not in seen]
        for r in rng.sample(fresh, min(len(fresh), 1 if source == "steered" else unsteered)):
            seen.add((r["prompt"], r["response"]))
            row = {"source": source, "category": category, "angle": angle}
            out.append(row | {"prompt": r["prompt"], "response": r["response"], "id": len(out)})
    return out


def agreement(rows: list[dict]) -> dict:
    """:func:`workbench.labels.label_agreement` of the heuristic labels against ``hand_label``."""
    return label_agreement([r["hand_label"] for r in rows], [heuristic_label(r["prompt"], r["response"]) for r in rows])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _by_source(rows: list[dict], source: str) -> str:
    out = agreement([r for r in rows if r["source"] == source])
    low, high = out["accuracy_ci95"]
    return f"{source} alone {out['accuracy']:.1%} ({low:.1%}–{high:.1%}, n = {out['n']})"


def _section(title: str, rows: list[dict]) -> list[str]:
    """One set's make-up, agreement, per-label precision / recall and confusion matrix."""
    out, sources = agreement(rows), Counter(r["source"] for r in rows)
    low, high = out["accuracy_ci95"]
    lines = [
        f"## {title}",
        "",
        f"{out['n']} responses (" + ", ".join(f"{n} {s}" for s, n in sources.items()) + "); the heuristic agrees "
        f"on {out['accuracy']:.1%} (95 % Wilson interval {low:.1%}–{high:.1%}); "
        + "; ".join(_by_source(rows, source) for source in sources)
        + ".",
        "",
        "| label | hand-labelled | precision | recall |",
        "|---|---|---|---|",
    ]
    for lab, m in out["per_label"].items():
        lines.append(f"| {lab} | {m['support']} | {_fmt(m['precision'])} | {_fmt(m['recall'])} |")
    lines += ["", "Confusion matrix (rows: hand label, columns: heuristic label):", ""]
    lines += ["| hand \\ heuristic | " + " | ".join(ALL_LABELS) + " |", "|---|" + "---|" * len(ALL_LABELS)]
    for hand, row in out["confusion"].items():
        lines.append(f"| {hand} | " + " | ".join(str(row[p]) for p in ALL_LABELS) + " |")
    return lines + [""]


def report(heldout: list[dict], insample: list[dict]) -> str:
    """Markdown: the held-out set's agreement first, then the in-sample set's."""
    lines = [
        "# The heuristic labeller against hand labels",
        "",
        "Organism-graded responses labelled by reading each one. Regenerate with "
        "`.venv/bin/python benchmarks/labeller.py --out figures/organism-graded/labeller.md`.",
        "",
    ]
    lines += _section(
        f"Held-out ({HELDOUT_LABELS.name}: drawn fresh, labelled blind, labeller unchanged after)", heldout
    )
    lines += _section(f"In-sample ({HAND_LABELS.name}: the labeller's rules were revised on these)", insample)
    return "\n".join(lines)


def numbers(heldout: list[dict], insample: list[dict]) -> dict:
    """The report's numbers as one JSON-ready dict: ``{"held_out": ..., "in_sample": ...}``."""
    return {"held_out": agreement(heldout), "in_sample": agreement(insample)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=HELDOUT_LABELS, help="the held-out hand-labelled JSONL file")
    parser.add_argument("--in-sample", type=Path, default=HAND_LABELS, help="the in-sample hand-labelled JSONL file")
    parser.add_argument("--out", type=Path, help="write the markdown report here (default: print it)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead")
    parser.add_argument("--draw", type=Path, metavar="EXPERIMENTS", help="print a fresh, unlabelled sample as JSONL")
    args = parser.parse_args()
    heldout, insample = read_hand_labels(args.labels), read_hand_labels(args.in_sample)
    if args.draw:
        for row in draw_heldout(args.draw, insample):
            print(json.dumps(row, ensure_ascii=False))
        return
    text = json.dumps(numbers(heldout, insample), indent=1) + "\n" if args.json else report(heldout, insample)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
