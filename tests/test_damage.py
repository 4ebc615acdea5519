"""workbench damage: CE loss equals a log-softmax computed by hand on a tiny model, the shipped held-out
answers are the base model's and disjoint from the organism's training prompts, the command's JSON
keys on the organism (slow) and its bad input (exit 2, one clear error)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import byte_tokenizer, tiny_model

from workbench import data
from workbench.cli import main
from workbench.damage import load_heldout_answers
from workbench.experiments import reference_cross_entropy


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
