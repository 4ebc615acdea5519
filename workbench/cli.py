"""``workbench``: the command line. Each subcommand prints a human summary; with ``--json`` its last
stdout line is one JSON object (progress bars go to stderr)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]


def _strict_json(value):
    """``value`` with every non-finite float as None: JSON has no NaN, and ``--json`` must parse."""
    if isinstance(value, float) and not math.isfinite(value):  # numpy floats are floats too
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _emit(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_strict_json(summary), sort_keys=True, allow_nan=False))
    else:
        for key, value in summary.items():
            print(f"{key:>28}: {value}")


def cmd_organism(args) -> dict:
    from .models import hooked_from_hf, load_hf
    from .organism import RECIPES, organism_dir, ship_adapter
    from .training import build_organism, measure_labels, measure_refusal

    recipe = RECIPES[args.model]
    t0 = time.perf_counter()
    path = build_organism(recipe) if args.rebuild else organism_dir(recipe)
    shipped = str(ship_adapter(recipe)) if args.ship else None
    manifest = json.loads((path / "manifest.json").read_text())
    hf, tok = load_hf(str(path))
    hooked = hooked_from_hf(hf, tok)
    metrics: dict = measure_refusal(hooked, progress=True)
    if recipe.variant == "graded":
        metrics["labels"] = measure_labels(hooked, progress=True)
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
    from .run import run_main

    config, analysis_config = args.configs
    summary = run_main(
        args.model,
        device=args.device,
        dtype=args.dtype,
        config=config,
        analysis_config=analysis_config,
        prompts=args.prompt_splits,
        figures_dir=args.figures,
        config_file=args.config,
    )
    if summary["skipped"]:
        print(
            f"workbench run: note: skipped Arditi's stages and the experiments: {summary['skipped']['arditi']}",
            file=sys.stderr,
        )
    _warn(summary["warnings"])
    return summary


def cmd_models(args) -> dict:
    """What the workbench makes of one model: family, fast paths, exact interventions (workbench.doctor)."""
    from .doctor import model_report

    return model_report(args.model, device=args.device, dtype=args.dtype)


def _prompt_splits(args):
    """Your own harmful/harmless files (both or neither), else the shipped splits (None)."""
    from .data import PromptSplits

    if (args.harmful is None) != (args.harmless is None):
        raise ValueError("pass both --harmful and --harmless (or neither, for the shipped prompt sets)")
    return PromptSplits.from_files(args.harmful, args.harmless) if args.harmful else None


def _warn(lines: list[str]) -> list[str]:
    """Print each small-sample warning on stderr; return them for the ``warnings`` field."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    return lines


def _analysis(args):
    from .models import load_model
    from .pipeline import Analysis

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    return model, Analysis(model, args.configs[1], prompts=args.prompt_splits)


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
        "warnings": _warn(analysis.sample_warnings()),
    }


def cmd_plane(args) -> dict:
    model, analysis = _analysis(args)
    if args.layer_range and args.layer_range[1] >= model.cfg.n_layers:
        raise ValueError(f"--layers {args.layers}: this model has layers 0-{model.cfg.n_layers - 1}")
    plane = analysis.plane(b1_method=args.b1, variant=args.variant, layer_range=args.layer_range)
    report = analysis.plane_report(plane)
    return {
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in report.items()},
        "run_dir": str(analysis.dir),
        "warnings": _warn(analysis.sample_warnings()),
    }


def cmd_stability(args) -> dict:
    """How stable the direction, each method's choice and the plane are over bootstrap resamples of
    direction_train (workbench.stability; generation-free, no forward pass per resample)."""
    _, analysis = _analysis(args)
    t0 = time.perf_counter()
    result = analysis.stability(args.resamples, args.seed)
    return {
        **result.summary,
        "seconds": round(time.perf_counter() - t0, 1),
        "run_dir": str(analysis.dir),
        "warnings": _warn(analysis.sample_warnings()),
    }


_BIG_ALPHA = 20.0  # |alpha| beyond this is far past the refusal direction's own size: expect gibberish


def _controlled(analysis, value, controls: dict):
    """``(direction, plane)`` the intervention reads: the analysis's own, or the causal control
    (:mod:`workbench.controls`) standing in for it at the same site, layer and position."""
    from .controls import null_direction, random_direction, random_plane

    direction = analysis.direction() if "direction" in value.needs else None
    plane = analysis.plane() if "plane" in value.needs else None
    if (control := controls.get("direction")) is not None and direction is not None:
        if control.kind == "random":
            direction = random_direction(direction, control.seed)
        else:  # null: two random halves of the harmless direction_train prompts
            harmless = analysis.activations["harmless_train"].get(*direction.where())
            direction = null_direction(harmless, direction, control.seed)
    if (control := controls.get("plane")) is not None and plane is not None:
        plane = random_plane(plane, control.seed)
    return direction, plane


def _resolved(spec: str, run_config):
    """The intervention value of ``spec``; a rotation without a site rotates at the config's ``rotation_site``."""
    from .intervention import Rotation, parse

    value = parse(spec)
    if isinstance(value, Rotation) and value.site is None:
        value = replace(value, site=run_config.rotation_site)
    return value


def _steered(spec: str, model, analysis, run_config, max_new_tokens: int, controls: dict | None = None):
    """``(model, hooks, params, provenance)`` for an intervention spec (:mod:`workbench.intervention`):
    the direction and the plane are computed (or loaded) only when the kind reads them; a rotation
    without a site rotates at the config's ``rotation_site``. ``controls``: ``{"direction" |
    "plane": Control}`` replaces the real direction / plane by a causal control."""
    from .provenance import generation_provenance

    value = _resolved(spec, run_config)
    controls = controls or {}
    direction, plane = _controlled(analysis, value, controls)
    record = generation_provenance(
        analysis,
        str(value),
        direction=direction,
        plane=plane,
        max_new_tokens=max_new_tokens,
        controls={what: c.record() for what, c in controls.items()},
    )
    model = value.edit(model, direction, plane)
    params = value.params(direction)
    if direction is not None and "direction" in controls:
        params["direction_norm"] = round(direction.norm, 4)
    return model, value.hooks(model, direction, plane), params, record


def cmd_generate(args) -> dict:
    from .artifacts import atomic_write_text
    from .data import sample_warnings
    from .experiments import score_responses
    from .generation import generate
    from .labels import label_counts
    from .provenance import check_overwrite, default_output
    from .stats import wilson_interval

    prompts = args.prompt_list
    model, analysis = _analysis(args)
    model, hooks, params, record = _steered(
        args.intervention, model, analysis, args.configs[0], args.max_new_tokens, args.controls
    )
    out = args.out_path or default_output(args.prompts, args.model, args.dtype_name, record)
    check_overwrite(out, record, overwrite=args.overwrite)  # before minutes of generation, not after
    used = record["direction"] is not None or record["plane"] is not None  # else the analysis played no part
    rate = sample_warnings([("rate", "prompts behind refusal_rate", len(prompts))])
    notes = _warn([*(analysis.sample_warnings() if used else []), *rate])
    responses = generate(
        model, prompts, hooks=hooks, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True
    )
    table = score_responses(prompts, responses)  # prompt, response, refused, empty, label
    table["provenance"] = [record] * len(table)  # per row: pandas.read_json(lines=True) still reads the file
    atomic_write_text(out, table.to_json(orient="records", lines=True, force_ascii=False))
    shares = {k: v for k, v in label_counts(list(table["label"])).items() if v > 0}
    n = len(table)
    return {
        "intervention": args.intervention,
        **params,
        **({"controls": record["controls"]} if "controls" in record else {}),
        "n": n,
        "refusal_rate": float(table["refused"].mean()),
        "refusal_rate_ci95": list(wilson_interval(int(table["refused"].sum()), n)),
        "empty_rate": float(table["empty"].mean()),
        "label_rates": shares,
        "label_rates_ci95": {k: list(wilson_interval(round(v * n), n)) for k, v in shares.items()},
        "labels": shares,  # the name before label_rates, kept as an alias
        "output": str(out),
        "provenance": record,
        "warnings": notes,
    }


def cmd_export(args) -> dict:
    """The edited model as a Hugging Face folder, LoRA adapter, GGUF file or control vector (workbench.export)."""
    from .export import export
    from .intervention import parse
    from .provenance import direction_provenance

    t0 = time.perf_counter()
    model, analysis = _analysis(args)
    direction = analysis.direction()
    manifest = export(
        model,
        direction,
        parse(args.intervention),
        args.format,
        args.out,
        force=args.force,
        gguf_type=args.gguf_type or "f32",
        provenance=direction_provenance(direction, analysis),
    )
    return {**manifest, "out": str(Path(args.out).expanduser()), "seconds": round(time.perf_counter() - t0, 1)}


def _check_export_args(args) -> None:
    """Format, intervention, GGUF type, output path and (for a local folder) family, before any load."""
    from .artifacts import check_writable_dir
    from .export import GGUF_TYPES, check_folder_family, check_intervention, check_out
    from .intervention import parse

    check_intervention(parse(args.intervention), args.format)
    if args.gguf_type is not None and args.format != "gguf":
        raise ValueError(f"--gguf-type applies to --format gguf only; drop it for --format {args.format}")
    if args.gguf_type is not None and args.gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type {args.gguf_type!r} is not a GGUF type; choose one of {', '.join(GGUF_TYPES)}")
    out = Path(args.out).expanduser()
    check_out(out, args.format)
    check_writable_dir(out.parent, "--out's folder")
    if Path(args.model).expanduser().is_dir():
        check_folder_family(Path(args.model).expanduser(), args.format, force=args.force)


def cmd_damage(args) -> dict:
    """CE loss on held-out harmless answers, first-token KL and the degenerate-output rate of one
    intervention (:mod:`workbench.damage`)."""
    from .damage import measure_damage

    model, analysis = _analysis(args)
    value = _resolved(args.intervention, args.configs[0])
    direction, plane = _controlled(analysis, value, args.controls)
    t0 = time.perf_counter()
    result = measure_damage(
        model,
        value,
        direction,
        plane,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.json,
    )
    controls = {what: c.record() for what, c in args.controls.items()}
    return {
        "model": args.model,
        "intervention": str(value),
        **({"controls": controls} if controls else {}),
        **result,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _check_damage_args(args) -> None:
    from .intervention import parse

    for flag, value in (("--n", args.n), ("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    args.controls = _controls(args, parse(args.intervention))


def _validate(args) -> None:
    """Check every argument, file and output path before a model loads or any work starts; each
    problem is one ValueError naming the argument or file and the fix. Parsed values are kept on
    ``args`` (``configs``, ``prompt_splits``, ``layer_range``, ``prompt_list``, ``out_path``)."""
    if args.command == "organism":
        return
    from .artifacts import CACHE_ENV, cache_root, check_writable_dir
    from .config import load_configs
    from .hub import resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    try:
        dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    except ValueError as err:
        raise ValueError(f"--dtype: {err}") from None
    from .models import check_model_spec

    if args.command == "models":
        check_model_spec(args.model)
        return
    args.configs = load_configs(args.config, args.model)
    if args.refusal_tokens is not None:  # the option overrides the config's "analysis"."refusal_tokens"
        from .refusal_tokens import parse_refusal_tokens

        tokens = parse_refusal_tokens(args.refusal_tokens)
        args.configs = (args.configs[0], replace(args.configs[1], refusal_tokens=tokens))
    from .selection import METHODS

    for field in ("direction_method", "plane_b1_method"):  # config.py sits below selection: checked here
        if getattr(args.configs[1], field) not in METHODS:
            raise ValueError(
                f'"analysis"."{field}" of {args.config} is {getattr(args.configs[1], field)!r}; '
                f"choose one of {', '.join(METHODS)}"
            )
    args.prompt_splits = _prompt_splits(args)
    check_writable_dir(cache_root(), f"the cache folder (${CACHE_ENV} or ~/.cache/refusal-workbench)")
    if args.command == "run":
        _check_run_args(args, dtype)
    if args.command == "plane":
        _check_plane_args(args)
    if args.command == "stability":
        _check_stability_args(args)
    if args.command == "generate":
        _check_generate_args(args, dtype)
    if args.command == "export":
        _check_export_args(args)
    if args.command == "damage":
        _check_damage_args(args)
    check_model_spec(args.model)
    if args.dtype is not None and dtype != "float32":  # a silent recompute of minutes looks like a hang
        print(
            f"note: --dtype {args.dtype} gets its own run folder; its analysis is computed there on first use "
            f"(minutes on a CPU), not reused from float32",
            file=sys.stderr,
        )


def _check_run_args(args, dtype: str) -> None:
    """The figures folder: ``--figures``, else the model's default one (the default model's at the top,
    other embedded models' below), or ``figures/NAME-<tag>`` for a run on its own inputs."""
    from .artifacts import check_writable_dir
    from .config import default_figures_dir

    if args.figures is None:
        tag = _inputs_tag(args, dtype)  # own inputs: never the committed folder
        args.figures = f"figures/{Path(args.model).name}-{tag}" if tag else default_figures_dir(args.model)
    check_writable_dir(args.figures, "--figures")


def _inputs_tag(args, dtype: str) -> str:
    """``""`` for a run on the shipped prompts with the default config; otherwise 8 hex of its
    prompt files, config file, refusal tokens and dtype, so that such a run's default figures folder
    is its own and never overwrites the committed figures (or another run's)."""
    from .artifacts import sha256_file, sha256_text

    splits = args.prompt_splits  # its files were hashed when read: their sha256s are reused
    inputs = {kind: f["sha256"] for kind, f in (splits.files if splits else {}).items()}
    if args.config:
        inputs["config"] = sha256_file(args.config)
    if args.refusal_tokens is not None:
        inputs["refusal_tokens"] = args.refusal_tokens
    if dtype != "float32":
        inputs["dtype"] = dtype
    return sha256_text(json.dumps(inputs, sort_keys=True))[:8] if inputs else ""


def _check_plane_args(args) -> None:
    import re

    from .planes import VARIANTS
    from .selection import METHODS

    if args.b1 is not None and args.b1 not in METHODS:
        raise ValueError(f"--b1 {args.b1!r} is not a selection method; choose one of {', '.join(METHODS)}")
    if args.variant not in VARIANTS:
        raise ValueError(f"--variant {args.variant!r} is not a plane variant; choose one of {', '.join(VARIANTS)}")
    args.layer_range = None
    if args.layers is not None:
        match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", args.layers)
        if not match:
            raise ValueError(
                f"--layers {args.layers!r} must be a range LO-HI of layer indices, e.g. 5-20 (one layer: 5-5)"
            )
        lo, hi = int(match[1]), int(match[2])
        if lo > hi:
            raise ValueError(f"--layers {args.layers}: the range is reversed; write {hi}-{lo}")
        args.layer_range = (lo, hi)


def _check_stability_args(args) -> None:
    """``--resamples`` / ``--seed``: given, or the config's ``stability_resamples`` / ``stability_seed``."""
    run_config = args.configs[0]
    if args.resamples is None:
        args.resamples = run_config.stability_resamples
    if args.seed is None:
        args.seed = run_config.stability_seed
    if args.resamples < 1:
        raise ValueError(f"--resamples must be a positive integer (e.g. 20), got {args.resamples}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")


def _check_generate_args(args, dtype: str) -> None:

    from .artifacts import check_writable_dir
    from .data import read_prompts

    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    from .intervention import Addition, parse

    value = parse(args.intervention)
    if isinstance(value, Addition) and abs(value.alpha) > _BIG_ALPHA:
        print(
            f"note: --intervention {args.intervention}: |alpha| > {_BIG_ALPHA:g} adds {abs(value.alpha):g} times "
            "the refusal direction; expect incoherent text (typical values: 0.5-4)",
            file=sys.stderr,
        )
    args.controls = _controls(args, value)
    args.prompt_list = read_prompts(args.prompts)
    # the default name (workbench.provenance.default_output) needs the direction's and the plane's
    # identity, known once the analysis is loaded; here only its folder is checked
    out = Path(args.out) if args.out else Path(args.prompts).with_suffix(".jsonl")
    if args.out and out.is_dir():
        raise ValueError(f"--out {out} is a folder; pass a file name, e.g. {out / 'responses.jsonl'}")
    check_writable_dir(out.parent, "--out's folder" if args.out else "the prompts' folder (for the output)")
    args.out_path = out if args.out else None
    args.dtype_name = dtype


def _controls(args, value) -> dict:
    """``--direction`` / ``--plane`` as ``{"direction" | "plane": Control}``, checked against what the
    intervention reads (a control of something it does not read would change nothing, silently)."""
    from .controls import DIRECTION_CONTROLS, PLANE_CONTROLS, parse_control

    controls = {}
    for what, option, choices in (
        ("direction", "--direction", DIRECTION_CONTROLS),
        ("plane", "--plane", PLANE_CONTROLS),
    ):
        text = getattr(args, what)
        if text is None:
            continue
        controls[what] = parse_control(text, option, choices)
        if what not in value.needs:
            reads = " and ".join(value.needs) or "neither a direction nor a plane"
            raise ValueError(
                f"{option} {text}: --intervention {args.intervention} reads {reads}, so the control would change "
                f"nothing; drop {option}, or pick an intervention that reads the {what} (e.g. "
                + ("ablate:all or add:1)" if what == "direction" else "rotate:180)")
            )
    return controls


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
        "in the proportions 64:32:54 into direction_train/validation/test; needs --harmless too",
    )
    p.add_argument("--harmless", default=None, help="your harmless prompts, same formats")
    p.add_argument(
        "--refusal-tokens",
        default=None,
        metavar="TOKENS",
        help='the first response tokens Arditi\'s refusal score counts: ids (40,1383) or strings (I,Sorry,"As an"), '
        "comma-separated; a string stands for the first token the model's tokenizer makes of it (no leading space). "
        'Overrides the config\'s "analysis": {"refusal_tokens"} and discovery from the model\'s own responses '
        "(default); its own run folder",
    )
    p.add_argument(
        "--config",
        default=None,
        help='JSON file: "protocol" ("paper", the default, or "workbench"), RunConfig fields (sizes, '
        'angles, rotation_site...; used by run and generate) and an "analysis" object of AnalysisConfig '
        "fields (sites, arditi_prompts, plane_candidates...)",
    )


def _organism_parser(sub) -> None:
    p = sub.add_parser("organism", help="build or load the refusal model organism and measure it")
    p.add_argument(
        "--model",
        default="organism",
        choices=("organism", "organism-graded"),
        help="organism (refusal only, default) or organism-graded (also warnings and ethical redirects)",
    )
    p.add_argument("--rebuild", action="store_true", help="train again from scratch, even if cached or shipped")
    p.add_argument(
        "--ship",
        action="store_true",
        help="copy the adapter into the package's organism_adapters/ "
        "(maintainers: cold caches then install it instead of training)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_organism)


def _analysis_parsers(sub) -> None:
    """``run``, ``select``, ``plane`` and ``stability``: the commands that compute (or load) a model's analysis."""
    p = sub.add_parser("run", help="the main job: every analysis and figure for one model")
    _model_args(p)
    p.add_argument(
        "--figures",
        default=None,
        help="where to write the figures (default figures/ for the organism, figures/MODEL/ for other models)",
    )
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

    p = sub.add_parser(
        "stability",
        help="how often each candidate is chosen, and how far the directions move, over bootstrap "
        "resamples of direction_train",
    )
    _model_args(p)
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 20: stability_resamples)")
    p.add_argument("--seed", type=int, default=None, help="the resampling seed (default 0: stability_seed)")
    p.set_defaults(func=cmd_stability)


def _control_args(p) -> None:
    p.add_argument(
        "--direction",
        default=None,
        metavar="random[:SEED]|null[:SEED]",
        help="a causal control in place of the refusal direction, at its site, layer and position: random = a "
        "seeded random unit direction scaled to the real one's norm; null = the difference in means of two "
        "seeded random halves of the harmless direction_train prompts (SEED default 0)",
    )
    p.add_argument(
        "--plane",
        default=None,
        metavar="random[:SEED]",
        help="a causal control in place of the steering plane: a seeded random orthonormal plane (SEED default 0)",
    )


def _generate_parser(sub) -> None:
    from .intervention import spec_help  # the registry of kinds (light: its hook factories load on use)

    p = sub.add_parser("generate", help="generate under an intervention; writes JSONL")
    _model_args(p)
    p.add_argument("--prompts", required=True, help="a file of prompts (txt: one per line; csv/json/jsonl)")
    p.add_argument(
        "--intervention",
        default="none",
        help=f"one of: {spec_help()}. ANGLE: any finite degrees, taken mod 360; a rotation without a site "
        "rotates at the config's rotation_site (default post_gain); LAYERS: a block index, LO-HI or A,B,C "
        "(add: default the direction's own layer; others: every block)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSONL output (default: next to the prompts, named by model, dtype, intervention and the "
        "direction's / plane's site, layer, position and analysis run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output written by a different run (by default that is refused; the same "
        "run's output is replaced)",
    )
    _control_args(p)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_generate)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="the edited model as a Hugging Face folder, LoRA adapter, GGUF or control vector")
    _model_args(p)
    p.add_argument(
        "--intervention",
        default="orthogonalize",
        help="hf, lora, gguf: orthogonalize (default) or ablate:all, directional ablation everywhere as a weight "
        "edit; control-vector: add[:ALPHA][@LAYERS]",
    )
    p.add_argument("--format", required=True, help="hf, lora, gguf or control-vector")
    p.add_argument(
        "--out", required=True, help="a new folder (hf, lora) or file (gguf, control-vector); never overwritten"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="export a family where weight orthogonalization is not exact (sandwich / post norms); the manifest "
        "says how far it is from hook ablation",
    )
    p.add_argument("--gguf-type", default=None, help="f32 (default), f16, bf16 or q8_0 (--format gguf)")
    p.set_defaults(func=cmd_export)


def _damage_parser(sub) -> None:
    from .intervention import spec_help

    p = sub.add_parser(
        "damage", help="what an intervention costs on harmless text: CE loss, first-token KL, degenerate outputs"
    )
    _model_args(p)
    p.add_argument("--intervention", required=True, help=f"one of: {spec_help()} (as for generate)")
    _control_args(p)
    p.add_argument("--n", type=int, default=54, help="held-out harmless prompts and answers to use (default all 54)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per generation checked for degeneration")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0)")
    p.set_defaults(func=cmd_damage)


def _models_parser(sub) -> None:
    p = sub.add_parser("models", help="a model's family, which fast paths engage, which interventions are exact")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="organism, smollm2-135m-instruct, a Hugging Face folder, a .gguf file or an official TransformerLens name",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU if present)")
    p.add_argument(
        "--dtype", default=None, help="float32, bfloat16, float16 (default: float32 on CPU, bfloat16 on GPU)"
    )
    p.add_argument("--json", action="store_true", help="stdout is one JSON object")
    p.set_defaults(func=cmd_models, describe=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _organism_parser(sub)
    _analysis_parsers(sub)
    _generate_parser(sub)
    _export_parser(sub)
    _damage_parser(sub)
    _models_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        _validate(args)
        summary = args.func(args)
    except KeyboardInterrupt:
        print(
            f"workbench {args.command}: interrupted; finished stages are saved, rerun the same command to resume "
            "from the last finished stage",
            file=sys.stderr,
        )
        return 130
    except (ValueError, OSError, KeyError) as err:  # OSError: e.g. a download that failed after all
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"workbench {args.command}: error: {message}", file=sys.stderr)
        return 2
    if getattr(args, "describe", False) and not args.json:
        from .doctor import describe

        print(describe(summary))
    else:
        _emit(summary, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
