#!/usr/bin/env python
"""Benchmarks of the workbench against plain Hugging Face / loop baselines (see benchmarks/README.md).

    python benchmarks/run.py [--quick] [--json] [--model organism|smollm2-135m-instruct|...] [--results PATH]

Every benchmark times the workbench and its baseline in the SAME process, interleaved: one small
warm-up call of each, then ``reps`` rounds that run both (the order alternates between rounds);
each side's best (minimum) time is kept and the ratio is reported so that higher is better.
Progress goes to stderr; stdout gets the machine facts and the table, and with ``--json`` its last
line is one JSON object with every number. The same object is written to ``--results PATH`` only
when that is given (nothing is written otherwise: the committed full run,
``benchmarks/results/latest.json``, is replaced only by ``--results benchmarks/results/latest.json``).
Each workbench fast path is also checked against its baseline, which serves as its oracle: identical
angle-sweep texts, the same selection choice under the library's own rule, score and activation
differences (top-level ``*_identical_texts`` / ``*_same_choice`` / ``*_diff`` keys).
Runs on the GPU (bf16) when there is one, else on the CPU (fp32).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=UserWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from workbench.config import BENCH_FULL as FULL  # noqa: E402
from workbench.config import BENCH_FULL_CPU as FULL_CPU  # noqa: E402
from workbench.config import BENCH_QUICK as QUICK  # noqa: E402
from workbench.config import BenchSizes as Sizes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"  # the committed full run (--results to replace it)
ANGLES = [float(a) for a in range(0, 360, 30)]  # 12 angles

GOALS = {  # higher is better for every ratio
    "cache_vs_hf_forward": 0.9,
    "angle_sweep_speedup": 6.0,
    "selection_speedup": 5.0,
    "generate_vs_hf": 0.8,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _no_grad(fn: Callable, *args, **kwargs):
    with torch.inference_mode():
        return fn(*args, **kwargs)


def interleaved(
    fns: dict[str, Callable], device: torch.device, *, reps: int, warmups: dict[str, Callable] | None = None
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Warm each side up once (``warmups[name]`` or the function itself), then ``reps`` rounds of
    all sides, alternating their order between rounds. Returns every time and each side's last output."""
    warmups = warmups or {}
    for name, fn in fns.items():
        _timed(warmups.get(name, fn), device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs: dict[str, object] = {}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            dt, outputs[name] = _timed(fns[name], device)
            times[name].append(dt)
            log(f"  {name}: {dt:.2f} s")
    return times, outputs


# ----------------------------------------------------------------------------------------------
# Machine and model


def machine_facts(device: torch.device, dtype: torch.dtype, spec: str) -> dict:
    from workbench.artifacts import cpu_info

    name, flags = cpu_info() or ("", set())
    cpu = name or platform.processor() or platform.machine()
    # the "2-core CPU" differs ~3x between machines; these flags say which kind ran the numbers
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    facts = {
        "cpu": cpu,
        "cpu_flags": simd,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "model": spec,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer-lens"),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def load_models(spec: str, device: torch.device, dtype: torch.dtype):
    """The TransformerLens model (as ``load_model`` builds it) and the Hugging Face model it came
    from, both on ``device`` in ``dtype``."""
    from workbench.models import hooked_from_hf, load_hf

    hf, tok = load_hf(spec, dtype=torch.float32)  # load_model also converts from fp32
    model = hooked_from_hf(hf, tok, device=device, dtype=dtype)
    model.workbench_name = spec
    hf = hf.to(device=device, dtype=dtype).eval()
    return model, hf, tok


@dataclass
class Setup:
    candidates: object  # raw resid_pre candidates at pos -1, every layer (Arditi)
    plane: object  # steering plane from the unit candidates
    refusal_ids: list[int]


def build_setup(model, sizes: Sizes) -> Setup:
    """Candidates and a plane from a few direction_train prompts (cheap, self-contained)."""
    from workbench import data
    from workbench.activations import cache_activations
    from workbench.directions import CandidateKey, diff_in_means
    from workbench.metrics import refusal_token_ids
    from workbench.planes import build_plane

    n = sizes.direction_prompts
    acts = [
        cache_activations(
            model,
            data.load_split(kind, "direction_train")[:n],
            sites=("resid_pre",),
            positions=[-1],
            batch_size=max(2 * n, 1),
            progress=False,
        )
        for kind in ("harmful", "harmless")
    ]
    raw = diff_in_means(*acts, kind="raw")
    unit = diff_in_means(*acts, kind="unit")
    n_layers = model.cfg.n_layers
    plane, err = None, None
    for layer in (n_layers // 2, n_layers // 3, 2 * n_layers // 3):  # a degenerate plane is rare
        try:
            plane = build_plane(unit, CandidateKey("resid_pre", layer, -1), model=str(model.workbench_name))
            break
        except ValueError as e:
            err = e
    if plane is None:
        raise RuntimeError(f"could not build a steering plane: {err}")
    return Setup(raw, plane, refusal_token_ids(model.tokenizer))


# ----------------------------------------------------------------------------------------------
# 1. activation cache vs a bare HF forward


def bench_cache(model, hf, tok, device, sizes: Sizes) -> dict:
    from workbench import data
    from workbench.activations import cache_activations
    from workbench.chat import format_prompts, length_sorted_batches, tokenize
    from workbench.sites import hook_name

    half = sizes.cache_prompts // 2
    prompts = (
        data.load_split("harmful", "direction_train")[:half]
        + data.load_split("harmless", "direction_train")[: sizes.cache_prompts - half]
    )
    sites, positions = ("resid_pre", "attn_out", "mlp_out"), [-5, -4, -3, -2, -1]
    bsz = sizes.cache_batch
    texts = format_prompts(tok, prompts)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    batch_rows = length_sorted_batches(lengths, bsz)
    batches = [tokenize(tok, [texts[i] for i in rows], device=device) for rows in batch_rows]

    def workbench():
        return cache_activations(model, prompts, sites=sites, positions=positions, batch_size=bsz, progress=False)

    @torch.inference_mode()
    def hf_forward(body_only: bool = False):
        net = hf.model if body_only else hf
        for tokens, mask in batches:
            net(input_ids=tokens, attention_mask=mask, output_hidden_states=True)

    tiny = prompts[:2]
    times, outs = interleaved(
        {"workbench": workbench, "hf": hf_forward, "hf_body": lambda: hf_forward(True)},
        device,
        reps=sizes.reps,
        warmups={
            "workbench": lambda: cache_activations(
                model, tiny, sites=sites, positions=positions, batch_size=2, progress=False
            ),
            "hf": lambda: _no_grad(hf, input_ids=batches[0][0][:2], attention_mask=batches[0][1][:2]),
            "hf_body": lambda: _no_grad(hf.model, input_ids=batches[0][0][:2], attention_mask=batches[0][1][:2]),
        },
    )
    acts = outs["workbench"]
    diff = _cache_vs_hf(acts, hf, batches, batch_rows)

    # Memory: positions sliced inside the hook vs TL's run_with_cache of the same hooks, unsliced.
    names = {hook_name(s, layer) for s in sites for layer in range(model.cfg.n_layers)}
    if device.type == "cuda":
        del acts, outs
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        kept = workbench()
        sliced = torch.cuda.max_memory_allocated(device) - base
        del kept
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            kept = [
                model.run_with_cache(
                    t, attention_mask=m, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers
                )[1]
                for t, m in batches
            ]
        full = torch.cuda.max_memory_allocated(device) - base
        del kept
        torch.cuda.empty_cache()
        method = "torch.cuda.max_memory_allocated during the call, minus what was allocated before"
    else:
        sliced = sum(a.numel() * a.element_size() for a in acts.acts.values())
        full = 0
        with torch.inference_mode():
            for tokens, mask in batches:  # summed per batch, not kept (that is what it would retain)
                _, cache = model.run_with_cache(
                    tokens, attention_mask=mask, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers
                )
                full += sum(v.numel() * v.element_size() for v in cache.values())
                del cache
        method = "bytes of the returned tensors (CPU: tracemalloc cannot see torch allocations)"
    wb, base_t, body_t = min(times["workbench"]), min(times["hf"]), min(times["hf_body"])
    return {
        "ratio": base_t / wb,
        "wb_s": wb,
        "base_s": base_t,
        "times": times,
        "hf_body_s": body_t,
        "vs_hf_body": body_t / wb,
        **diff,
        "prompts": len(prompts),
        "batch": bsz,
        "tokens": int(sum(lengths)),
        "mem_sliced_mib": sliced / 2**20,
        "mem_full_mib": full / 2**20,
        "mem_method": method,
    }


@torch.inference_mode()
def _cache_vs_hf(acts, hf, batches, batch_rows) -> dict:
    """The cached ``resid_pre`` against HF's ``hidden_states`` (``hidden_states[l]`` is the input of
    block ``l``) at the same prompts, layers and positions (the batches are left-padded, so position
    ``-k`` is the k-th last column): the largest absolute difference and the largest difference
    relative to that layer's largest |activation| (SmolLM2 has outlier dimensions ~100x the rest)."""
    cached = acts.acts["resid_pre"]  # [layer, prompt, pos, d_model]
    cols = torch.tensor(acts.positions)
    worst_abs, worst_rel = 0.0, 0.0
    for (tokens, mask), rows in zip(batches, batch_rows):
        hidden = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True).hidden_states
        for li, layer in enumerate(acts.layers):
            ref = hidden[layer][:, cols + tokens.shape[1]].float().cpu()
            ours = cached[li, rows].float().cpu()
            err = float((ours - ref).abs().max())
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / max(float(ref.abs().max()), 1e-30))
    return {"max_abs_diff_vs_hf": worst_abs, "max_rel_diff_vs_hf": worst_rel}


# ----------------------------------------------------------------------------------------------
# 2. angle sweep: one batched run vs a loop over angles


def bench_angle_sweep(model, device, setup: Setup, sizes: Sizes) -> dict:
    from workbench import data
    from workbench.generation import generate, repeat_prompts
    from workbench.interventions import rotation_hooks

    prompts = data.load_split("harmful", "test")[: sizes.angle_prompts]
    n, k, budget, plane = len(prompts), len(ANGLES), sizes.angle_tokens, setup.plane
    theta = torch.tensor(ANGLES)
    rows, setting = repeat_prompts(prompts, k)

    def batched():
        hooks = lambda ids: rotation_hooks(model, plane, theta[setting[ids.cpu()]])  # noqa: E731
        return generate(model, rows, hooks=hooks, groups=setting, max_new_tokens=budget, batch_size=len(rows))

    def looped():
        out = []
        for angle in ANGLES:
            out += generate(
                model, prompts, hooks=rotation_hooks(model, plane, angle), max_new_tokens=budget, batch_size=n
            )
        return out

    warm = lambda: generate(model, prompts[:1], hooks=rotation_hooks(model, plane, 90.0), max_new_tokens=2)  # noqa: E731
    times, outs = interleaved(
        {"batched": batched, "looped": looped}, device, reps=sizes.reps, warmups={"batched": warm, "looped": warm}
    )
    batched_texts, looped_texts = outs["batched"], outs["looped"]
    same = sum(a == b for a, b in zip(batched_texts, looped_texts)) / len(rows)
    wb, base_t = min(times["batched"]), min(times["looped"])
    return {
        "ratio": base_t / wb,
        "wb_s": wb,
        "base_s": base_t,
        "times": times,
        "prompts": n,
        "angles": k,
        "max_new_tokens": budget,
        "same_text_fraction": same,
        "identical_texts": len(batched_texts) == len(looped_texts) == len(rows) and same == 1.0,
        # the rotation really acts: the 12 angles do not all give the same texts
        "distinct_texts": len(set(batched_texts)),
    }


# ----------------------------------------------------------------------------------------------
# 3. Arditi selection: candidates batched across rows vs one candidate per loop iteration


def choose(scores, cands, n_layers: int) -> tuple[str, dict]:
    """The candidate that the workbench's own rule picks from an Arditi score table, and its notes:
    ``workbench.selection.select``'s ``arditi`` choice with the main job's settings
    (``AnalysisConfig.kl_max`` / ``fallback_rank``, ``select``'s late-layer cut-off), so that the
    benchmark and the library share one implementation of the rule. ``select`` also needs the
    activation statistics of its other methods, which this benchmark does not compute: neutral
    values stand in for them (norm comes from ``cands``; only the ``arditi`` choice is read)."""
    from workbench.config import AnalysisConfig
    from workbench.selection import select

    cfg = AnalysisConfig()
    stats = cands.to_frame().assign(max_sim=0.0, auc=0.5, cohens_d=0.0)
    chosen = select(cands, stats, arditi=scores, n_layers=n_layers, kl_max=cfg.kl_max, fallback=cfg.arditi_fallback)
    key = chosen.choices["arditi"]
    return f"{key.site}/L{key.layer}/pos{key.pos}", {k: str(v) for k, v in chosen.notes.items()}


def looped_arditi_scores(model, cands, harmful, harmless, *, refusal_ids, batch_size):
    """The same three scores as ``selection.arditi_scores``, one candidate at a time (pruned layers skipped alike)."""
    import pandas as pd

    from workbench.generation import last_token_logprobs
    from workbench.interventions import ablation_hooks, addition_hooks
    from workbench.metrics import first_token_kl, refusal_logodds
    from workbench.selection import KL_EPS, layer_cutoff

    base = last_token_logprobs(model, harmless, batch_size=batch_size)
    cutoff = layer_cutoff(model.cfg.n_layers)
    rows = []
    for key, vector in zip(cands.keys, cands.vectors):
        row = {"site": key.site, "layer": key.layer, "pos": key.pos}
        if float(vector.norm()) == 0 or key.layer >= cutoff:  # zero, or pruned as the study prunes
            rows.append(row | {"bypass": float("nan"), "induce": float("nan"), "kl": float("nan")})
            continue
        ablate = ablation_hooks(model, vector, "all")
        lp_bypass = last_token_logprobs(model, harmful, hooks=ablate, batch_size=batch_size)
        lp_kl = last_token_logprobs(model, harmless, hooks=ablate, batch_size=batch_size)
        add = addition_hooks(vector, 1.0, layers=[key.layer], site=key.site, model=model)
        lp_induce = last_token_logprobs(model, harmless, hooks=add, batch_size=batch_size)
        rows.append(
            row
            | {
                "bypass": float(refusal_logodds(lp_bypass, refusal_ids).mean()),
                "induce": float(refusal_logodds(lp_induce, refusal_ids).mean()),
                "kl": float(first_token_kl(base, lp_kl, eps=KL_EPS).mean()),
            }
        )
    return pd.DataFrame(rows)


def bench_selection(model, device, setup: Setup, sizes: Sizes) -> dict:
    from workbench import data
    from workbench.selection import arditi_scores

    layers = list(range(1, model.cfg.n_layers, sizes.selection_layer_stride))
    cands = setup.candidates.subset(sites=["resid_pre"], layers=layers, positions=[-1])
    n = sizes.selection_prompts
    harmful = data.load_split("harmful", "validation")[:n]
    harmless = data.load_split("harmless", "validation")[:n]
    ids, bsz = setup.refusal_ids, sizes.selection_batch

    def batched():
        return arditi_scores(model, cands, harmful, harmless, refusal_ids=ids, batch_size=bsz, progress=False)

    def looped():
        return looped_arditi_scores(model, cands, harmful, harmless, refusal_ids=ids, batch_size=bsz)

    small = cands.subset(layers=[layers[0]])
    times, outs = interleaved(
        {"batched": batched, "looped": looped},
        device,
        reps=sizes.reps,
        warmups={
            "batched": lambda: arditi_scores(
                model, small, harmful[:1], harmless[:1], refusal_ids=ids, batch_size=bsz, progress=False
            ),
            "looped": lambda: looped_arditi_scores(
                model, small, harmful[:1], harmless[:1], refusal_ids=ids, batch_size=bsz
            ),
        },
    )
    key = ["site", "layer", "pos"]
    a = outs["batched"].sort_values(key).reset_index(drop=True)
    b = outs["looped"].sort_values(key).reset_index(drop=True)
    if a[key].values.tolist() != b[key].values.tolist():
        raise RuntimeError("the batched and looped score tables cover different candidates")
    choice_a, notes_a = choose(a, cands, model.cfg.n_layers)
    choice_b, notes_b = choose(b, cands, model.cfg.n_layers)
    cols = ["bypass", "induce", "kl"]
    diff = float((a[cols] - b[cols]).abs().max().max())  # NaN (zero-norm rows) on both sides: skipped
    wb, base_t = min(times["batched"]), min(times["looped"])
    return {
        "ratio": base_t / wb,
        "wb_s": wb,
        "base_s": base_t,
        "times": times,
        "candidates": len(cands),
        "layers": layers,
        "prompts_per_split": n,
        "same_choice": choice_a == choice_b,
        "choice_batched": choice_a,
        "choice_looped": choice_b,
        "notes_batched": notes_a,
        "notes_looped": notes_b,
        "max_abs_score_diff": diff,
        "same_nan_rows": bool((a[cols].isna() == b[cols].isna()).all().all()),
    }


# ----------------------------------------------------------------------------------------------
# 4. steered generation vs HF generate (and TL's generate for reference)


def bench_generate(model, hf, tok, device, setup: Setup, sizes: Sizes) -> dict:
    from workbench import data
    from workbench.chat import format_prompts, tokenize
    from workbench.generation import generate
    from workbench.interventions import rotation_hooks

    half = sizes.generate_prompts // 2
    prompts = (
        data.load_split("harmful", "test")[:half] + data.load_split("harmless", "test")[: sizes.generate_prompts - half]
    )
    n, budget = len(prompts), sizes.generate_tokens
    tokens, mask = tokenize(tok, format_prompts(tok, prompts), device=device)
    rotate = rotation_hooks(model, setup.plane, 90.0)
    steps = [0]

    def count(x, hook):  # ln_final runs once per decoding step in workbench.generation
        steps[0] += 1
        return None

    def ours(hooks):
        def run():
            steps[0] = 0
            texts = generate(
                model,
                prompts,
                hooks=list(hooks) + [("ln_final.hook_normalized", count)],
                max_new_tokens=budget,
                batch_size=n,
            )
            return n * steps[0], texts  # token slots computed: every row at every step

        return run

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def hf_generate(x=tokens, m=mask, t=budget):
        out = hf.generate(
            input_ids=x, attention_mask=m, do_sample=False, max_new_tokens=t, min_new_tokens=t, pad_token_id=pad
        )
        return int((out.shape[1] - x.shape[1]) * x.shape[0]), None

    def tl_generate(x=tokens, t=budget):
        with model.hooks(fwd_hooks=rotate):
            out = model.generate(x, max_new_tokens=t, do_sample=False, stop_at_eos=False, verbose=False)
        return int((out.shape[1] - x.shape[1]) * x.shape[0]), None

    times, outs = interleaved(
        {"workbench": ours(rotate), "hf": hf_generate, "workbench_nohook": ours([]), "tl": tl_generate},
        device,
        reps=sizes.reps,
        warmups={
            "workbench": lambda: generate(model, prompts[:1], hooks=rotate, max_new_tokens=2),
            "hf": lambda: hf_generate(tokens[:1], mask[:1], 2),
            "workbench_nohook": lambda: None,
            "tl": lambda: tl_generate(tokens[:1], 2),
        },
    )
    tps = {name: outs[name][0] / min(ts) for name, ts in times.items()}
    return {
        "ratio": tps["workbench"] / tps["hf"],
        "wb_s": min(times["workbench"]),
        "base_s": min(times["hf"]),
        "times": times,
        "tokens_per_s": tps,
        "prompts": n,
        "max_new_tokens": budget,
        "prompt_tokens_padded": int(tokens.shape[1]),
        "token_slots": {name: out[0] for name, out in outs.items()},
        "nohook_vs_hf": tps["workbench_nohook"] / tps["hf"],
        "tl_vs_hf": tps["tl"] / tps["hf"],
    }


# ----------------------------------------------------------------------------------------------
# 5. the main job, cold and warm (full mode only)


def bench_main_job(spec: str, device: torch.device) -> dict:
    from workbench.artifacts import cache_dir

    src = cache_dir()
    if Path(spec).expanduser().exists():  # a local folder or .gguf: the subprocess runs in ROOT
        spec = str(Path(spec).expanduser().resolve())
    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    cache, figures = tmp / "cache", tmp / "figures"
    seeded = []
    for part in ("models/smollm2-135m-instruct", "wheels"):  # the PyPI download is not timed
        if (src / part).exists():
            (cache / part).parent.mkdir(parents=True, exist_ok=True)
            (cache / part).symlink_to((src / part).resolve(), target_is_directory=True)
            seeded.append(part)
    env = {**os.environ, "REFUSAL_WORKBENCH_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "run",
        "--model",
        spec,
        "--figures",
        str(figures),
        "--device",
        str(device),
        "--json",
    ]
    out = {
        "command": " ".join(cmd[1:]),
        "seeded_cache": seeded,
        "note": "cold = fresh cache holding only the dequantised SmolLM2 and its wheel (organism build "
        "and every stage included, PyPI download excluded); warm = the same command again",
    }
    try:
        for name in ("cold", "warm"):
            log(f"main job ({name}): {' '.join(cmd[1:])}")
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            out[f"{name}_s"] = time.perf_counter() - t0
            if res.returncode != 0:
                out[f"{name}_s"] = None
                out[f"{name}_error"] = res.stderr[-2000:]
                log(f"main job ({name}) failed with exit code {res.returncode}")
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------
# Report


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def print_report(summary: dict, details: dict) -> None:
    m = summary["machine"]
    print(
        f"machine: {m['cpu']} ({' '.join(m.get('cpu_flags', [])) or 'flags unknown'}) · {m['cores']} cores · "
        f"torch threads {m['torch_threads']} · device "
        f"{m.get('gpu', m['device'])} ({m['dtype']}) · torch {m['torch']} · transformers {m['transformers']} · "
        f"transformer-lens {m['transformer_lens']} · {m['date']}"
    )
    print(
        f"model: {m['model']} · mode: {'quick' if summary['quick'] else 'full'} · times are the best of "
        f"{details['sizes']['reps']} interleaved rounds after a warm-up"
    )
    rows = [
        ("cache_vs_hf_forward", "cache", "cache_activations", "HF forward"),
        ("angle_sweep_speedup", "angle_sweep", "batched", "loop over angles"),
        ("selection_speedup", "selection", "batched", "loop over candidates"),
        ("generate_vs_hf", "generate", "steered generate", "HF generate"),
    ]
    header = (
        f"{'benchmark':<22} {'workbench s':>11} {'baseline s':>10} {'ratio':>7} {'goal':>6}  pass  "
        "(workbench vs baseline)"
    )
    print(header)
    print("-" * len(header))
    for key, part, wb_name, base_name in rows:
        d = details.get(part)
        if d is None:
            print(f"{key:<22} {'-':>11} {'-':>10} {'-':>7} {GOALS[key]:>6.2f}  -     (failed)")
            continue
        ok = summary[key] >= GOALS[key]
        print(
            f"{key:<22} {d['wb_s']:>11.2f} {d['base_s']:>10.2f} {summary[key]:>7.2f} {GOALS[key]:>6.2f}  "
            f"{'PASS' if ok else 'fail'}  ({wb_name} vs {base_name})"
        )
    print("-" * len(header))
    g = details.get("generate")
    if g:
        print(
            f"generate tokens/s: workbench+rotation {g['tokens_per_s']['workbench']:.1f}, workbench no hooks "
            f"{g['tokens_per_s']['workbench_nohook']:.1f}, HF {g['tokens_per_s']['hf']:.1f}, TL generate+rotation "
            f"{g['tokens_per_s']['tl']:.1f} (tl_generate_vs_hf {summary['tl_generate_vs_hf']:.2f}, informational)"
        )
    c = details.get("cache")
    if c:
        print(
            f"cache memory ({c['mem_method']}): positions sliced {c['mem_sliced_mib']:.1f} MiB vs "
            f"run_with_cache unsliced {c['mem_full_mib']:.1f} MiB; vs HF body without lm_head "
            f"{c['vs_hf_body']:.2f}; resid_pre vs HF hidden states: max |Δ| {c['max_abs_diff_vs_hf']:.2e} "
            f"(relative {c['max_rel_diff_vs_hf']:.2e})"
        )
    a = details.get("angle_sweep")
    if a:
        print(
            f"angle sweep: {a['angles']} angles × {a['prompts']} prompts, {a['max_new_tokens']} new tokens; "
            f"identical texts batched vs looped: {a['same_text_fraction']:.0%} ({a['distinct_texts']} distinct)"
        )
    s = details.get("selection")
    if s:
        print(
            f"selection: {s['candidates']} candidates × {s['prompts_per_split']} prompts/split; choice batched "
            f"{s['choice_batched']} vs looped {s['choice_looped']} (same: {_fmt(s['same_choice'])}, "
            f"max |Δscore| {s['max_abs_score_diff']:.2e})"
        )
    j = details.get("main_job")
    if j:
        print(f"main job: cold {_fmt(j.get('cold_s'), 1)} s, warm {_fmt(j.get('warm_s'), 1)} s ({j['note']})")
    for part, err in details.get("errors", {}).items():
        print(f"ERROR in {part}: {err}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (about 3 minutes on a 2-core CPU)")
    parser.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    parser.add_argument(
        "--model",
        default="organism",
        help="organism (default), smollm2-135m-instruct, a Hugging Face folder or a .gguf file",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: the GPU if there is one)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice); 1 gives stable numbers when other jobs share the cores",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="also write the full result to this "
        "JSON file (default: write nothing; the committed full run is "
        f"{RESULTS.relative_to(ROOT)})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from workbench.artifacts import atomic_write_text
    from workbench.models import resolve_device, resolve_dtype

    t_start = time.perf_counter()
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL if device.type == "cuda" else FULL_CPU
    dtype = resolve_dtype(None, device)  # fp32 on CPU, bf16 on GPU
    log(f"loading {args.model} on {device} ({dtype})")
    model, hf, tok = load_models(args.model, device, dtype)
    machine = machine_facts(device, dtype, args.model)
    log("building candidates and the steering plane")
    setup = build_setup(model, sizes)

    details: dict = {"sizes": asdict(sizes), "errors": {}}
    parts = [
        ("cache", lambda: bench_cache(model, hf, tok, device, sizes)),
        ("angle_sweep", lambda: bench_angle_sweep(model, device, setup, sizes)),
        ("selection", lambda: bench_selection(model, device, setup, sizes)),
        ("generate", lambda: bench_generate(model, hf, tok, device, setup, sizes)),
    ]
    for name, fn in parts:
        log(f"benchmark: {name}")
        t0 = time.perf_counter()
        try:
            details[name] = fn()
        except Exception as err:  # one broken benchmark must not hide the others
            details["errors"][name] = f"{type(err).__name__}: {err}"
            log(f"{name} failed: {details['errors'][name]}")
        details.setdefault("wall_s", {})[name] = round(time.perf_counter() - t0, 1)
    if not args.quick:
        del model, hf, parts, fn  # free the weights before the subprocess loads its own
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log("benchmark: main_job")
        t0 = time.perf_counter()
        details["main_job"] = bench_main_job(args.model, device)
        details["wall_s"]["main_job"] = round(time.perf_counter() - t0, 1)
        for name in ("cold", "warm"):
            if f"{name}_error" in details["main_job"]:
                details["errors"][f"main_job_{name}"] = details["main_job"][f"{name}_error"][-500:]

    get = lambda part, key: details.get(part, {}).get(key)  # noqa: E731
    summary = {
        "cache_vs_hf_forward": get("cache", "ratio"),
        "angle_sweep_speedup": get("angle_sweep", "ratio"),
        "selection_speedup": get("selection", "ratio"),
        "selection_same_choice": get("selection", "same_choice"),
        "selection_max_score_diff": get("selection", "max_abs_score_diff"),
        "angle_sweep_identical_texts": get("angle_sweep", "identical_texts"),
        "angle_sweep_distinct_texts": get("angle_sweep", "distinct_texts"),
        "cache_max_rel_diff_vs_hf": get("cache", "max_rel_diff_vs_hf"),
        "generate_vs_hf": get("generate", "ratio"),
        "tl_generate_vs_hf": get("generate", "tl_vs_hf"),
        "main_job_cold_s": get("main_job", "cold_s"),
        "main_job_warm_s": get("main_job", "warm_s"),
        "cache_mem_sliced_mib": get("cache", "mem_sliced_mib"),
        "cache_mem_full_mib": get("cache", "mem_full_mib"),
        "machine": machine,
        "quick": args.quick,
        "wall_s": None,
        "details": details,
    }
    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_report(summary, details)
    print(f"total wall time: {summary['wall_s']} s")
    text = json.dumps(summary, default=str)
    if args.results is not None:
        try:
            atomic_write_text(args.results, json.dumps(summary, indent=2, default=str) + "\n")
        except OSError as err:
            log(f"could not write {args.results}: {err}")
    if args.json:
        print(text, flush=True)
    return 1 if details["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
