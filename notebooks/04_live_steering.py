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
from workbench.config import RunContext
from workbench.generation import generate
from workbench.intervention import KINDS, from_settings
from workbench.labels import heuristic_label
from workbench.models import load_model
from workbench.pipeline import Analysis
from workbench.sites import GATES, LOCATIONS

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
# `settings`: `mode` (any intervention kind of `workbench.intervention.KINDS`: `none`, `ablate`,
# `add`, `rotate`, ...), `location` (ablation: `all`, `resid`, `attn`, `mlp`), `alpha` (addition
# coefficient, at the direction's own layer), `angle` (degrees, rotation to that angle in the plane),
# `gate` (rotation: `off`, `b1`, `b2`) and `prompts`. Each kind reads the settings it takes and
# becomes one intervention value; `steer` runs it and returns one row per prompt.


# %%
EDITED: dict = {}  # weight edits (orthogonalize) build a model copy once per value


def intervention_of(settings: dict):
    return from_settings(settings.get("mode", "none"), settings)


def steer(settings: dict) -> list[dict]:
    prompts = [p.strip() for p in settings.get("prompts", DEFAULT_PROMPTS) if p.strip()]
    if not prompts:
        return []
    value = intervention_of(settings)
    if value not in EDITED:
        EDITED[value] = value.edit(model, direction, plane)
    steered = EDITED[value]
    hooks = value.hooks(steered, direction, plane)
    responses = generate(steered, prompts, hooks=hooks, max_new_tokens=MAX_NEW_TOKENS)
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
ctx = RunContext(max_new_tokens=MAX_NEW_TOKENS, progress=False, refusal_ids=tuple(analysis.refusal_ids))
sweep, _ = ex.angle_sweep(model, plane, MAP_PROMPTS, MAP_ANGLES, ctx=ctx)
locations, _ = ex.compare_locations(model, direction, MAP_PROMPTS, layer=layer, alpha=1.0, ctx=ctx)
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


def location_of(value) -> tuple[str | None, str]:
    """The location comparison's condition for ``value`` (the same value, or the only condition of its
    kind, then noted) and a note for the title."""
    same = [name for name, c in ex.CONDITIONS.items() if c == value]
    if same:
        return same[0], ""
    kin = [name for name, c in ex.CONDITIONS.items() if type(c) is type(value)]
    if len(kin) == 1:
        return kin[0], f" (bars: {ex.CONDITIONS[kin[0]].label})"
    return None, " (not a location)"


def star(kind: str) -> dict:
    color = fg.SPLIT_COLORS.get(kind, "black")
    return dict(mode="markers", name=f"now: {kind}", marker=dict(symbol="star", size=18, color=color, line_width=1))


def where_figures(settings: dict, rows: list[dict]) -> tuple[go.Figure, go.Figure]:
    """The angle map and the location comparison, each with the current setting's stars."""
    value, rates = intervention_of(settings), panel_rates(rows)
    now, theta = value.label, getattr(value, "angle", None)  # a rotation has an angle on the map
    angles = fg.angle_sweep_polar(sweep, model="organism")
    if theta is not None:
        for kind, rate in rates.items():
            angles.add_trace(go.Scatterpolar(theta=[theta], r=[rate], **star(kind)), 1, 1)
    angles.update_layout(title_text=f"Angle map — now: {now}" + ("" if theta is not None else " (not a rotation)"))
    places = fg.location_comparison(locations, model="organism")
    condition, off = location_of(value)
    if condition is not None:
        for kind, rate in rates.items():
            x = ex.CONDITIONS[condition].label
            places.add_trace(go.Scatter(x=[x], y=[rate], offsetgroup=kind, **star(kind)), 1, 1)
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
mode = widgets.Dropdown(options=list(KINDS), value="none", description="mode")
location = widgets.Dropdown(options=list(LOCATIONS), value="all", description="ablate at")
gate = widgets.Dropdown(options=list(GATES), value="off", description="gate")
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
        "gate": gate.value,
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


for control in (mode, location, alpha, angle, gate, prompt_box):
    control.observe(update, names="value")
update()
widgets.VBox([widgets.HBox([mode, location]), widgets.HBox([alpha, angle, gate]), prompt_box, results])
