"""``workbench``: the command line. Each subcommand prints a human summary; with ``--json`` its last
stdout line is one JSON object (progress bars go to stderr)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

__all__ = ["main"]


def _emit(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for key, value in summary.items():
            print(f"{key:>28}: {value}")


def cmd_organism(args) -> dict:
    from .models import hooked_from_hf, load_hf
    from .organism import Recipe, build_organism, measure_refusal, organism_dir

    recipe = Recipe()
    t0 = time.perf_counter()
    path = build_organism(recipe) if args.rebuild else organism_dir(recipe)
    manifest = json.loads((path / "manifest.json").read_text())
    hf, tok = load_hf(str(path))
    metrics = measure_refusal(hooked_from_hf(hf, tok), progress=True)
    return {"path": str(path), "recipe_key": manifest["recipe_key"], **metrics,
            "build_metrics": manifest["metrics"], "build_timings_s": manifest["timings_s"],
            "seconds": round(time.perf_counter() - t0, 1)}


def cmd_run(args) -> dict:
    """The main job. (Grows into the full figure run; for now: model, activations, summary.)"""
    from . import data
    from .activations import cache_activations
    from .models import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device)
    t_load = time.perf_counter() - t0
    harmful = cache_activations(model, data.load_split("harmful", "direction_train"),
                                sites=("resid_pre", "attn_out", "mlp_out"))
    harmless = cache_activations(model, data.load_split("harmless", "direction_train"),
                                 sites=("resid_pre", "attn_out", "mlp_out"))
    diff = harmful.mean()["resid_pre"] - harmless.mean()["resid_pre"]  # [layer, pos, d_model]
    norms = diff.norm(dim=-1)
    layer, pos = divmod(int(norms[: int(0.8 * model.cfg.n_layers)].argmax()), norms.shape[1])
    return {"model": args.model, "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
            "device": str(model.cfg.device), "positions": harmful.positions, "tokens": harmful.tokens,
            "n_harmful": harmful.n_prompts, "n_harmless": harmless.n_prompts,
            "largest_diff_in_means": {"layer": harmful.layers[layer], "pos": harmful.positions[pos],
                                      "norm": round(float(norms.max()), 3)},
            "load_s": round(t_load, 1), "seconds": round(time.perf_counter() - t0, 1)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("organism", help="build or load the refusal model organism and measure it")
    p.add_argument("--rebuild", action="store_true", help="train again even if cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("run", help="the main job: every analysis and figure for one model")
    p.add_argument("--model", default="organism", help="organism (default), smollm2-135m-instruct, "
                   "a Hugging Face folder, a .gguf file or an official TransformerLens name")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        summary = args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    _emit(summary, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
