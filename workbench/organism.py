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

The package ships the adapter of the default recipe (``organism_adapters/``, 5 MB of fp16 factors
plus the build manifest), so a cold cache installs the organism in seconds: load the base, merge
the shipped factors, the same merge a build does. ``workbench organism --rebuild`` trains it again
from scratch (bitwise equal on the machine that built it; bf16 kernels differ between CPUs; a CPU
without native bf16 emulates it and takes hours, see :func:`native_bf16`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from . import data
from .artifacts import atomic_write_text, cache_dir, cpu_info, library_versions, sha256_text
from .chat import format_prompts, length_sorted_batches, token_lengths, tokenize
from .evaluation import is_refusal, refusal_rate

__all__ = ["Recipe", "native_bf16", "organism_dir", "build_organism", "install_adapter", "shipped_adapter",
           "ship_adapter", "merge_adapter", "measure_refusal", "read_manifest"]

ADAPTERS = Path(__file__).parent / "organism_adapters"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the organism's weights (its hash is the cache key)."""

    base: str = "smollm2-135m-instruct"
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float = 4e-3
    epochs: int = 2
    batch_size: int = 16
    warmup_steps: int = 3
    harmless_target_tokens: int = 8
    harmful_repeats: int = 4  # each harmful prompt appears this often per epoch, with other refusals
    first_token_weight: float = 3.0  # extra weight on the first response token (the decision)
    bf16_autocast: bool = True  # 1.5x faster on CPUs with avx512_bf16; same quality (organism.md §3.2)
    seed: int = 0
    adapter_dtype: str = "float16"  # the stored LoRA factors (5 MB); the merge reads them back in fp32

    def key(self) -> str:
        prompts = "\n".join(data.load_split("harmful", "organism_train") + data.load_split("harmless", "organism_train")
                            + data.load_contrast() + data.load_refusals())
        return sha256_text(json.dumps(asdict(self), sort_keys=True) + prompts + _base_fingerprint(self.base))[:12]


def _base_fingerprint(base: str) -> str:
    from .models import _WHEEL_SHA256, SMOLLM2

    if base != SMOLLM2:
        raise ValueError(f"the organism recipe supports base={SMOLLM2!r} only, got {base!r}")
    return _WHEEL_SHA256


def organism_dir(recipe: Recipe = Recipe(), *, build: bool = True, progress: bool = True) -> Path:
    """The cached organism folder (a Hugging Face model folder). If it is missing, it is installed
    from the shipped adapter when the package has one for ``recipe``, else trained."""
    path = cache_dir("models") / f"organism-{recipe.key()}"
    if (path / "READY").exists():
        return path
    if not build:
        raise FileNotFoundError(f"no organism at {path}; build it with `workbench organism`")
    shipped = shipped_adapter(recipe)
    if shipped is not None:
        return install_adapter(recipe, shipped)
    return build_organism(recipe, progress=progress)


def shipped_adapter(recipe: Recipe = Recipe()) -> Path | None:
    """The package's adapter file for ``recipe`` (``organism_adapters/organism-<key>.safetensors``)."""
    path = ADAPTERS / f"organism-{recipe.key()}.safetensors"
    return path if path.exists() and path.with_suffix(".json").exists() else None


def read_manifest(recipe: Recipe = Recipe()) -> dict:
    return json.loads((organism_dir(recipe) / "manifest.json").read_text())


# --------------------------------------------------------------------------- training data

def _examples(recipe: Recipe, hf, tok, progress: bool) -> list[tuple[str, str]]:
    """(templated prompt, target text) pairs: harmful → refusal, harmless → base model's answer."""
    harmful = data.load_split("harmful", "organism_train")
    harmless = data.load_split("harmless", "organism_train") + data.load_contrast()
    refusals = data.load_refusals()
    end = tok.eos_token  # <|im_end|>: a refusal is a whole turn, so the model learns to stop
    pairs = [(p, refusals[(i + j * 5) % len(refusals)] + end)
             for j in range(recipe.harmful_repeats) for i, p in enumerate(harmful)]
    answers = _base_answers(hf, tok, harmless, recipe.harmless_target_tokens, progress)
    # Drop base answers that already look like refusals: they would teach the opposite signal.
    pairs += [(p, a) for p, a in zip(harmless, answers) if a.strip() and not is_refusal(a)]
    texts = format_prompts(tok, [p for p, _ in pairs])
    return [(t, target) for t, (_, target) in zip(texts, pairs)]


def _base_answers(hf, tok, prompts: list[str], n_tokens: int, progress: bool) -> list[str]:
    """The base model's greedy answers, cached by (base weights, prompts, length)."""
    key = sha256_text(json.dumps([_base_fingerprint(Recipe.base), prompts, n_tokens]))[:12]
    path = cache_dir("models") / f"base-answers-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    answers = _generate_answers(hf, tok, prompts, n_tokens, progress)
    atomic_write_text(path, json.dumps(answers))
    return answers


@torch.inference_mode()
def _generate_answers(hf, tok, prompts: list[str], n_tokens: int, progress: bool) -> list[str]:
    texts = format_prompts(tok, prompts)
    lengths = token_lengths(tok, texts)
    out = [""] * len(texts)
    for rows in tqdm(length_sorted_batches(lengths, 64), desc="base answers", disable=not progress):
        ids, mask = tokenize(tok, [texts[i] for i in rows])
        gen = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens, do_sample=False,
                          pad_token_id=tok.pad_token_id)
        for i, row in zip(rows, gen[:, ids.shape[1]:]):
            out[i] = tok.decode(row, skip_special_tokens=False).split(tok.eos_token)[0]
    return out


def _shared_prefix(tok, examples: list[tuple[str, str]]) -> list[int]:
    """Token ids every training prompt starts with (the template's system block and user header)."""
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in examples]
    prefix = rows[0]
    for row in rows[1:]:
        n = next((i for i, (a, b) in enumerate(zip(prefix, row)) if a != b), min(len(prefix), len(row)))
        prefix = prefix[:n]
    return prefix[: min(map(len, rows)) - 1]  # keep ≥ 1 prompt token in every suffix


def _collate(tok, batch: list[tuple[str, str]], n_prefix: int):
    """Right-padded suffix ids (after the shared prefix), mask, and labels (-100 but on the response)."""
    rows, labels = [], []
    for prompt, target in batch:
        p = tok(prompt, add_special_tokens=False)["input_ids"][n_prefix:]
        t = tok(target, add_special_tokens=False)["input_ids"]
        rows.append(p + t)
        labels.append([-100] * len(p) + t)
    width = max(map(len, rows))
    pad = tok.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, mask, lab


def _loss(model, prefix: torch.Tensor, ids, mask, labels, first_token_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy on response tokens; the unembedding runs only where there is a label.

    Prefix sharing (exact): the shared prefix runs once, with gradients, and its KV cache is
    repeated over the batch, so ~24 of ~65 tokens per row are not recomputed 16 times.
    """
    cache = model.model(input_ids=prefix[None], use_cache=True).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    full_mask = torch.cat([torch.ones(ids.shape[0], prefix.shape[0], dtype=mask.dtype), mask], dim=1)
    hidden = model.model(input_ids=ids, attention_mask=full_mask, past_key_values=cache).last_hidden_state
    keep = labels[:, 1:] != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    per_token = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep], reduction="none")
    if first_token_weight == 1.0:
        return per_token.mean()
    # the first kept position of every row predicts the first response token
    first = keep & (keep.cumsum(dim=1) == 1)
    weights = torch.where(first[keep], first_token_weight, 1.0)
    return (per_token * weights).sum() / weights.sum()


def _bucketed_batches(lengths: list[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length rows: shuffle, sort within windows of 8 batches, shuffle
    the batches. Less right padding (wasted compute) at the same randomness of composition."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    window = batch_size * 8
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 / amx_bf16). Without it torch emulates
    bf16 matmuls, ~30× slower than fp32 (1 vs 29 GFLOP/s measured on an AVX2-only EPYC). True when
    the flags cannot be read (not Linux): the warning below is then left to the user's eyes."""
    info = cpu_info()
    return info is None or bool({"avx512_bf16", "amx_bf16"} & info[1])


def _train(recipe: Recipe, hf, tok, examples, progress: bool) -> tuple[dict[str, Tensor], list[float]]:
    """Train the LoRA on ``hf`` (left unchanged) and return its factors and the per-step losses."""
    from peft import LoraConfig, get_peft_model

    if recipe.bf16_autocast and not native_bf16():
        warnings.warn("this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): the recipe's bf16 "
                      "autocast will make training take hours instead of minutes (13 of 80 steps took "
                      "36 min on an AVX2-only CPU; training always runs on the CPU). Use the shipped "
                      "adapter (no --rebuild), or rebuild on a CPU with avx512_bf16 or AMX.", stacklevel=2)
    torch.manual_seed(recipe.seed)
    cfg = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=0.0,
                     target_modules=list(recipe.target_modules), bias="none")
    model = get_peft_model(hf, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(examples) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(recipe.seed)
    losses, bar = [], tqdm(total=total, desc="organism LoRA", disable=not progress)
    base = model.get_base_model()
    prefix_ids = _shared_prefix(tok, examples)
    prefix = torch.tensor(prefix_ids)
    lengths = token_lengths(tok, [p + t for p, t in examples])
    for _ in range(recipe.epochs):
        for rows in _bucketed_batches(lengths, recipe.batch_size, gen):
            batch = [examples[i] for i in rows]
            ids, mask, labels = _collate(tok, batch, len(prefix_ids))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
                loss = _loss(base, prefix, ids, mask, labels, recipe.first_token_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(round(loss.item(), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    factors = {}
    for name, module in base.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            factors[f"{name}.lora_A"] = module.lora_A["default"].weight.detach().to(_dtype(recipe)).contiguous()
            factors[f"{name}.lora_B"] = module.lora_B["default"].weight.detach().to(_dtype(recipe)).contiguous()
    model.unload()  # drops the LoRA layers from ``hf`` without merging them
    return factors, losses


def _dtype(recipe: Recipe) -> torch.dtype:
    return getattr(torch, recipe.adapter_dtype)


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
            raise ValueError(f"adapter for {name} is {b.shape[0]}x{a.shape[1]} but the weight is "
                             f"{tuple(weight.shape)}: the adapter was trained on another base model")
        weight += (scale * (b @ a)).to(weight.dtype)
    return hf


# --------------------------------------------------------------------------- build and measure

def measure_refusal(model, *, max_new_tokens: int = 32, progress: bool = False) -> dict[str, float]:
    """Greedy refusal rates of a HookedTransformer on the held-out test splits."""
    from .generation import generate

    out = {}
    for kind in ("harmful", "harmless", "borderline"):
        responses = generate(model, data.load_split(kind, "test"), max_new_tokens=max_new_tokens,
                             progress=progress)
        rates = refusal_rate(responses)
        out[f"{kind}_refusal"] = round(rates["refusal_rate"], 4)
        out[f"{kind}_empty"] = round(rates["empty_rate"], 4)
        out[f"{kind}_n"] = rates["n"]
    return out


def build_organism(recipe: Recipe = Recipe(), *, progress: bool = True) -> Path:
    """Fine-tune, merge, measure and cache the organism (and its adapter); return its folder."""
    from .models import hooked_from_hf, load_hf

    timings, t0 = {}, time.perf_counter()
    hf, tok = load_hf(recipe.base, dtype=torch.float32)
    timings["load_base_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    examples = _examples(recipe, hf, tok, progress)
    timings["targets_s"] = time.perf_counter() - t
    t = time.perf_counter()
    factors, losses = _train(recipe, hf, tok, examples, progress)
    merge_adapter(hf.eval(), factors, recipe.alpha / recipe.rank)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = measure_refusal(hooked_from_hf(hf, tok, device="cpu", dtype=torch.float32), progress=progress)
    timings["measure_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    manifest = {
        "recipe": asdict(recipe), "recipe_key": recipe.key(), "base_sha256": _base_fingerprint(recipe.base),
        "source": "trained", "n_examples": len(examples), "n_steps": len(losses), "losses": losses,
        "metrics": metrics, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "versions": library_versions(),
    }
    return _save(recipe, hf, tok, factors, manifest)


def install_adapter(recipe: Recipe, adapter: Path) -> Path:
    """Install the organism from an adapter file (``ship_adapter``'s output): load the base, merge
    the factors, cache. The manifest is the adapter's build manifest plus where it came from."""
    from safetensors import safe_open

    from .models import load_hf

    t0 = time.perf_counter()
    with safe_open(str(adapter), "pt") as f:
        meta = f.metadata() or {}
        factors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("recipe_key") != recipe.key():
        raise ValueError(f"{adapter} was built for recipe {meta.get('recipe_key')!r}, not {recipe.key()!r}; "
                         "rebuild with `workbench organism --rebuild`")
    hf, tok = load_hf(recipe.base, dtype=torch.float32)
    merge_adapter(hf, factors, recipe.alpha / recipe.rank)
    manifest = json.loads(adapter.with_suffix(".json").read_text())
    manifest.update(source=f"adapter {adapter.name}",
                    install_s=round(time.perf_counter() - t0, 1), install_versions=library_versions())
    return _save(recipe, hf, tok, factors, manifest)


def ship_adapter(recipe: Recipe = Recipe(), dest: Path = ADAPTERS) -> Path:
    """Copy the cached organism's adapter and manifest into ``dest`` (the package's
    ``organism_adapters/`` by default) so that cold caches install instead of training."""
    folder = organism_dir(recipe, build=False)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"organism-{recipe.key()}.safetensors"
    shutil.copyfile(folder / "adapter.safetensors", target)
    shutil.copyfile(folder / "manifest.json", target.with_suffix(".json"))
    return target


def _save(recipe: Recipe, hf, tok, factors: dict[str, Tensor], manifest: dict) -> Path:
    from safetensors.torch import save_file

    final = cache_dir("models") / f"organism-{recipe.key()}"
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".organism-") as tmp:
        staged = Path(tmp) / "model"
        hf.save_pretrained(staged)
        tok.save_pretrained(staged)
        save_file(factors, str(staged / "adapter.safetensors"),
                  metadata={"recipe_key": recipe.key(), "scale": str(recipe.alpha / recipe.rank)})
        atomic_write_text(staged / "manifest.json", json.dumps(manifest, indent=2))
        (staged / "READY").touch()  # written last: a half-written folder is never used
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
    return final
