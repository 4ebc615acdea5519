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
from workbench import interventions as iv
from workbench.figures import use_notebook_renderer
from workbench.generation import generate
from workbench.labels import heuristic_label
from workbench.models import load_model
from workbench.pipeline import Analysis

torch.set_grad_enabled(False)
use_notebook_renderer()  # figures render in JupyterLab, the classic notebook and exported HTML
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
# ## Where the current setting lies
# The steering plane as a polar plot, b1 (the refusal direction) at 0°. Rotation marks its target
# angle; ablation and addition are not rotations, so they mark b1 itself (ablation: removed,
# addition: pushed along it).


# %%
def setting_figure(settings: dict) -> go.Figure:
    mode = settings.get("mode", "none")
    fig = go.Figure(go.Scatterpolar(r=[0, 1], theta=[0, 0], mode="lines+text", text=["", "b1"], name="b1"))
    if mode == "rotate":
        angle = float(settings.get("angle", 0.0))
        fig.add_trace(go.Scatterpolar(r=[0, 1], theta=[0, angle], mode="lines+markers", name=f"rotate to {angle:g}°"))
    elif mode == "add":
        alpha = float(settings.get("alpha", 1.0))
        fig.add_trace(
            go.Scatterpolar(
                r=[0, min(abs(alpha), 1.0)],
                theta=[0, 0 if alpha >= 0 else 180],
                mode="lines+markers",
                name=f"add {alpha:g}·r",
            )
        )
    elif mode == "ablate":
        fig.add_trace(go.Scatterpolar(r=[0], theta=[0], mode="markers", name=f"ablate at {settings.get('location')}"))
    fig.update_layout(
        width=360, height=320, margin=dict(l=30, r=30, t=40, b=30), title=f"setting: {mode}", showlegend=True
    )
    fig.update_polars(radialaxis=dict(visible=False, range=[0, 1.1]), angularaxis=dict(direction="counterclockwise"))
    return fig


setting_figure({"mode": "rotate", "angle": 120})

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
        display(setting_figure(settings))


def update(_change=None) -> None:
    settings = current_settings()
    rows = steer(settings)
    LAST.update(settings=settings, rows=rows)
    render(settings, rows)


for control in (mode, location, alpha, angle, prompt_box):
    control.observe(update, names="value")
update()
widgets.VBox([widgets.HBox([mode, location]), widgets.HBox([alpha, angle]), prompt_box, results])
