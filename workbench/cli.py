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
    from .config import Recipe
    from .models import hooked_from_hf, load_hf
    from .organism import organism_dir, ship_adapter
    from .training import build_organism, measure_refusal

    recipe = Recipe()
    t0 = time.perf_counter()
    path = build_organism(recipe) if args.rebuild else organism_dir(recipe)
    shipped = str(ship_adapter(recipe)) if args.ship else None
    manifest = json.loads((path / "manifest.json").read_text())
    hf, tok = load_hf(str(path))
    metrics = measure_refusal(hooked_from_hf(hf, tok), progress=True)
    return {
        "path": str(path),
        "recipe_key": manifest["recipe_key"],
        **metrics,
        "source": manifest.get("source", "trained"),
        "build_metrics": manifest["metrics"],
        "build_timings_s": manifest["timings_s"],
        **({"shipped_to": shipped} if shipped else {}),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def cmd_run(args) -> dict:
    """The main job: every analysis, experiment and figure (see workbench.run)."""
    from .config import load_configs
    from .run import run_main

    config, analysis_config = load_configs(args.config)
    return run_main(
        args.model,
        device=args.device,
        dtype=args.dtype,
        config=config,
        analysis_config=analysis_config,
        prompts=_prompt_splits(args),
        figures_dir=args.figures,
    )


def _prompt_splits(args):
    """Your own harmful/harmless files (both or neither), else the shipped splits (None)."""
    from .data import PromptSplits

    if (args.harmful is None) != (args.harmless is None):
        raise ValueError("pass both --harmful and --harmless (or neither, for the shipped prompt sets)")
    return PromptSplits.from_files(args.harmful, args.harmless) if args.harmful else None


def _analysis(args):
    from .config import load_configs
    from .models import load_model
    from .pipeline import Analysis

    prompts = _prompt_splits(args)
    _, config = load_configs(args.config)  # before loading: a bad file fails fast
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    return model, Analysis(model, config, prompts=prompts)


def cmd_select(args) -> dict:
    from .selection import METHODS

    model, analysis = _analysis(args)
    selection = analysis.selection
    table = selection.table
    out = {}
    for method in METHODS:
        key = selection.choices.get(method)
        if key is None:
            continue
        row = table[(table.site == key.site) & (table.layer == key.layer) & (table.pos == key.pos)].iloc[0]
        out[method] = {
            "site": key.site,
            "layer": key.layer,
            "position": key.pos,
            **{
                c: round(float(row[c]), 4)
                for c in ("norm", "max_sim", "auc", "cohens_d", "bypass", "induce", "kl")
                if c in row and row[c] == row[c]
            },
        }
    keys = {m: (v["site"], v["layer"], v["position"]) for m, v in out.items()}
    agree = {f"{a}={b}": keys[a] == keys[b] for i, a in enumerate(keys) for b in list(keys)[i + 1 :]}
    return {
        **out,
        **analysis.selection_report(),
        "agreements": agree,
        "notes": {k: str(v) for k, v in selection.notes.items()},
        "n_candidates": len(table),
        "run_dir": str(analysis.dir),
    }


def cmd_plane(args) -> dict:
    model, analysis = _analysis(args)
    layer_range = tuple(int(x) for x in args.layers.split("-")) if args.layers else None
    plane = analysis.plane(b1_method=args.b1, variant=args.variant, layer_range=layer_range)
    report = analysis.plane_report(plane)
    return {
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in report.items()},
        "run_dir": str(analysis.dir),
    }


def _spec_hooks(spec: str, model, analysis, run_config):
    """``none``, ``ablate:LOC``, ``add``, ``add:ALPHA[@LAYER]``, ``rotate:ANGLE[:adaptive|b1|b2]`` → hooks
    (rotation at the config's ``rotation_site``)."""
    from . import interventions as iv

    kind, _, rest = spec.partition(":")
    if kind == "none" and not rest:
        return [], {}
    if kind == "ablate" and rest in iv.LOCATIONS:
        direction = analysis.direction()
        return iv.ablation_hooks(model, direction, rest), {"layer": direction.layer}
    if kind == "add":
        direction = analysis.direction()
        alpha, _, at = (rest or "1").partition("@")
        layer = int(at) if at else direction.where()[1]
        return iv.addition_hooks(direction, alpha=float(alpha), layers=[layer], model=model), {
            "alpha": float(alpha),
            "layer": layer,
        }
    if kind == "rotate" and rest:
        angle, _, mode = rest.partition(":")
        gate = {"": "off", "adaptive": "b1", "b1": "b1", "b2": "b2"}.get(mode)
        if gate is None:
            raise ValueError(f"rotate takes ':adaptive' (= ':b1'), ':b2' or nothing after the angle, got {mode!r}")
        site = run_config.rotation_site
        hooks = iv.rotation_hooks(model, analysis.plane(), float(angle), site=site, adaptive=gate)
        return hooks, {"angle": float(angle), "adaptive": gate, "site": site}
    raise ValueError(
        f"bad intervention {spec!r}; use none, ablate:all|resid|attn|mlp, add, "
        "add:ALPHA[@LAYER], rotate:ANGLE or rotate:ANGLE:adaptive|b1|b2"
    )


def cmd_generate(args) -> dict:
    from pathlib import Path

    from .artifacts import atomic_write_text
    from .config import load_configs
    from .data import read_prompts
    from .experiments import score_responses
    from .generation import generate
    from .labels import label_counts

    prompts = read_prompts(args.prompts)
    model, analysis = _analysis(args)
    hooks, params = _spec_hooks(args.intervention, model, analysis, load_configs(args.config)[0])
    responses = generate(
        model, prompts, hooks=hooks, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True
    )
    table = score_responses(prompts, responses)  # prompt, response, refused, empty, label
    out = (
        Path(args.out) if args.out else Path(args.prompts).with_suffix(f".{args.intervention.replace(':', '_')}.jsonl")
    )
    atomic_write_text(out, table.to_json(orient="records", lines=True, force_ascii=False))
    shares = {k: v for k, v in label_counts(list(table["label"])).items() if v > 0}
    return {
        "intervention": args.intervention,
        **params,
        "n": len(table),
        "refusal_rate": float(table["refused"].mean()),
        "empty_rate": float(table["empty"].mean()),
        "labels": shares,
        "output": str(out),
    }


def _model_args(p) -> None:
    p.add_argument(
        "--model",
        default="organism",
        help="organism (default), smollm2-135m-instruct, "
        "a Hugging Face folder, a .gguf file or an official TransformerLens name",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    p.add_argument(
        "--dtype",
        default=None,
        help="float32, bfloat16, float16 (default: float32 on CPU, "
        "bfloat16 on GPU); each dtype gets its own run folder",
    )
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    p.add_argument(
        "--harmful",
        default=None,
        help="your harmful prompts (txt/csv/json/jsonl), split "
        "64:32:54 into direction_train/validation/test; needs --harmless too",
    )
    p.add_argument("--harmless", default=None, help="your harmless prompts, same formats")
    p.add_argument(
        "--config",
        default=None,
        help='JSON file: "protocol" ("paper", the default, or "workbench"), RunConfig fields (sizes, '
        'angles, rotation_site...; used by run and generate) and an "analysis" object of AnalysisConfig '
        "fields (sites, arditi_prompts, plane_candidates...)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("organism", help="build or load the refusal model organism and measure it")
    p.add_argument("--rebuild", action="store_true", help="train again from scratch, even if cached or shipped")
    p.add_argument(
        "--ship",
        action="store_true",
        help="copy the adapter into the package's organism_adapters/ "
        "(maintainers: cold caches then install it instead of training)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_organism)

    p = sub.add_parser("run", help="the main job: every analysis and figure for one model")
    _model_args(p)
    p.add_argument("--figures", default="figures", help="where to write the figures (default figures/)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("select", help="candidate directions and every selection method's choice")
    _model_args(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("plane", help="the angular-steering plane and its report")
    _model_args(p)
    p.add_argument("--b1", default=None, help="b1's selection method (default max_sim)")
    p.add_argument("--variant", default="pc1", help="pc1 (default), last_two_pcs, per_sample")
    p.add_argument("--layers", default=None, help="LO-HI: only candidates from these layers feed the PCA")
    p.set_defaults(func=cmd_plane)

    p = sub.add_parser("generate", help="generate under an intervention; writes JSONL")
    _model_args(p)
    p.add_argument("--prompts", required=True, help="a file of prompts (txt: one per line; csv/json/jsonl)")
    p.add_argument(
        "--intervention",
        default="none",
        help="none | ablate:all|resid|attn|mlp | add | add:ALPHA[@LAYER] | rotate:ANGLE[:adaptive|b1|b2] "
        "(rotation at the config's rotation_site, default post_gain)",
    )
    p.add_argument("--out", default=None, help="JSONL output (default: next to the prompts)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_generate)
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
