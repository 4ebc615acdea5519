"""Prompt sets: the shipped, fixed splits, and readers for the files researchers already have.

The package ships four prompt files in ``workbench/prompts/`` (see :data:`PROMPT_DIR`), all
written for this project as one-line *requests* (never answers):

* ``harmful.txt`` (260) -- red-teaming style requests (AdvBench/HarmBench-like one-liners);
* ``harmless.txt`` (260) -- ordinary Alpaca-style instructions, many sharing the harmful ones' verbs;
* ``borderline.txt`` (40) -- benign requests that *sound* dangerous (XSTest-like), to measure over-refusal;
* ``contrast.txt`` (80) -- harmless prompts worded like harmful ones, used **only** to train the refusal
  "model organism" so that it keys on content rather than form;

plus ``refusals.txt``, the short refusal replies the organism is trained to give.

Harmful and harmless are each cut into four fixed, disjoint splits, in this order, after a seeded
shuffle (``random.Random(<int>)``, never ``hash()``, so the cut is identical across runs/machines):

* ``organism_train`` (110) -- fine-tuning the model organism (never used to find a direction);
* ``direction_train`` (64) -- difference-in-means to extract candidate refusal directions;
* ``validation`` (32) -- choosing the layer/position of the best direction;
* ``test`` (54) -- held-out reporting (ablation/steering refusal rates).

Borderline is evaluation-only and has just a ``"test"`` split holding all 40 prompts.
:func:`prompt_set_hash` fingerprints any prompt list for provenance in saved results.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .artifacts import sha256_file
from .stats import wilson_half_width

PROMPT_DIR: Path = Path(__file__).resolve().parent / "prompts"

KINDS: tuple[str, ...] = ("harmful", "harmless", "borderline")
SPLITS: tuple[str, ...] = ("organism_train", "direction_train", "validation", "test")
SPLIT_SIZES: dict[str, int] = {"organism_train": 110, "direction_train": 64, "validation": 32, "test": 54}
SPLIT_SEEDS = {"harmful": 20240617, "harmless": 20240618}  # fixed ints: splits never change

SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".csv", ".json", ".jsonl")
# Column auto-detection, first match wins (JailbreakBench has both Goal and Behavior: Goal is the prompt).
_TABLE_COLUMNS = ("goal", "Goal", "Behavior", "prompt", "instruction", "text")
_RECORD_COLUMNS = ("prompt", "instruction", "goal", "Goal", "Behavior", "text")
_HARMBENCH_SKIP = {"contextual", "copyright"}


@cache
def _shipped(name: str) -> tuple[str, ...]:
    path = PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped prompt file {path} is missing; reinstall refusal-workbench "
            "(e.g. `pip install -e .`) so the package data workbench/prompts/*.txt is present"
        )
    return tuple(_read_txt(path))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {', '.join(KINDS)}")


@cache
def _splits(kind: str) -> dict[str, tuple[str, ...]]:
    prompts = list(_shipped(kind))
    total = sum(SPLIT_SIZES.values())
    if len(prompts) != total:
        raise ValueError(
            f"{PROMPT_DIR / (kind + '.txt')} has {len(prompts)} prompts but the fixed splits need exactly "
            f"{total}; restore the shipped file (reinstall the package) or use read_prompts() for your own set"
        )
    random.Random(SPLIT_SEEDS[kind]).shuffle(prompts)
    out, start = {}, 0
    for split in SPLITS:
        out[split] = tuple(prompts[start : start + SPLIT_SIZES[split]])
        start += SPLIT_SIZES[split]
    return out


def load_split(kind: str, split: str) -> list[str]:
    """Return the prompts of one fixed split of a shipped prompt set (a fresh list each call).

    ``kind`` is one of :data:`KINDS`, ``split`` one of :data:`SPLITS`; borderline only has ``"test"``.
    """
    _check_kind(kind)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if kind == "borderline":
        if split != "test":
            raise ValueError(
                f'borderline only has the "test" split (all 40 prompts are for evaluation), not {split!r}; '
                'use load_split("borderline", "test")'
            )
        return list(_shipped("borderline"))
    return list(_splits(kind)[split])


ANALYSIS_SPLITS: tuple[str, ...] = ("direction_train", "validation", "test")
MIN_PER_SPLIT = 4  # fewer prompts make a difference in means, a selection or a rate meaningless


@dataclass(frozen=True)
class SampleMinimum:
    """The fewest prompts per class a number is reported from without a warning, and why."""

    n: int
    use: str  # what the prompts are used for
    interval: Callable[[int], str]  # the interval n prompts give: the reason for the minimum


# Below these, `--json` outputs carry a warning (issue 29: 12 + 12 own prompts gave 3 validation prompts
# per class, AUC 1.0, Cohen's d 16.7, and rates from 4 test prompts, unwarned).
SAMPLE_MINIMUMS: dict[str, SampleMinimum] = {
    # the mean of each class, per coordinate: 95 % interval ±1.96 σ/√n of the prompts' own spread σ
    "train": SampleMinimum(
        32, "difference in means", lambda n: f"each class mean ±{1.96 / math.sqrt(n):.2f} σ per coordinate"
    ),
    # AUC's 95 % interval (Hanley-McNeil, AUC 0.5, n per class): ±0.20 at 16, ±0.50 at 3
    "selection": SampleMinimum(
        16,
        "direction selection (AUC, Cohen's d, Arditi's scores)",
        lambda n: f"an AUC's 95 % interval is ±{1.96 * math.sqrt((2 * n + 1) / (12 * n * n)):.2f}",
    ),
    # a refusal rate: Wilson 95 % half-width at p = 0.5 is 17 points at 30, 35 at 4
    "rate": SampleMinimum(
        30,
        "a refusal rate",
        lambda n: f"its Wilson 95 % interval is ±{100 * wilson_half_width(n):.0f} points at a rate of 50 %",
    ),
}


def sample_warnings(counts: Iterable[tuple[str, str, int]]) -> list[str]:
    """One line per ``(minimum, what was counted, n)`` below its :data:`SAMPLE_MINIMUMS` entry."""
    out = []
    for name, what, n in counts:
        low = SAMPLE_MINIMUMS[name]
        if n < low.n:
            detail = low.interval(n) if n > 0 else "no prompts at all"
            out.append(f"{what}: n = {n} < {low.n} for {low.use}; {detail}; use more prompts")
    return out


@dataclass(frozen=True)
class PromptSplits:
    """The harmful and harmless prompts of one analysis, cut into ``direction_train`` (candidates),
    ``validation`` (selection) and ``test`` (reported rates).

    ``PromptSplits.shipped()`` is the package's fixed splits; ``PromptSplits.from_files(h, s)`` cuts
    your own files in the same 64 : 32 : 54 proportions after a seeded shuffle.
    """

    sets: Mapping[tuple[str, str], tuple[str, ...]]
    source: str = "shipped"
    seed: int | None = None  # the shuffle seed of from_files (shipped splits: SPLIT_SEEDS)
    # from_files: {"harmful": {"path": as given, "sha256": of the bytes read}, "harmless": ...}, for
    # manifests and the figure index's command; not part of key(), which the prompts themselves define
    files: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)

    @classmethod
    def shipped(cls) -> PromptSplits:
        return cls({(k, s): tuple(load_split(k, s)) for k in ("harmful", "harmless") for s in ANALYSIS_SPLITS})

    @classmethod
    def from_files(
        cls, harmful: str | os.PathLike[str], harmless: str | os.PathLike[str], *, seed: int = 0
    ) -> PromptSplits:
        """Read two prompt files (any :func:`read_prompts` format) and split each one."""
        sets, files = {}, {}
        for kind, path in (("harmful", harmful), ("harmless", harmless)):
            prompts = read_prompts(path)
            files[kind] = {"path": str(path), "sha256": sha256_file(path)}
            need = MIN_PER_SPLIT * len(ANALYSIS_SPLITS)
            if len(prompts) < need:
                raise ValueError(
                    f"{path} has {len(prompts)} {kind} prompts; at least {need} are needed "
                    f"({MIN_PER_SPLIT} per split: {', '.join(ANALYSIS_SPLITS)})"
                )
            random.Random(seed).shuffle(prompts)
            sizes = [SPLIT_SIZES[s] for s in ANALYSIS_SPLITS]
            cuts = [round(len(prompts) * sum(sizes[: i + 1]) / sum(sizes)) for i in range(len(sizes))]
            for split, start, stop in zip(ANALYSIS_SPLITS, [0] + cuts[:-1], cuts):
                sets[(kind, split)] = tuple(prompts[start:stop])
        source = f"files:{Path(harmful).name},{Path(harmless).name};seed={seed}"
        return cls(sets, source=source, seed=seed, files=files)

    def get(self, kind: str, split: str) -> list[str]:
        if (kind, split) not in self.sets:
            raise ValueError(f"no {kind}/{split} prompts here; splits are {', '.join(ANALYSIS_SPLITS)}")
        return list(self.sets[(kind, split)])

    def fingerprints(self) -> dict[str, dict[str, Any]]:
        """``{"harmful/test": {"n": 54, "sha256_16": ...}, ...}`` for manifests."""
        return {f"{k}/{s}": {"n": len(p), "sha256_16": prompt_set_hash(p)} for (k, s), p in self.sets.items()}

    def key(self) -> str:
        return prompt_set_hash([json.dumps(self.fingerprints(), sort_keys=True)])


def load_contrast() -> list[str]:
    """Return the 80 contrast prompts (harmless, harmful-sounding); for organism training only."""
    return list(_shipped("contrast"))


def load_refusals() -> list[str]:
    """Return the shipped refusal replies the model organism is trained to give."""
    return list(_shipped("refusals"))


# The graded organism's two extra behaviours (issue: a graded organism): request → target parts.
GRADED_KINDS: tuple[str, ...] = ("warning", "redirect")
GRADED_SPLIT_SIZES: dict[str, int] = {"organism_train": 110, "test": 60}
GRADED_SEEDS = {"warning": 20261203, "redirect": 20261204}
_GRADED_FIELDS = {"warning": ("prompt", "warning"), "redirect": ("prompt", "redirect", "alternative")}


@cache
def _graded(kind: str) -> dict[str, tuple[dict[str, str], ...]]:
    if kind not in GRADED_KINDS:
        raise ValueError(f"unknown graded kind {kind!r}; choose one of {', '.join(GRADED_KINDS)}")
    path = PROMPT_DIR / f"{kind}.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    total = sum(GRADED_SPLIT_SIZES.values())
    bad = [i for i, r in enumerate(records, 1) if set(r) != set(_GRADED_FIELDS[kind])]
    if len(records) != total or bad:
        raise ValueError(
            f"{path} must hold exactly {total} records with fields {', '.join(_GRADED_FIELDS[kind])} "
            f"(found {len(records)}, bad lines {bad[:5]}); restore the shipped file (reinstall the package)"
        )
    random.Random(GRADED_SEEDS[kind]).shuffle(records)
    n = GRADED_SPLIT_SIZES["organism_train"]
    return {"organism_train": tuple(records[:n]), "test": tuple(records[n:])}


def load_graded(kind: str, split: str) -> list[dict[str, str]]:
    """Records of the graded organism's categories, for training and held-out measurement.

    ``warning``: ``{"prompt", "warning"}``: a dual-use request a careful assistant answers, and
    the one-sentence safety warning it puts first. ``redirect``: ``{"prompt", "redirect",
    "alternative"}``: a harmful request with a legitimate need, the sentence that declines it and
    turns to the need, and the alternative written as a request of its own. Splits:
    ``organism_train`` (110) and ``test`` (60), disjoint, after a seeded shuffle.
    """
    if split not in GRADED_SPLIT_SIZES:
        raise ValueError(f"unknown graded split {split!r}; choose one of {', '.join(GRADED_SPLIT_SIZES)}")
    return [dict(r) for r in _graded(kind)[split]]


BEHAVIOUR_CATEGORIES: tuple[str, ...] = ("harmful", "redirect", "warning", "borderline", "harmless")


def graded_test_sets() -> dict[str, list[str]]:
    """Held-out prompts of every behaviour category, in :data:`BEHAVIOUR_CATEGORIES` order: harmful
    (refuse), redirect (decline and help with the legitimate need), warning (answer with a safety
    warning), borderline (answer: they only sound dangerous), harmless (answer)."""
    sets = {kind: load_split(kind, "test") for kind in ("harmful", "borderline", "harmless")}
    sets |= {kind: [r["prompt"] for r in load_graded(kind, "test")] for kind in GRADED_KINDS}
    return {c: sets[c] for c in BEHAVIOUR_CATEGORIES}


def prompt_set_hash(prompts: Sequence[str]) -> str:
    """Order-sensitive fingerprint of a prompt list: first 16 hex chars of sha256 of the "\\n"-joined prompts."""
    if isinstance(prompts, str):
        raise TypeError("prompt_set_hash expects a sequence of prompts, not one string; wrap it in a list")
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


def _read_txt(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pick_column(found: Iterable[str], column: str | None, candidates: Sequence[str], source: object) -> str:
    found = list(found)
    if column is not None:
        if column not in found:
            raise ValueError(f"column {column!r} not found in {source}; the columns found are {found}")
        return column
    for name in candidates:
        if name in found:
            return name
    raise ValueError(
        f"no recognisable prompt column in {source} (looked for {list(candidates)}); the columns found are "
        f"{found}; rename the prompt column to 'prompt' (or, in Python, pass read_prompts(path, column='...'))"
    )


def _keep_row(row: Mapping[str, Any], column: str) -> bool:
    """Row filters shared by every tabular format.

    * Alpaca: rows with a non-empty ``input`` are dropped, because their ``instruction`` is not
      self-contained (e.g. "Summarize this text" needs the text in ``input``).
    * HarmBench: "contextual"/"copyright" behaviours, and any row with a ``ContextString``, need
      extra context to be a request at all, so only standard one-line behaviours are kept.
    """
    if column == "instruction" and str(row.get("input") or "").strip():
        return False
    if str(row.get("FunctionalCategory") or "").strip().lower() in _HARMBENCH_SKIP:
        return False
    return not str(row.get("ContextString") or "").strip()


def _from_rows(rows: Iterable[Mapping[str, Any]], column: str) -> list[str]:
    return [str(row.get(column) or "") for row in rows if _keep_row(row, column)]


def _from_records(records: list[Any], column: str | None, source: object) -> list[str]:
    """Plain strings pass through; objects contribute their prompt field (auto-detected on the first)."""
    dicts = [r for r in records if isinstance(r, Mapping)]
    col = _pick_column(dicts[0].keys(), column, _RECORD_COLUMNS, source) if dicts else None
    out = []
    for record in records:
        if isinstance(record, str):
            out.append(record)
        elif isinstance(record, Mapping) and col is not None:
            out.extend(_from_rows([record], col))
        else:
            raise ValueError(f"{source}: expected strings or objects, got {type(record).__name__}: {record!r}")
    return out


def _finish(prompts: Iterable[str], limit: int | None, source: object) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for prompt in prompts:
        prompt = prompt.strip()
        if prompt and prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(
            f"{source} contains no prompts (after dropping blanks and filtered rows); check the file and column"
        )
    return out


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")


def read_prompts(path: str | os.PathLike[str], *, column: str | None = None, limit: int | None = None) -> list[str]:
    """Read prompts from a local .txt, .csv (AdvBench/HarmBench/JailbreakBench), .json (Alpaca) or .jsonl file.

    Prompts are stripped; blanks and exact duplicates are dropped (first kept); order is kept;
    ``limit`` keeps the first N. ``column`` overrides the auto-detected prompt column.
    """
    _check_limit(limit)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported prompt file {path} (suffix {path.suffix!r}); supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}; check the path (relative to {Path.cwd()})")
    try:
        prompts = _read_file(path, suffix, column)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); re-save it as UTF-8") from None
    return _finish(prompts, limit, path)


def _read_file(path: Path, suffix: str, column: str | None) -> list[str]:
    if suffix == ".txt":
        prompts = _read_txt(path)
    elif suffix == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            col = _pick_column(reader.fieldnames or [], column, _TABLE_COLUMNS, path)
            prompts = _from_rows(reader, col)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} is not valid JSON: line {err.lineno}: {err.msg}; fix the file or save it as .jsonl"
            ) from err
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of strings or objects, got a {type(data).__name__}")
        prompts = _from_records(data, column, path)
    else:
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{path}: line {n} is not valid JSON ({err.msg}); each line must be one JSON object or string"
                    ) from err
        prompts = _from_records(records, column, path)
    return prompts


def load_hf_dataset(
    name: str, *, split: str = "train", column: str | None = None, limit: int | None = None
) -> list[str]:
    """Load prompts from a Hugging Face dataset (needs the ``datasets`` library and network access).

    Same column auto-detection, row filters (Alpaca empty ``input``, HarmBench standard behaviours)
    and cleaning as :func:`read_prompts`.
    """
    _check_limit(limit)
    source = f"Hugging Face dataset {name!r} (split {split!r})"
    try:
        import datasets  # lazy: heavy import, and only needed by online users

        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - ImportError, network, auth, bad name: all get the same advice
        raise RuntimeError(
            f"could not load {source}: {type(err).__name__}: {err}. Are you offline, or is the name/split wrong? "
            "Download the dataset file (CSV/JSON/JSONL) and use workbench.data.read_prompts(path) instead"
        ) from err
    col = _pick_column(ds.column_names, column, _TABLE_COLUMNS, source)
    return _finish(_from_rows(ds, col), limit, source)
