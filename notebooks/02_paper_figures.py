# %% [markdown]
# # 02 · The studies' figures, from library calls
#
# Every figure of `workbench run`, rebuilt step by step: (1) the location comparison of the
# reproduction, (2–4) candidates, selection statistics and the steering plane, (5) the angle sweep,
# (6) projections, (7) layer subsets, (8) the "special cases" figure. Prompt counts are small here
# so the notebook runs in minutes on a CPU; raise `N` for publication-quality numbers.

# %%
import torch

from workbench import data
from workbench import experiments as ex
from workbench import figures as fg
from workbench.config import RunContext
from workbench.directions import cosine_matrix, projection_table
from workbench.interventions import layer_subsets
from workbench.models import load_model
from workbench.pipeline import Analysis
from workbench.steering_math import special_cases

torch.set_grad_enabled(False)
fg.use_notebook_renderer()  # figures render in JupyterLab, the classic notebook and exported HTML
N, TOKENS = 8, 24
model = load_model("organism")
analysis = Analysis(model)  # cached stages: activations, candidates, selection, plane
direction, plane = analysis.direction(), analysis.plane()
ctx = RunContext(max_new_tokens=TOKENS, refusal_ids=tuple(analysis.refusal_ids))  # how the experiments run
test = {kind: data.load_split(kind, "test")[:N] for kind in ("harmful", "harmless")}
print(direction, plane, sep="\n")

# %% [markdown]
# ## 1 · Ablation location: residual only, attention only, MLP only, everywhere

# %%
locations, per_prompt = ex.compare_locations(model, direction, test, layer=direction.layer, ctx=ctx)
fg.location_comparison(locations, per_prompt, model="organism")

# %%
locations[["split", "condition", "refusal_rate", "logodds", "kl"]]

# %% [markdown]
# ## 2 · Selection statistics per layer and position

# %%
selection = analysis.selection
fg.selection_heatmaps(selection.table, choices=selection.choices, model="organism")

# %% [markdown]
# ## 3 · How similar are the candidates across layers and sites?

# %%
last = analysis.candidates.subset(positions=[-1])
fg.cosine_matrix_figure(cosine_matrix(last), last.keys, model="organism")

# %% [markdown]
# ## 4 · The candidates in the steering plane

# %%
fg.plane_projection(plane.candidate_coords(analysis.plane_candidates), model="organism")

# %% [markdown]
# ## 5 · Angular steering around the circle

# %%
sweep, _ = ex.angle_sweep(model, plane, test, list(range(0, 360, 30)), site="post_gain", ctx=ctx)
fg.angle_sweep_polar(sweep, model="organism")

# %% [markdown]
# ## 6 · Harmful vs harmless projections per layer

# %%
val = {"harmful": analysis.activations["harmful_val"], "harmless": analysis.activations["harmless_val"]}
fg.projection_histograms(projection_table(val, direction), layer=direction.layer, model="organism")

# %% [markdown]
# ## 7 · How many blocks does ablation need?

# %%
subsets, _ = ex.layer_subset_sweep(
    model,
    direction,
    test["harmful"],
    subsets=layer_subsets(model.cfg.n_layers, (8, 16, 24)),
    ctx=ctx,
)
fg.layer_subset_figure(subsets, model="organism")

# %% [markdown]
# ## 8 · Addition and ablation are rotations in each token's own plane

# %%
acts = analysis.activations["harmful_val"].get(direction.site, direction.layer, direction.pos)
fg.special_cases_figure(
    special_cases(acts, direction.vector, [-80.0, -40.0, -10.0, 10.0, 40.0, 80.0]), model="organism"
)
