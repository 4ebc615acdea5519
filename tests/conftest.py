"""Shared fixtures: the real models are loaded once per test session (they are cached on disk).

Tiny random HookedTransformers come from ``tests/tiny_models.py`` (``tiny_config``/``tiny_model``), a
plain module the test files import by name, like ``cdp``: pytest advises against importing conftest."""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as an unprocessed HookedTransformer (float32, CPU)."""
    from workbench.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smollm2_hf():
    from workbench.models import load_hf

    return load_hf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def organism():
    """The refusal model organism (installed from the shipped adapter on first use, then cached)."""
    from workbench.models import load_model

    return load_model("organism", device="cpu", dtype="float32")


@pytest.fixture
def generate_both_ways():
    """``f(model, tokens, hooks)`` → greedy tokens with and without TL's KV cache under ``hooks``
    (4 new tokens, no early stop): a hook that is not position-free makes them differ."""

    def generate(model, tokens, hooks, max_new_tokens: int = 4):
        outs = []
        for kv in (True, False):
            with model.hooks(fwd_hooks=hooks):
                outs.append(
                    model.generate(
                        tokens,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        stop_at_eos=False,
                        use_past_kv_cache=kv,
                        verbose=False,
                        return_type="tokens",
                    )
                )
        return outs

    return generate


@pytest.fixture(scope="session")
def load_script():
    """Import a repository script that is not a package module (``benchmarks/…``, ``notebooks/…``)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def load(relative: str):
        path = root / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
