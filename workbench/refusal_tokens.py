"""Which first response tokens count as a refusal in Arditi et al.'s score: given, or discovered.

:func:`parse_refusal_tokens` reads ``--refusal-tokens`` (``40,1383`` or ``I,Sorry,"As an"``);
:func:`resolve_refusal_tokens` turns ids and strings into ids of the model's vocabulary (a string
stands for the first token the model's tokenizer makes of it, without a leading space).
:func:`discover_refusal_tokens` finds them from the model's own greedy responses to harmful and
harmless prompts: the first tokens of the responses that contain a refusal phrase
(:func:`workbench.labels.is_refusal`); failing that, the first tokens that open many more harmful
than harmless responses. Either way the result says how it was chosen and how well the chosen
tokens separate the two sets; when nothing separates them the model "refuses nothing" (no ids).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from torch import Tensor

from .generation import generate, last_token_logprobs
from .labels import is_refusal
from .metrics import refusal_logodds, refusal_token_ids

__all__ = [
    "RefusalTokens",
    "MIN_SHARE_GAP",
    "MAX_DISCOVERED",
    "FIX",
    "parse_refusal_tokens",
    "resolve_refusal_tokens",
    "discover_refusal_tokens",
    "with_separation",
]

MIN_SHARE_GAP = 0.25  # a discovered token opens ≥ 25 points more of the harmful responses than of the harmless
MAX_DISCOVERED = 3  # the study sets one to three per model ("I"; "I", "As")
FIX = '--refusal-tokens (e.g. --refusal-tokens I,Sorry) or "analysis": {"refusal_tokens": ["I", "Sorry"]} in --config'


@dataclass(frozen=True)
class RefusalTokens:
    """The refusal token ids and their tokens, where they came from (``source``: ``"config"``,
    ``"discovered"`` or ``"none"``), the rule that chose them (``method``: ``"config"``,
    ``"refusal_phrases"``, ``"first_token_separation"`` or ``"none"``), one sentence saying so
    (``how``) and the statistics (``separation``: the AUC of the refusal log-odds between the
    harmful and harmless prompts, and per candidate token its share of each set's greedy first tokens)."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]  # as the vocabulary spells them ("ĠI")
    strings: tuple[str, ...]  # as they read when decoded (" I")
    source: str
    method: str
    how: str
    separation: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**asdict(self), "ids": list(self.ids), "tokens": list(self.tokens), "strings": list(self.strings)}

    @classmethod
    def from_json(cls, values: dict) -> RefusalTokens:
        """Read ``refusal_tokens.json``; a file from before sources were recorded held the first
        tokens of the model's own refusals (``{"ids", "tokens"}`` only)."""
        return cls(
            ids=tuple(int(i) for i in values["ids"]),
            tokens=tuple(values.get("tokens", ())),
            strings=tuple(values.get("strings", values.get("tokens", ()))),
            source=values.get("source", "discovered"),
            method=values.get("method", "refusal_phrases"),
            how=values.get(
                "how", "the first tokens of the model's own refusals of the direction_train harmful prompts"
            ),
            separation=values.get("separation", {}),
        )


def parse_refusal_tokens(text: str) -> tuple[int | str, ...]:
    """``--refusal-tokens``'s value as ids and strings: comma-separated, CSV-quoted where a string
    holds a comma or spaces (``I,Sorry,"As an"``); an item of digits only is an id."""
    items = next(csv.reader([text], skipinitialspace=True), [])
    if not items or any(not item.strip() for item in items):
        raise ValueError(
            f"--refusal-tokens {text!r} has an empty item; pass comma-separated ids (40,1383) or strings "
            '(I,Sorry,"As an")'
        )
    return tuple(int(item) if item.strip().isdigit() else item for item in items)


def resolve_refusal_tokens(tokenizer, values: Sequence[int | str], d_vocab: int) -> RefusalTokens:
    """``values`` (ids and strings) as distinct ids in order, each checked against the vocabulary;
    a string becomes the first token of ``tokenizer.encode(string, add_special_tokens=False)``."""
    where = '--refusal-tokens / "analysis": {"refusal_tokens"}'
    ids: list[int] = []
    for value in values:
        if isinstance(value, str):
            encoded = list(tokenizer.encode(value, add_special_tokens=False))
            if not encoded:
                raise ValueError(f"{where}: {value!r} tokenizes to nothing with this model's tokenizer; pass its id")
            value = int(encoded[0])
        elif not 0 <= value < d_vocab:
            raise ValueError(f"{where}: token id {value} is outside this model's vocabulary (ids 0-{d_vocab - 1})")
        if value not in ids:
            ids.append(value)
    return RefusalTokens(
        tuple(ids),
        tuple(tokenizer.convert_ids_to_tokens(ids)),
        tuple(tokenizer.decode([i]) for i in ids),
        "config",
        "config",
        f"given as {list(values)!r}; strings stand for their first token",
    )


def _auc(pos: Tensor, neg: Tensor) -> float:
    """P(pos > neg) + ½·P(pos = neg) over all pairs (the Mann–Whitney AUC)."""
    p, n = pos[:, None], neg[None, :]
    return float((p > n).double().mean() + 0.5 * (p == n).double().mean())


def _separation(lp_h: Tensor, lp_s: Tensor, ids: Sequence[int]) -> dict:
    """How the refusal log-odds of ``ids`` separate harmful from harmless first-token log-probs."""
    if not ids:
        return {}
    s_h, s_s = refusal_logodds(lp_h, ids), refusal_logodds(lp_s, ids)
    return {
        "auc": round(_auc(s_h, s_s), 4),
        "mean_logodds_harmful": round(float(s_h.mean()), 3),
        "mean_logodds_harmless": round(float(s_s.mean()), 3),
        "n_harmful": len(s_h),
        "n_harmless": len(s_s),
    }


def with_separation(
    model, found: RefusalTokens, harmful: Sequence[str], harmless: Sequence[str], *, batch_size: int = 32
) -> RefusalTokens:
    """``found`` (e.g. given tokens) with its ``separation`` measured on ``harmful`` / ``harmless``."""
    lp_h = last_token_logprobs(model, harmful, batch_size=batch_size)
    lp_s = last_token_logprobs(model, harmless, batch_size=batch_size)
    table = _first_token_table(model.tokenizer, lp_h, lp_s)
    return replace(found, separation={**_separation(lp_h, lp_s, found.ids), "first_tokens": table[:5]})


def _first_token_table(tokenizer, lp_h: Tensor, lp_s: Tensor) -> list[dict]:
    """Every token that opens a greedy harmful response: its share of the harmful and of the
    harmless first tokens and their gap, with the mean log-prob gap; largest share gap first."""
    first_h, first_s = Counter(lp_h.argmax(-1).tolist()), Counter(lp_s.argmax(-1).tolist())
    rows = []
    for tid in first_h:
        share_h, share_s = first_h[tid] / len(lp_h), first_s.get(tid, 0) / len(lp_s)
        rows.append(
            {
                "id": int(tid),
                "token": tokenizer.convert_ids_to_tokens([tid])[0],
                "string": tokenizer.decode([tid]),
                "harmful_share": round(share_h, 4),
                "harmless_share": round(share_s, 4),
                "share_gap": round(share_h - share_s, 4),
                "logprob_gap": round(float(lp_h[:, tid].mean() - lp_s[:, tid].mean()), 3),
            }
        )
    return sorted(rows, key=lambda r: (-r["share_gap"], -r["logprob_gap"], r["id"]))


def discover_refusal_tokens(
    model, harmful: Sequence[str], harmless: Sequence[str], *, max_new_tokens: int = 8, batch_size: int = 32
) -> RefusalTokens:
    """The refusal tokens of ``model`` from its greedy responses (see the module docs): the first
    tokens of the harmful responses that contain a refusal phrase; else up to
    :data:`MAX_DISCOVERED` first tokens whose share of the harmful responses' first tokens exceeds
    their share of the harmless ones by ≥ :data:`MIN_SHARE_GAP`; else none (``source="none"``)."""
    tok = model.tokenizer
    responses, lp_h = generate(model, harmful, max_new_tokens=max_new_tokens, return_logprobs=True)
    lp_s = last_token_logprobs(model, harmless, batch_size=batch_size)
    table = _first_token_table(tok, lp_h, lp_s)
    refusals = [r for r in responses if is_refusal(r)]
    if refusals:
        ids = refusal_token_ids(tok, refusals)
        method = "refusal_phrases"
        how = (
            f"the first tokens of the model's own refusals: {len(refusals)} of its {len(responses)} greedy "
            "responses to the direction_train harmful prompts contain a refusal phrase (workbench.labels.is_refusal)"
        )
    else:
        ids = [r["id"] for r in table if r["share_gap"] >= MIN_SHARE_GAP][:MAX_DISCOVERED]
        method = "first_token_separation" if ids else "none"
        how = (
            f"none of the model's {len(responses)} greedy responses to the direction_train harmful prompts "
            f"contains a refusal phrase; {'chosen' if ids else 'no token qualifies'}: the greedy first tokens "
            f"whose share of the harmful responses exceeds their share of the harmless ones by ≥ {MIN_SHARE_GAP}"
        )
    separation = {**_separation(lp_h, lp_s, ids), "first_tokens": table[:5]}
    return RefusalTokens(
        tuple(ids),
        tuple(tok.convert_ids_to_tokens(ids)),
        tuple(tok.decode([i]) for i in ids),
        "discovered" if ids else "none",
        method,
        how,
        separation,
    )
