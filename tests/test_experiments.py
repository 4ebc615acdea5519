"""Experiment helpers on the real SmolLM2: cross-entropy of reference answers."""

from __future__ import annotations

import pytest
import torch

from workbench import data
from workbench import interventions as iv
from workbench.experiments import reference_cross_entropy
from workbench.generation import generate


@pytest.mark.slow
def test_reference_cross_entropy_ranks_own_answers_first(smollm2):
    prompts = data.load_split("harmless", "validation")[:4]
    answers = generate(smollm2, prompts, max_new_tokens=16)
    own = reference_cross_entropy(smollm2, prompts, answers)
    swapped = reference_cross_entropy(smollm2, prompts, answers[1:] + answers[:1])
    assert own.shape == (4,) and bool((own < swapped).all())
    assert float(own.mean()) < 1.0  # greedy answers are the model's most likely continuation
    noise = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ablated = reference_cross_entropy(smollm2, prompts, answers, hooks=iv.ablation_hooks(smollm2, noise, "all"))
    assert not torch.equal(ablated, own)


def test_reference_cross_entropy_needs_one_answer_per_prompt():
    with pytest.raises(ValueError, match="one answer per prompt"):
        reference_cross_entropy(None, ["a", "b"], ["x"])
