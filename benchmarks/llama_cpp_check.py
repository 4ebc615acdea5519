"""The workbench's GGUF exports in real llama.cpp (``llama-cpp-python``), against the workbench itself.

For a model folder (``--model``: the organism's installed folder by default, or any Hugging Face
folder of a GGUF-verified family) it writes the model as GGUF in each of ``--types`` with
``workbench.gguf_export.write_model_gguf`` and, on the first ``--prompts`` held-out harmful and
harmless test prompts (chat-templated and tokenized by the workbench; llama.cpp gets the same ids):

* ``tokenize_equal``: prompts that llama.cpp's own tokenizer (reading the GGUF's vocabulary and
  pre-tokenizer) cuts into exactly the workbench's ids;
* per type: the prompt logits' max |Δ| against the workbench's fp32 forward, relative to the largest
  |logit|, the share of positions with the same argmax, and how many of the ``--tokens``-token greedy
  continuations are identical (llama.cpp decodes with its KV cache, one token at a time);
* the control vector: the workbench's activation addition α·r (the organism's refusal direction,
  ``Analysis(model).direction()``, at its own layer, α = ``--alpha``) on the harmless prompts, against
  llama.cpp with the file ``write_control_vector`` wrote (``direction.k``, k = layer − 1), applied as
  ``--control-vector`` does (the buffer ``common_control_vector_load`` builds, layers 1 … n_layer);
  the same logit and greedy comparisons, and the steered texts.

Needs ``llama_cpp`` importable (``pip install llama-cpp-python`` builds llama.cpp from source); the
last stdout line is one JSON object.

    .venv/bin/python benchmarks/llama_cpp_check.py [--model organism] [--types f32,q8_0] [--prompts 4]
        [--tokens 32] [--alpha 1.0] [--threads 2] [--kv f32|f16] [--no-control-vector] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.chat import encode, format_prompts
from workbench.data import load_split
from workbench.gguf_export import GGUF_TYPES, control_vector_layers, write_control_vector, write_model_gguf
from workbench.interventions import addition_hooks
from workbench.models import load_model
from workbench.organism import RECIPES, organism_dir
from workbench.pipeline import Analysis


def model_folder(spec: str) -> Path:
    return organism_dir(RECIPES[spec]) if spec in RECIPES else Path(spec).expanduser()


@torch.inference_mode()
def workbench_run(model, ids: list[int], n_new: int, hooks=()) -> tuple[np.ndarray, list[int]]:
    """The prompt's logits (fp32 full forward) and a greedy continuation, one full forward per token."""
    seq = list(ids)
    eos = model.tokenizer.eos_token_id
    prompt_logits = None
    for _ in range(n_new + 1):
        logits = model.run_with_hooks(torch.tensor([seq]), fwd_hooks=list(hooks))[0]
        if prompt_logits is None:
            prompt_logits = logits.float().numpy()
        if len(seq) - len(ids) == n_new:
            break
        nxt = int(logits[-1].argmax())
        seq.append(nxt)
        if nxt == eos:
            break
    assert prompt_logits is not None
    return prompt_logits, seq[len(ids) :]


def llama_run(llm, ids: list[int], n_new: int, eos: int) -> tuple[np.ndarray, list[int]]:
    """The same in llama.cpp: the prompt in one batch, then one cached token at a time."""
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    out: list[int] = []
    while len(out) < n_new:
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt == eos:
            break
        llm.eval([nxt])
    return prompt_logits, out


def control_vector_buffer(path: Path, n_layers: int) -> np.ndarray:
    """What llama.cpp's ``common_control_vector_load`` builds from a control-vector file (strength 1):
    ``direction.k`` at offset n_embd·(k − 1) of an n_embd × (n_layers − 1) buffer."""
    import gguf

    tensors = gguf.GGUFReader(path).tensors
    n_embd = int(tensors[0].data.shape[0])
    flat = np.zeros(n_embd * (n_layers - 1), dtype=np.float32)
    for t in tensors:
        k = int(t.name.split(".")[1])
        flat[n_embd * (k - 1) : n_embd * k] += t.data
    return flat


def compare(wb: list, cpp: list, tokenizer) -> dict:
    """Logit gaps over every prompt position and greedy agreement, workbench vs llama.cpp."""
    gaps = [float(np.abs(a - b).max()) for (a, _), (b, _) in zip(wb, cpp)]
    scale = max(float(np.abs(a).max()) for a, _ in wb)
    agree = np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for (a, _), (b, _) in zip(wb, cpp)]))
    same = [x == y for (_, x), (_, y) in zip(wb, cpp)]
    return {
        "max_abs_logit_gap": max(gaps),
        "relative_gap": max(gaps) / scale,
        "argmax_agree": float(agree),
        "greedy_identical": f"{sum(same)}/{len(same)}",
        "texts": [[tokenizer.decode(x), tokenizer.decode(y)] for (_, x), (_, y) in zip(wb, cpp)],
    }


def open_llama(llama_cpp, path: Path, args):
    kv = {"f32": 0, "f16": 1}[args.kv]  # GGML_TYPE_F32 / F16 for the KV cache (llama.cpp's default: f16)
    return llama_cpp.Llama(
        str(path), n_ctx=1024, logits_all=True, verbose=False, n_threads=args.threads, type_k=kv, type_v=kv
    )


def check_types(args, llama_cpp, folder: Path, tmp: Path, model, prompts: list[list[int]], texts: list[str]) -> dict:
    eos = model.tokenizer.eos_token_id
    wb = [workbench_run(model, ids, args.tokens) for ids in prompts]
    result: dict = {}
    for outtype in args.types:
        path = tmp / f"model-{outtype}.gguf"
        start = time.perf_counter()
        write_model_gguf(folder, path, outtype=outtype)
        written = time.perf_counter() - start
        llm = open_llama(llama_cpp, path, args)
        if "tokenize_equal" not in result:
            same = [llm.tokenize(t.encode(), add_bos=False, special=True) == ids for t, ids in zip(texts, prompts)]
            result["tokenize_equal"] = f"{sum(same)}/{len(same)}"
        start = time.perf_counter()
        cpp = [llama_run(llm, ids, args.tokens, eos) for ids in prompts]
        result[outtype] = {
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "write_s": round(written, 1),
            "llama_cpp_s": round(time.perf_counter() - start, 1),
            **compare(wb, cpp, model.tokenizer),
        }
        del llm
    return result


def check_control_vector(args, llama_cpp, folder: Path, tmp: Path, model, prompts: list[list[int]]) -> dict:
    direction = Analysis(model).direction()
    layer = max(int(direction.layer), 2)  # llama.cpp cannot add before layer 2's resid_pre
    n_layers = model.cfg.n_layers
    (k,) = control_vector_layers([layer], n_layers).values()
    vector = args.alpha * torch.as_tensor(direction.vector).float()
    path = tmp / "refusal.cvec.gguf"
    hint = json.loads((folder / "config.json").read_text())["model_type"]  # what repeng writes
    write_control_vector({k: vector}, path, model_hint=hint)
    hooks = addition_hooks(direction.vector, alpha=args.alpha, layers=[layer], model=model)
    wb = [workbench_run(model, ids, args.tokens, hooks) for ids in prompts]
    model_path = tmp / "model-f32.gguf"
    if not model_path.exists():
        write_model_gguf(folder, model_path)
    llm = open_llama(llama_cpp, model_path, args)
    buf = control_vector_buffer(path, n_layers)
    ptr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, ptr, buf.size, model.cfg.d_model, 1, n_layers)
    assert rc == 0, f"llama_set_adapter_cvec returned {rc}"
    cpp = [llama_run(llm, ids, args.tokens, model.tokenizer.eos_token_id) for ids in prompts]
    return {"workbench_layer": layer, "direction_index": k, "alpha": args.alpha, **compare(wb, cpp, model.tokenizer)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--types", default="f32,q8_0", help=f"comma-separated, of {', '.join(GGUF_TYPES)}")
    parser.add_argument("--prompts", type=int, default=4, help="per class (harmful, harmless)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv", choices=("f32", "f16"), default="f32", help="llama.cpp's KV cache type")
    parser.add_argument(
        "--no-control-vector",
        action="store_true",
        help="skip the control vector (a model that refuses nothing, e.g. an ablated export, has no direction)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.types = args.types.split(",")
    try:
        import llama_cpp
    except ImportError as err:
        print(f"llama_cpp is not importable ({err}); pip install llama-cpp-python", file=sys.stderr)
        raise SystemExit(2) from err
    torch.set_num_threads(args.threads)
    folder = model_folder(args.model)
    model = load_model(args.model, device="cpu", dtype="float32")
    harmful = load_split("harmful", "test")[: args.prompts]
    harmless = load_split("harmless", "test")[: args.prompts]
    texts = format_prompts(model.tokenizer, harmful + harmless)
    prompts = encode(model.tokenizer, texts)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        result = {"model": args.model, "llama_cpp": llama_cpp.__version__, "kv": args.kv, "prompts": len(prompts)}
        result.update(check_types(args, llama_cpp, folder, tmp, model, prompts, texts))
        if not args.no_control_vector:
            result["control_vector"] = check_control_vector(
                args, llama_cpp, folder, tmp, model, prompts[args.prompts :]
            )
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
