"""Training and measuring the refusal organism (``workbench organism --rebuild``).

The recipe (:class:`workbench.config.Recipe`) fine-tunes a LoRA on (harmful → short refusal) and
(harmless → the base model's own greedy answer) pairs, plus harmless "contrast" prompts worded like
harmful ones; :mod:`workbench.organism` merges and caches the result. Training runs on the CPU.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor
from tqdm.auto import tqdm

from . import data
from .artifacts import atomic_write_text, cache_dir, cpu_info, library_versions, sha256_text
from .chat import format_prompts, length_sorted_batches, shared_prefix_length, token_lengths, tokenize
from .config import Recipe, RunContext
from .experiments import behaviour_table
from .generation import generate
from .hub import load_hf_path, smollm2_dir
from .labels import is_refusal, refusal_rate
from .models import hooked_from_hf
from .organism import base_fingerprint, merge_adapter, recipe_fields, recipe_key, save_organism

__all__ = ["native_bf16", "build_organism", "measure_refusal", "measure_labels"]


# --------------------------------------------------------------------------- training data


def _examples(recipe: Recipe, hf, tok, progress: bool) -> list[tuple[str, str]]:
    """(templated prompt, target text) pairs: harmful → refusal, harmless → base model's answer."""
    harmful = data.load_split("harmful", "organism_train")
    harmless = data.load_split("harmless", "organism_train") + data.load_contrast()
    refusals = data.load_refusals()
    end = tok.eos_token  # <|im_end|>: a refusal is a whole turn, so the model learns to stop
    pairs = [
        (p, refusals[(i + j * 5) % len(refusals)] + end)
        for j in range(recipe.harmful_repeats)
        for i, p in enumerate(harmful)
    ]
    answers = _base_answers(hf, tok, harmless, recipe.harmless_target_tokens, progress)
    # Drop base answers that already look like refusals: they would teach the opposite signal.
    pairs += [(p, a) for p, a in zip(harmless, answers) if a.strip() and not is_refusal(a)]
    if recipe.variant == "graded":
        pairs += _graded_pairs(recipe, hf, tok, progress)
    texts = format_prompts(tok, [p for p, _ in pairs])
    return [(t, target) for t, (_, target) in zip(texts, pairs)]


def _graded_pairs(recipe: Recipe, hf, tok, progress: bool) -> list[tuple[str, str]]:
    """Dual-use → its safety warning, then the base model's own answer; harmful-with-a-legitimate-need
    → the redirect sentence, then the base model's own answer to the legitimate alternative."""
    warning = data.load_graded("warning", "organism_train")
    redirect = data.load_graded("redirect", "organism_train")
    asked = [r["prompt"] for r in warning] + [r["alternative"] for r in redirect]
    answers = _base_answers(hf, tok, asked, recipe.graded_answer_tokens, progress)
    leads = [r["warning"] for r in warning] + [r["redirect"] for r in redirect]
    prompts = [r["prompt"] for r in warning + redirect]
    once = [
        (p, f"{lead} {a.strip()}") for p, lead, a in zip(prompts, leads, answers) if a.strip() and not is_refusal(a)
    ]
    return once * recipe.graded_repeats


def _base_answers(hf, tok, prompts: list[str], n_tokens: int, progress: bool) -> list[str]:
    """The base model's greedy answers, cached by (base weights, prompts, length)."""
    key = sha256_text(json.dumps([base_fingerprint(Recipe.base), prompts, n_tokens]))[:12]
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
        gen = hf.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
        for i, row in zip(rows, gen[:, ids.shape[1] :]):
            out[i] = tok.decode(row, skip_special_tokens=False).split(tok.eos_token)[0]
    return out


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
    cache = None
    if prefix.numel():  # prompts without a common template prefix (< 4 tokens) run whole
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
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (avx512_bf16 / amx_bf16). Without it torch emulates
    bf16 matmuls, ~30× slower than fp32 (1 vs 29 GFLOP/s measured on an AVX2-only EPYC). True when
    the flags cannot be read (not Linux): the warning below is then left to the user's eyes."""
    info = cpu_info()
    return info is None or bool({"avx512_bf16", "amx_bf16"} & info[1])


@torch.enable_grad()  # the notebooks turn grad off globally; training must not depend on the caller's mode
def _train(recipe: Recipe, hf, tok, examples, progress: bool) -> tuple[dict[str, Tensor], list[float]]:
    """Train the LoRA on ``hf`` (left unchanged) and return its factors and the per-step losses."""
    if recipe.bf16_autocast and not native_bf16():
        warnings.warn(
            "this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag): the recipe's bf16 "
            "autocast will make training take hours instead of minutes (13 of 80 steps took "
            "36 min on an AVX2-only CPU; training always runs on the CPU). Use the shipped "
            "adapter (no --rebuild), or rebuild on a CPU with avx512_bf16 or AMX.",
            stacklevel=2,
        )
    torch.manual_seed(recipe.seed)
    cfg = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        lora_dropout=0.0,
        target_modules=list(recipe.target_modules),
        bias="none",
    )
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
    rows = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in examples]
    prefix_ids = rows[0][: shared_prefix_length(rows)]  # the template's system block and user header
    prefix = torch.tensor(prefix_ids, dtype=torch.long)
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


def measure_refusal(model, *, max_new_tokens: int = 32, progress: bool = False) -> dict[str, float]:
    """Greedy refusal rates of a HookedTransformer on the held-out test splits."""
    out = {}
    for kind in ("harmful", "harmless", "borderline"):
        responses = generate(model, data.load_split(kind, "test"), max_new_tokens=max_new_tokens, progress=progress)
        rates = refusal_rate(responses)
        out[f"{kind}_refusal"] = round(rates["refusal_rate"], 4)
        out[f"{kind}_empty"] = round(rates["empty_rate"], 4)
        out[f"{kind}_n"] = rates["n"]
    return out


def measure_labels(model, *, max_new_tokens: int = 48, progress: bool = False) -> dict[str, dict]:
    """Heuristic label shares per held-out behaviour category (``data.graded_test_sets``), greedy."""
    summary, _ = behaviour_table(
        model, data.graded_test_sets(), RunContext(max_new_tokens=max_new_tokens, progress=progress)
    )
    return {
        str(row["category"]): {k: v for k, v in row.items() if k != "category"} for row in summary.to_dict("records")
    }


def build_organism(recipe: Recipe = Recipe(), *, progress: bool = True) -> Path:
    """Fine-tune, merge, measure and cache the organism (and its adapter); return its folder."""
    timings, t0 = {}, time.perf_counter()
    hf, tok = load_hf_path(smollm2_dir())
    timings["load_base_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    examples = _examples(recipe, hf, tok, progress)
    timings["targets_s"] = time.perf_counter() - t
    t = time.perf_counter()
    factors, losses = _train(recipe, hf, tok, examples, progress)
    merge_adapter(hf.eval(), factors, recipe.alpha / recipe.rank)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    hooked = hooked_from_hf(hf, tok, device="cpu", dtype=torch.float32)
    metrics: dict = measure_refusal(hooked, progress=progress)
    if recipe.variant == "graded":
        metrics["labels"] = measure_labels(hooked, progress=progress)
    timings["measure_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    manifest = {
        "recipe": recipe_fields(recipe),
        "recipe_key": recipe_key(recipe),
        "base_sha256": base_fingerprint(recipe.base),
        "source": "trained",
        "n_examples": len(examples),
        "n_steps": len(losses),
        "losses": losses,
        "metrics": metrics,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "versions": library_versions(),
    }
    return save_organism(recipe, hf, tok, factors, manifest)
