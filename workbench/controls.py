"""Causal controls: directions and planes that share the real one's place and size but not its
meaning, so an effect can be told from "any edit of that size at that site".

* :func:`random_direction` -- a seeded random unit direction at the real direction's site, layer
  and position, scaled to its norm (``add:ALPHA`` then adds a vector of the same size; ablation
  normalises anyway);
* :func:`null_direction` -- the difference in means between two seeded random halves of the
  *harmless* direction-training activations at the same site, layer and position: a direction
  built the same way as the real one from prompts with no refusal contrast (its own, smaller norm);
* :func:`random_plane` -- a seeded random orthonormal plane (b1 and b2 both random) carrying the
  real plane's b1 key, for rotation.

:func:`parse_control` reads the CLI's ``random[:SEED]`` / ``null[:SEED]`` (SEED defaults to 0).
Everything is pure: the same seed gives the same vectors on every machine (``torch.Generator``
on the CPU, float64, then float32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor

from .directions import Direction
from .planes import Plane

__all__ = [
    "Control",
    "DIRECTION_CONTROLS",
    "PLANE_CONTROLS",
    "parse_control",
    "random_direction",
    "halves",
    "null_direction",
    "random_plane",
]

DIRECTION_CONTROLS: tuple[str, ...] = ("random", "null")
PLANE_CONTROLS: tuple[str, ...] = ("random",)


@dataclass(frozen=True)
class Control:
    """A control's kind (``random`` / ``null``) and seed, as the CLI and the provenance record name it."""

    kind: str
    seed: int = 0

    def __str__(self) -> str:
        return f"{self.kind}:{self.seed}"

    def record(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}


def parse_control(text: str, option: str, choices: tuple[str, ...]) -> Control:
    """``KIND[:SEED]`` with KIND in ``choices`` and SEED a non-negative integer (default 0); a bad
    value raises one error naming ``option`` and the choices."""
    kind, _, seed = text.partition(":")
    usage = " | ".join(f"{c}[:SEED]" for c in choices)
    if kind not in choices:
        raise ValueError(f"{option} {text!r}: unknown control {kind!r}; choose {usage} (SEED: an integer, default 0)")
    if seed and not seed.isdigit():
        raise ValueError(f"{option} {text!r}: SEED {seed!r} must be a non-negative integer, e.g. {kind}:1")
    return Control(kind, int(seed) if seed else 0)


def _gaussian(d_model: int, seed: int, n: int = 1) -> Float[Tensor, "n d_model"]:
    # a CPU generator on purpose: one seed gives the same control on every device (drawn once, not per token)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(n, d_model, generator=generator, dtype=torch.float64)


def random_direction(like: Direction, seed: int = 0) -> Direction:
    """A random unit direction (seeded, uniform on the sphere) times ``‖like‖``, at ``like``'s site,
    layer and position; ``method`` says ``random:SEED``."""
    vector = _gaussian(like.d_model, seed)[0]
    vector = vector / torch.linalg.vector_norm(vector) * like.norm
    return replace(like, vector=vector.float(), method=f"random:{seed}", seed=int(seed))


def halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)`` into two halves (the first gets the extra one when odd)."""
    if n < 2:
        raise ValueError(f"a null direction needs at least 2 harmless prompts to split in halves, got {n}")
    order = torch.randperm(n, generator=torch.Generator(device="cpu").manual_seed(int(seed))).tolist()
    cut = (n + 1) // 2
    return sorted(order[:cut]), sorted(order[cut:])


def null_direction(harmless: Float[Tensor, "prompt d_model"], like: Direction, seed: int = 0) -> Direction:
    """mean(harmless[A]) − mean(harmless[B]) for seeded random halves A, B (:func:`halves`) of the
    harmless activations at ``like``'s site, layer and position (in float64); ``method`` says
    ``null:SEED``. Its norm is its own (small: no refusal contrast), not ``like``'s."""
    if harmless.ndim != 2 or harmless.shape[1] != like.d_model:
        raise ValueError(
            f"harmless activations must be [prompt, {like.d_model}], got {tuple(harmless.shape)}; "
            "pass Activations.get(site, layer, pos) of the harmless direction_train prompts"
        )
    a, b = halves(harmless.shape[0], seed)
    x = harmless.double()
    vector = x[a].mean(0) - x[b].mean(0)
    return replace(like, vector=vector.float(), method=f"null:{seed}", seed=int(seed))


def random_plane(like: Plane, seed: int = 0) -> Plane:
    """A random orthonormal plane: b1 and b2 seeded Gaussian vectors, b2 made orthogonal to b1
    (Gram–Schmidt, float64). It keeps ``like``'s b1 key (the site, layer and position its rotation
    is reported at) and model; ``variant`` says ``random:SEED``; no PCA statistics (NaN)."""
    g = _gaussian(like.d_model, seed, n=2)
    b1 = g[0] / torch.linalg.vector_norm(g[0])
    b2 = g[1] - (g[1] @ b1) * b1
    b2 = b2 / torch.linalg.vector_norm(b2)
    return Plane(
        basis=torch.stack([b1, b2]).float(),
        b1_key=like.b1_key,
        variant=f"random:{seed}",
        pc1_explained_variance=float("nan"),
        angle_pc1_b1_deg=float("nan"),
        model=like.model,
        prompt_hash=like.prompt_hash,
        versions=like.versions,
        report={
            "control": {"kind": "random", "seed": int(seed)},
            **{k: like.report[k] for k in _KEPT if k in like.report},
        },
    )


_KEPT = ("candidate_norm", "candidate_sites")
