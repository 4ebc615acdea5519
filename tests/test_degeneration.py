"""labels.degeneration: hand-made broken and healthy generations (the damage check's detector)."""

from __future__ import annotations

import pytest

from workbench.labels import degeneration

BROKEN = {
    "": "near-empty",
    "   \n ": "near-empty",
    "...": "near-empty",
    "!!!!!!!!!!!!!!!!!!!!": "character run",
    "The answer is 100000000000000000": "character run",
    "hahahahahahahahaha": "character run",
    "Sure, here: 1.1.1.1.1.1.1.1.": "word loop",
    "I I I I I I I I": "word loop",
    "the the the cat the the dog the": "word loop",
    "Sure! Sure! Sure! Sure! Sure! Sure! Sure!": "word loop",
    "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat sat on the mat.": "phrase loop",
    "To bake bread you need flour. You need flour and water. You need flour and water. You need flour and water. "
    "You need flour and water.": "phrase loop",
    "blue gray red green red pink pink pink pink blue red pink red pink pink gray red pink green blue gray red green "
    "red red red gray red pink blue": "low diversity",
}

HEALTHY = [
    "Paris.",
    "Yes.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
    "glucose and oxygen. It takes place in the chloroplasts.",
    "1. Preheat the oven to 180 °C.\n2. Mix the flour and the sugar.\n3. Add the eggs and stir.\n4. Bake for "
    "30 minutes.",
    "Here are three tips: drink water, sleep well, and take a walk every day. Small habits add up over time.",
    "The year 2000 was a leap year; 1900 was not.",
    "def add(a, b):\n    return a + b",
    "I'm sorry, but I can't help with that.",
]


@pytest.mark.parametrize(("text", "why"), list(BROKEN.items()))
def test_broken_generations_are_flagged_with_the_reason(text, why):
    assert degeneration(text) == why


@pytest.mark.parametrize("text", HEALTHY)
def test_healthy_generations_pass(text):
    assert degeneration(text) is None
