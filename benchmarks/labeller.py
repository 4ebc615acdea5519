"""How well the heuristic labeller agrees with hand labels: confusion matrix, precision and recall.

    .venv/bin/python benchmarks/labeller.py                       # prints the report (markdown)
    .venv/bin/python benchmarks/labeller.py --out figures/organism-graded/labeller.md

The hand-labelled set is ``tests/data/graded_hand_labels.jsonl``: organism-graded responses
(unsteered, every held-out category, and steered around the angle map), one JSON object per line
with ``prompt``, ``response``, ``hand_label`` (one of ``workbench.labels.ALL_LABELS``) and where
it came from (``source``, ``category``, ``angle``). ``tests/test_labeller.py`` holds the labeller
to the precision and recall this report states.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.labels import ALL_LABELS, heuristic_label, label_agreement

HAND_LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "graded_hand_labels.jsonl"


def read_hand_labels(path: Path = HAND_LABELS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def agreement(rows: list[dict]) -> dict:
    """:func:`workbench.labels.label_agreement` of the heuristic labels against ``hand_label``."""
    return label_agreement([r["hand_label"] for r in rows], [heuristic_label(r["prompt"], r["response"]) for r in rows])


def report(rows: list[dict]) -> str:
    """Markdown: the set's make-up, per-label precision/recall and the confusion matrix."""
    out = agreement(rows)
    sources: dict[str, int] = {}
    for r in rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    lines = [
        "# The heuristic labeller against hand labels",
        "",
        f"{out['n']} organism-graded responses labelled by hand ("
        + ", ".join(f"{n} {s}" for s, n in sources.items())
        + f"); the heuristic agrees on {out['accuracy']:.0%}. Regenerate with "
        "`.venv/bin/python benchmarks/labeller.py --out figures/organism-graded/labeller.md`.",
        "",
        "| label | hand-labelled | precision | recall |",
        "|---|---|---|---|",
    ]
    for lab, m in out["per_label"].items():
        fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {lab} | {m['support']} | {fmt(m['precision'])} | {fmt(m['recall'])} |")
    lines += ["", "Confusion matrix (rows: hand label, columns: heuristic label):", ""]
    lines += ["| hand \\ heuristic | " + " | ".join(ALL_LABELS) + " |", "|---|" + "---|" * len(ALL_LABELS)]
    for hand, row in out["confusion"].items():
        lines.append(f"| {hand} | " + " | ".join(str(row[p]) for p in ALL_LABELS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=HAND_LABELS, help="the hand-labelled JSONL file")
    parser.add_argument("--out", type=Path, help="write the markdown report here (default: print it)")
    args = parser.parse_args()
    text = report(read_hand_labels(args.labels))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
