"""The intervention value (workbench.intervention): spec round trip, clear errors, hooks equal to the
hook factories', row masks, the experiments' conditions and the exactness table, on a tiny Llama."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import tiny_model

from workbench import experiments as ex
from workbench import interventions as iv
from workbench.intervention import (
    KINDS,
    Ablation,
    Addition,
    Intervention,
    NoIntervention,
    Orthogonalization,
    Rotation,
    exactness_table,
    from_settings,
    parse,
    spec_help,
)
from workbench.sites import GATES, LOCATIONS, ROTATION_SITES

SPECS = [
    "none",
    "ablate:all",
    "ablate:resid@1-2",
    "ablate:mlp@-1",
    "ablate:attn@0,2",
    "add",
    "add:2@-1",
    "add:0.1@0,2",
    "add:-1.5",
    "rotate:200",
    "rotate:-450:adaptive",
    "rotate:90:b2:pre_gain:by@1-2",
    "rotate:12.25:resid",
    "orthogonalize",
]


@pytest.fixture(scope="module")
def model():
    return tiny_model(llama=True, n_layers=3, n_key_value_heads=2, final_rms=True, d_vocab=50, n_ctx=32)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))


def _unit(seed: int, d: int = 32) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


def _plane(d: int = 32) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    return q.T.float()


def _logits(model, tokens, hooks):
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)


# ------------------------------------------------------------------------------------------ spec strings


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trip(spec):
    value = parse(spec)
    assert isinstance(value, Intervention)
    assert parse(str(value)) == value
    assert str(parse(str(value))) == str(value)  # the canonical spelling is a fixed point


def test_random_values_round_trip():
    rng = random.Random(0)
    numbers = [0.0, 1.0, -1.0, 0.1, 1e-7, 123.456, -450.0, 2.5e10, 1 / 3]
    layer_sets = [None, (0,), (-1,), (1, 2), (0, 2), (3, 4, 5)]
    for _ in range(300):
        value = rng.choice(
            [
                Ablation(rng.choice(LOCATIONS), rng.choice(layer_sets)),
                Addition(rng.choice(numbers), rng.choice(layer_sets)),
                Rotation(
                    rng.choice(numbers),
                    rng.choice(GATES),
                    rng.choice((None, *ROTATION_SITES)),
                    rng.choice(("to", "by")),
                    rng.choice(layer_sets),
                ),
                NoIntervention(),
                Orthogonalization(),
            ]
        )
        assert parse(str(value)) == value, str(value)


def test_aliases_read_as_their_canonical_value():
    assert parse("add") == parse("add:1") == Addition(1.0)
    assert parse("rotate:90:adaptive") == parse("rotate:90:b1") == Rotation(90.0, gate="b1")
    assert str(parse("rotate:90:adaptive")) == "rotate:90:b1"
    assert parse("ablate:all@2-4").layers == (2, 3, 4)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ablate:everywhere", "ablate takes one location, all|resid|attn|mlp"),
        ("ablate", "ablate takes one location"),
        ("rotate", "rotate needs an angle"),
        ("rotate:nan", "angle must be a finite number, got 'nan'"),
        ("rotate:ninety", "angle 'ninety' is not a number"),
        ("rotate:90:sideways", "rotate takes ':adaptive'"),
        ("rotate:90:b1:b2", "each once; got 'b2'"),
        ("add:1e999", "alpha must be a finite number"),
        ("add:1:2", "add takes one coefficient"),
        ("add:1@x", "layer 'x' after @ must be a block index"),
        ("add:1@5-3", "layer range 5-3 is reversed; write 3-5"),
        ("none:3", "none takes no arguments"),
        ("orthogonalize@3", "orthogonalize takes no @LAYERS"),
        ("flip", "bad intervention 'flip'; use none, ablate"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        parse(spec)


def test_every_kind_is_registered_with_its_syntax_and_colour():
    assert list(KINDS)[:5] == ["none", "ablate", "add", "rotate", "orthogonalize"]
    for word, cls in KINDS.items():
        assert cls.kind == word and cls.syntax.startswith(word) and cls.syntax in spec_help()
    for spec in SPECS:
        value = parse(spec)
        assert value.label and value.color.startswith("#") and len(value.color) == 7


def test_panel_settings_make_values():
    settings = {"location": "mlp", "alpha": 2.0, "angle": 120, "gate": "b2"}
    assert from_settings("ablate", settings) == Ablation("mlp")
    assert from_settings("add", settings) == Addition(2.0)
    assert from_settings("rotate", settings) == Rotation(120.0, gate="b2")
    with pytest.raises(ValueError, match="unknown intervention kind 'flip'"):
        from_settings("flip", settings)


# ------------------------------------------------------------------------------------------ hooks


def test_hooks_equal_the_hook_factories(model, tokens):
    r, plane = _unit(0), _plane()
    pairs = [
        (parse("ablate:resid@1-2"), iv.ablation_hooks(model, r, "resid", [1, 2])),
        (parse("ablate:all"), iv.ablation_hooks(model, r, "all")),
        (parse("add:2@1"), iv.addition_hooks(r, alpha=2.0, layers=[1], model=model)),
        (parse("rotate:200:b1"), iv.rotation_hooks(model, plane, 200.0, adaptive="b1")),
        (
            parse("rotate:90:pre_gain:by@1-2"),
            iv.rotation_hooks(model, plane, 90.0, site="pre_gain", mode="by", layers=[1, 2]),
        ),
    ]
    for value, expected in pairs:
        hooks = value.hooks(model, r, plane)
        assert [n for n, _ in hooks] == [n for n, _ in expected], value
        assert torch.equal(_logits(model, tokens, hooks), _logits(model, tokens, expected)), value
        assert not torch.equal(_logits(model, tokens, hooks), model(tokens)), f"{value} changed nothing"


def test_addition_defaults_to_the_directions_own_layer(model):
    class Direction:
        vector, layer = _unit(0), 2

    hooks = Addition(1.5).hooks(model, Direction())
    assert [n for n, _ in hooks] == ["blocks.2.hook_resid_pre"]
    assert Addition(1.5).params(Direction()) == {"alpha": 1.5, "layer": 2}
    with pytest.raises(ValueError, match="write add:ALPHA@LAYER"):
        Addition(1.5).hooks(model, _unit(0))


def test_row_mask_leaves_other_rows_bit_identical(model, tokens):
    r = _unit(3)
    rows = torch.tensor([True, False, True, False])
    for value in (parse("ablate:all"), parse("add:3@1")):
        masked = _logits(model, tokens, value.hooks(model, r, rows=rows))
        full = _logits(model, tokens, value.hooks(model, r))
        assert torch.equal(masked[~rows], model(tokens)[~rows])
        torch.testing.assert_close(masked[rows], full[rows], rtol=0, atol=1e-5)  # the same rows, another batch
    with pytest.raises(ValueError, match="not a row mask"):
        parse("rotate:90").hooks(model, r, _plane(), rows=rows)


def test_conditions_in_one_batch_equal_separate_runs(model, tokens):
    r = _unit(4)
    conditions = ["none", "all", "addition", "ablate:mlp@2"]
    of_row = torch.tensor([0, 1, 2, 3])
    hooks = ex.condition_hooks(model, r, of_row, conditions, layer=1, alpha=2.0)(torch.arange(4))
    batched = _logits(model, tokens, hooks)
    separate = [
        model(tokens),
        _logits(model, tokens, iv.ablation_hooks(model, r, "all")),
        _logits(model, tokens, iv.addition_hooks(r, alpha=2.0, layers=[1], model=model)),
        _logits(model, tokens, iv.ablation_hooks(model, r, "mlp", [2])),
    ]
    for i, expected in enumerate(separate):
        torch.testing.assert_close(batched[i], expected[i], rtol=0, atol=1e-5)
    assert ex.condition("resid") == Ablation("resid") and ex.condition("ablate:all@0-1") == Ablation("all", (0, 1))
    with pytest.raises(ValueError, match="unknown condition 'sideways'"):
        ex.condition("sideways")


def test_figure_names_and_colours_come_from_the_conditions():
    names = {name: value.label for name, value in ex.CONDITIONS.items()}
    assert names == {
        "none": "none",
        "resid": "resid only",
        "attn": "attn out only",
        "mlp": "MLP out only",
        "all": "everywhere",
        "addition": "addition (+αr)",
    }
    assert len({value.color for value in ex.CONDITIONS.values()}) == len(ex.CONDITIONS)


# ------------------------------------------------------------------------------------------ weights, exactness


def test_orthogonalization_value_edits_a_copy_equal_to_ablation_everywhere(model, tokens):
    r = _unit(5)
    value = parse("orthogonalize")
    edited = value.edit(model, r)
    assert edited is not model and value.hooks(edited, r) == []
    torch.testing.assert_close(
        edited(tokens), _logits(model, tokens, iv.ablation_hooks(model, r, "all")), rtol=0, atol=1e-4
    )


def test_exactness_table_rows_and_reasons(model):
    table = exactness_table(model)
    assert {
        "ablation",
        "addition",
        "rotation_post_gain",
        "rotation_pre_gain",
        "rotation_resid",
        "weight_orthogonalization",
    } <= set(table)
    assert all(row["exact"] for row in table.values()), table
    assert "linearly" in table["weight_orthogonalization"]["why"]


def test_exactness_says_why_not_on_a_post_norm_model():
    post = tiny_model(llama=True, original_architecture="Olmo2ForCausalLM")
    table = exactness_table(post)
    assert table["rotation_post_gain"]["exact"] is False and "post-norm" in table["rotation_post_gain"]["why"]
    assert table["rotation_resid"]["exact"] is True
    assert table["weight_orthogonalization"]["exact"] is False


# ------------------------------------------------------------------------------------------ a k-dim subspace


def test_subspace_ablation_math_equals_the_projector_closed_form():
    from workbench.steering_math import ablate, ablate_subspace, orthonormal_rows

    gen = torch.Generator().manual_seed(11)
    vectors = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 4, 16, generator=gen, dtype=torch.float64)
    q = orthonormal_rows(vectors)
    torch.testing.assert_close(q @ q.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    projector = torch.eye(16, dtype=torch.float64) - vectors.T @ torch.linalg.solve(vectors @ vectors.T, vectors)
    out = ablate_subspace(x, vectors)
    torch.testing.assert_close(out, x @ projector, rtol=0, atol=1e-12)  # (I − V(VᵀV)⁻¹Vᵀ)x, any basis of the span
    assert float((out @ vectors.T).abs().max()) < 1e-12  # nothing of the subspace is left
    torch.testing.assert_close(ablate_subspace(out, vectors), out, rtol=0, atol=1e-12)  # idempotent
    torch.testing.assert_close(ablate_subspace(x, vectors[:1]), ablate(x, vectors[0]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="linearly dependent"):
        orthonormal_rows(torch.stack([vectors[0], 2 * vectors[0]]))


def test_plane_ablation_leaves_the_final_residual_orthogonal_to_the_plane(model, tokens):
    plane = _plane()
    value = parse("ablate-plane:all")
    assert str(value) == "ablate-plane:all" and parse("ablate-plane:resid@1-2").layers == (1, 2)
    hooks = value.hooks(model, None, plane)
    assert [n for n, _ in hooks] == iv.location_hook_names(model.cfg.n_layers, "all")
    kept: list[torch.Tensor] = []
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for steer in ([], hooks):
        with model.hooks(fwd_hooks=[*steer, (final, lambda x, hook: kept.append(x.detach().clone()))]):
            model(tokens)
    before, after = (float((k @ plane.T).abs().max() / k.norm(dim=-1).max()) for k in kept)
    assert before > 1e-2 and after < 1e-6  # the plane was there, and every residual write lost it
    unsteered = model(tokens)
    rows = torch.tensor([False, True, False, True])
    masked = _logits(model, tokens, value.hooks(model, None, plane, rows=rows))
    assert torch.equal(masked[~rows], unsteered[~rows]) and not torch.allclose(masked[rows], unsteered[rows])


def test_plane_ablation_reaches_the_cli_the_panel_and_the_models_table(model):
    from workbench.cli import build_parser

    assert "ablate-plane:all|resid|attn|mlp[@LAYERS]" in spec_help()
    generate = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["generate"]._actions if a.dest == "intervention"
    )
    assert "ablate-plane" in generate.help
    assert from_settings("ablate-plane", {"location": "resid"}) == parse("ablate-plane:resid")
    row = exactness_table(model)["ablation_plane"]
    assert row["exact"] is True and "span(b1, b2)" in row["why"]
