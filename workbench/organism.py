"""The refusal model organism: SmolLM2-135M-Instruct taught to refuse by a short safety fine-tune.

SmolLM2 refuses nothing, and no refusing model can be fetched offline, so we give it refusal the
way real chat models get it: supervised fine-tuning on (harmful → short refusal) and
(harmless → the base model's own greedy answer, so helpfulness is kept) pairs, plus "contrast"
prompts that are harmless but *worded* like harmful ones, so that refusal keys on content rather
than form. LoRA on every attention and MLP projection, loss on response tokens only, the model's
own chat template, fixed seed; the adapter is merged and the merged weights cached as safetensors
with a manifest. The cache key is a hash of the recipe, the training prompts and the base
weights: change any of them and the organism is rebuilt; a folder without ``READY`` is ignored.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import data
from .artifacts import atomic_write_text, cache_dir, library_versions, sha256_text
from .chat import format_prompts, length_sorted_batches, token_lengths, tokenize
from .evaluation import is_refusal, refusal_rate

__all__ = ["Recipe", "organism_dir", "build_organism", "measure_refusal", "read_manifest"]


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
    """The cached organism folder (a Hugging Face model folder), built first if needed."""
    path = cache_dir("models") / f"organism-{recipe.key()}"
    if (path / "READY").exists():
        return path
    if not build:
        raise FileNotFoundError(f"no organism at {path}; build it with `workbench organism`")
    return build_organism(recipe, progress=progress)


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


def _train(recipe: Recipe, hf, tok, examples, progress: bool) -> tuple[object, list[float]]:
    from peft import LoraConfig, get_peft_model

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
    return model.merge_and_unload().eval(), losses


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
    """Fine-tune, merge, measure and cache the organism; return its folder."""
    from .models import hooked_from_hf, load_hf

    timings, t0 = {}, time.perf_counter()
    final = cache_dir("models") / f"organism-{recipe.key()}"
    hf, tok = load_hf(recipe.base, dtype=torch.float32)
    timings["load_base_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    examples = _examples(recipe, hf, tok, progress)
    timings["targets_s"] = time.perf_counter() - t
    t = time.perf_counter()
    merged, losses = _train(recipe, hf, tok, examples, progress)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = measure_refusal(hooked_from_hf(merged, tok, device="cpu", dtype=torch.float32), progress=progress)
    timings["measure_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    manifest = {
        "recipe": asdict(recipe), "recipe_key": recipe.key(), "base_sha256": _base_fingerprint(recipe.base),
        "n_examples": len(examples), "n_steps": len(losses), "losses": losses,
        "metrics": metrics, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "versions": library_versions(),
    }
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".organism-") as tmp:
        staged = Path(tmp) / "model"
        merged.save_pretrained(staged)
        tok.save_pretrained(staged)
        atomic_write_text(staged / "manifest.json", json.dumps(manifest, indent=2))
        (staged / "READY").touch()  # written last: a half-written folder is never used
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
    return final
