# %% [markdown]
# # 04 · Live steering
#
# Turn a dial and watch the organism change its mind. A widget panel picks an intervention (none,
# directional ablation at a location, activation addition with a coefficient, or angular steering
# to an angle in the plane) and regenerates the responses to a few prompts on every change: one
# batched, KV-cached `generate` call with the shared chat-template prefix reused and few new tokens,
# so a change is answered in seconds on a CPU. The same code runs unchanged on a GPU model.

# %%
import html

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from IPython.display import HTML, display

from workbench import data
from workbench import experiments as ex
from workbench import figures as fg
from workbench import interventions as iv
from workbench.generation import generate
from workbench.labels import heuristic_label
from workbench.models import load_model
from workbench.pipeline import Analysis

torch.set_grad_enabled(False)
fg.use_notebook_renderer()  # figures render in JupyterLab, the classic notebook and exported HTML
model = load_model("organism")
MAX_NEW_TOKENS = 20  # enough to tell a refusal from an answer; keeps a change fast on a CPU

# %% [markdown]
# ## The direction and the plane (cached stages: computed once, then loaded)

# %%
analysis = Analysis(model)
direction, plane = analysis.direction(), analysis.plane()
site, layer, pos = direction.where()
print(f"direction: {site} L{layer} pos {pos}; plane b1 at 0°")

# %% [markdown]
# ## Default prompts: two harmful test prompts the organism refuses, two harmless ones it answers
# One batched call over a few test prompts of each kind, unsteered; the first two of each that
# behave as expected become the panel's default prompts (edit them in the text box).

# %%
pool = {kind: data.load_split(kind, "test")[:8] for kind in ("harmful", "harmless")}
flat = pool["harmful"] + pool["harmless"]
labels = [heuristic_label(p, r) for p, r in zip(flat, generate(model, flat, max_new_tokens=MAX_NEW_TOKENS))]
refused = [p for p, lab in zip(flat[:8], labels[:8]) if lab == "refusal"][:2]
answered = [p for p, lab in zip(flat[8:], labels[8:]) if lab != "refusal"][:2]
DEFAULT_PROMPTS = refused + answered
DEFAULT_PROMPTS

# %% [markdown]
# ## `steer(settings)`: the callback's work, callable on its own
# `settings`: `mode` (`none`, `ablate`, `add`, `rotate`), `location` (ablation: `all`, `resid`,
# `attn`, `mlp`), `alpha` (addition coefficient, at the direction's own layer), `angle` (degrees,
# rotation to that angle in the plane) and `prompts`. Returns one row per prompt.


# %%
def hooks_for(settings: dict) -> list:
    mode = settings.get("mode", "none")
    if mode == "none":
        return []
    if mode == "ablate":
        return iv.ablation_hooks(model, direction, settings.get("location", "all"))
    if mode == "add":
        return iv.addition_hooks(direction, alpha=float(settings.get("alpha", 1.0)), layers=[layer], model=model)
    if mode == "rotate":
        return iv.rotation_hooks(model, plane, float(settings.get("angle", 0.0)))
    raise ValueError(f"unknown mode {mode!r}; choose none, ablate, add or rotate")


def steer(settings: dict) -> list[dict]:
    prompts = [p.strip() for p in settings.get("prompts", DEFAULT_PROMPTS) if p.strip()]
    if not prompts:
        return []
    responses = generate(model, prompts, hooks=hooks_for(settings), max_new_tokens=MAX_NEW_TOKENS)
    return [{"prompt": p, "label": heuristic_label(p, r), "response": r} for p, r in zip(prompts, responses)]


steer({"mode": "ablate", "location": "all", "prompts": DEFAULT_PROMPTS[:1]})

# %% [markdown]
# ## The maps the panel marks: the angle sweep and the location comparison
# Computed once on a few test prompts of each kind (batched, `MAX_NEW_TOKENS` each): the refusal
# rate around the plane (rotation at the site the panel rotates at) and under ablation at each
# location, plus addition (α = 1). The panel draws its current setting on them.

# %%
MAP_PROMPTS = {kind: prompts[:4] for kind, prompts in pool.items()}
MAP_ANGLES = list(range(0, 360, 30))
common = dict(refusal_ids=analysis.refusal_ids, max_new_tokens=MAX_NEW_TOKENS, progress=False)
sweep, _ = ex.angle_sweep(model, plane, MAP_PROMPTS, MAP_ANGLES, **common)
locations, _ = ex.compare_locations(model, direction, MAP_PROMPTS, layer=layer, alpha=1.0, **common)
locations[["split", "condition", "refusal_rate"]]

# %% [markdown]
# ## Where the current setting lies
# Each of the panel's prompts counts toward its kind (a test prompt's split; an edited prompt is
# "yours"), and the share of them refused is drawn as a star: on the angle map at the rotation's
# angle, on the location comparison at the ablation's location (or addition, or none). A setting
# that is not on a map says so in that map's title.


# %%
def kind_of(prompt: str) -> str:
    return next((kind for kind, prompts in pool.items() if prompt in prompts), "yours")


def panel_rates(rows: list[dict]) -> dict[str, float]:
    """The share of the panel's prompts refused, per kind."""
    kinds: dict[str, list[bool]] = {}
    for r in rows:
        kinds.setdefault(kind_of(r["prompt"]), []).append(r["label"] == "refusal")
    return {kind: sum(refused) / len(refused) for kind, refused in kinds.items()}


def describe(settings: dict) -> str:
    mode = settings.get("mode", "none")
    return {
        "none": "unsteered",
        "ablate": f"ablate at {settings.get('location', 'all')}",
        "add": f"add {float(settings.get('alpha', 1.0)):g}·r",
        "rotate": f"rotate to {float(settings.get('angle', 0.0)):g}°",
    }[mode]


def star(kind: str) -> dict:
    color = fg.SPLIT_COLORS.get(kind, "black")
    return dict(mode="markers", name=f"now: {kind}", marker=dict(symbol="star", size=18, color=color, line_width=1))


def where_figures(settings: dict, rows: list[dict]) -> tuple[go.Figure, go.Figure]:
    """The angle map and the location comparison, each with the current setting's stars."""
    mode, now, rates = settings.get("mode", "none"), describe(settings), panel_rates(rows)
    angles = fg.angle_sweep_polar(sweep, model="organism")
    if mode == "rotate":
        theta = float(settings.get("angle", 0.0))
        for kind, rate in rates.items():
            angles.add_trace(go.Scatterpolar(theta=[theta], r=[rate], **star(kind)), 1, 1)
    angles.update_layout(title_text=f"Angle map — now: {now}" + ("" if mode == "rotate" else " (not a rotation)"))
    places = fg.location_comparison(locations, model="organism")
    condition = {"none": "none", "ablate": settings.get("location", "all"), "add": "addition"}.get(mode)
    if condition is not None:
        x = fg.CONDITION_NAMES.get(condition, condition)
        for kind, rate in rates.items():
            places.add_trace(go.Scatter(x=[x], y=[rate], offsetgroup=kind, **star(kind)), 1, 1)
    off = " (not a location)" if condition is None else " (bars: α = 1)" if mode == "add" else ""
    places.update_layout(title_text=f"Location comparison — now: {now}{off}")
    for fig in (angles, places):
        fig.update_layout(height=420, margin=dict(t=70, b=40))
    return angles, places


where_figures({"mode": "rotate", "angle": 120}, steer({"mode": "rotate", "angle": 120}))[0]


# %% [markdown]
# ## The panel
# Sliders update when released (`continuous_update=False`), so each change is one `generate` call.
# `LAST` holds the latest settings and rows, for use from code.

# %%
mode = widgets.Dropdown(options=["none", "ablate", "add", "rotate"], value="none", description="mode")
location = widgets.Dropdown(options=["all", "resid", "attn", "mlp"], value="all", description="ablate at")
alpha = widgets.FloatSlider(value=1.0, min=-2.0, max=2.0, step=0.25, description="add coef", continuous_update=False)
angle = widgets.IntSlider(value=0, min=0, max=345, step=15, description="angle °", continuous_update=False)
prompt_box = widgets.Textarea(
    value="\n".join(DEFAULT_PROMPTS),
    description="prompts",
    continuous_update=False,  # regenerate when the box loses focus, not on every keystroke
    layout=widgets.Layout(width="95%", height="110px"),
)
results = widgets.Output()
LAST: dict = {}


def current_settings() -> dict:
    return {
        "mode": mode.value,
        "location": location.value,
        "alpha": alpha.value,
        "angle": angle.value,
        "prompts": prompt_box.value.splitlines(),
    }


def render(settings: dict, rows: list[dict]) -> None:
    table = "".join(
        f"<tr><td><b>{html.escape(r['label'])}</b></td><td>{html.escape(r['prompt'][:60])}</td>"
        f"<td>{html.escape(r['response'])}</td></tr>"
        for r in rows
    )
    with results:
        results.clear_output(wait=True)
        display(HTML(f"<table><tr><th>label</th><th>prompt</th><th>response</th></tr>{table}</table>"))
        display(*where_figures(settings, rows))


def update(_change=None) -> None:
    settings = current_settings()
    rows = steer(settings)
    LAST.update(settings=settings, rows=rows)
    render(settings, rows)


for control in (mode, location, alpha, angle, prompt_box):
    control.observe(update, names="value")
update()
widgets.VBox([widgets.HBox([mode, location]), widgets.HBox([alpha, angle]), prompt_box, results])
