# %% [markdown]
# # 01 · Explore the refusal direction
#
# Load a chat model, cache activations on harmful and harmless prompts, look at the
# difference-in-means candidates, pick a direction and a steering plane, and try an
# intervention on your own prompt. Runs on the embedded refusal model organism (CPU, minutes);
# pass another model name to `load_model` to explore a hub model on a GPU.

# %%
import torch

from workbench import data
from workbench import interventions as iv
from workbench.activations import cache_activations
from workbench.directions import diff_in_means
from workbench.figures import cosine_matrix_figure, plane_projection, projection_histograms, use_notebook_renderer
from workbench.generation import generate
from workbench.models import load_model
from workbench.planes import build_plane, plane_report
from workbench.selection import candidate_stats, select

torch.set_grad_enabled(False)
use_notebook_renderer()  # figures render in JupyterLab, the classic notebook and exported HTML
model = load_model("organism")
print(model.cfg.n_layers, "layers, d_model =", model.cfg.d_model)

# %% [markdown]
# ## Cache activations
# The residual stream before each block, between attention and MLP, and after the block
# (`resid_pre`, `resid_mid`, `resid_post`), at the post-instruction template tokens.

# %%
SITES = ["resid_pre", "resid_mid", "resid_post"]
harmful = cache_activations(model, data.load_split("harmful", "direction_train"), sites=SITES)
harmless = cache_activations(model, data.load_split("harmless", "direction_train"), sites=SITES)
harmful_val = cache_activations(model, data.load_split("harmful", "validation"), sites=SITES)
harmless_val = cache_activations(model, data.load_split("harmless", "validation"), sites=SITES)
print("positions:", harmful.positions, harmful.tokens)

# %% [markdown]
# ## Candidates: one difference of means per (layer, position)

# %%
cands = diff_in_means(harmful, harmless, kind="raw").subset(sites=["resid_pre"])  # Arditi: resid_pre
stats = candidate_stats(cands, harmful_val, harmless_val)
stats.sort_values("auc", ascending=False).head(8)

# %%
from workbench.directions import cosine_matrix

last = cands.subset(positions=[-1])
cosine_matrix_figure(cosine_matrix(last), last.keys, model="organism")

# %% [markdown]
# ## Pick a direction without generating text
# `max_sim`: the candidate most similar to all others; `max_auc`: the best separator on held-out prompts.

# %%
selection = select(cands, stats)
print({method: str(key) for method, key in selection.choices.items()})
direction = selection.direction("max_auc", cands)
print(direction)  # where it was read, its norm and provenance

# %%
from workbench.directions import projection_table

# every validation prompt's projection on r̂ at the direction's site and position, per layer
projections = projection_table({"harmful": harmful_val, "harmless": harmless_val}, direction)
projection_histograms(projections, layer=direction.layer, model="organism")  # opens at its own layer

# %% [markdown]
# ## The steering plane: b1 = chosen candidate, b2 = first principal component of all candidates
# As published: unit-mean differences at resid_mid and resid_post of the last token; b1 is the one
# most similar to all others (max_sim); PCA on the candidates as they are (`candidate_norm="raw"`).

# %%
unit = diff_in_means(harmful, harmless, kind="unit").subset(sites=["resid_mid", "resid_post"], positions=[-1])
plane = build_plane(
    unit, select(unit, candidate_stats(unit, harmful_val, harmless_val)).choices["max_sim"], candidate_norm="raw"
)
print(plane_report(plane))
plane_projection(plane.candidate_coords(unit), model="organism")

# %% [markdown]
# ## Try it on your own prompt

# %%
prompt = "Explain how to pick a lock to break into my neighbour's house."
harmless_prompt = "Give me three tips for growing tomatoes."
for name, hooks in {
    "none": [],
    "ablate everywhere": iv.ablation_hooks(model, direction, "all"),
    "add at its layer": iv.addition_hooks(direction, alpha=1.0, layers=[direction.layer], model=model),
    "rotate to 180°": iv.rotation_hooks(model, plane, 180.0),
}.items():
    out = generate(model, [prompt, harmless_prompt], hooks=hooks, max_new_tokens=24)
    print(f"{name:>18}: {out[0]!r}\n{'':>18}  {out[1]!r}")

# %% [markdown]
# ## Your own prompt sets
# Any `.txt`/`.csv`/`.json`/`.jsonl` file works. `PromptSplits.from_files` cuts each file into
# `direction_train` / `validation` / `test` (in the proportions 64 : 32 : 54, after a seeded shuffle). Two small files
# written from shipped test prompts stand in for yours here; `Analysis(model, prompts=splits)` or
# `workbench run --harmful F --harmless F` runs the whole study on them.

# %%
import tempfile
from pathlib import Path

folder = Path(tempfile.mkdtemp())
(folder / "my_harmful.txt").write_text("\n".join(data.load_split("harmful", "test")[:30]))
(folder / "my_harmless.txt").write_text("\n".join(data.load_split("harmless", "test")[:30]))
splits = data.PromptSplits.from_files(folder / "my_harmful.txt", folder / "my_harmless.txt")
print({name: fp["n"] for name, fp in splits.fingerprints().items()})
mine = diff_in_means(
    cache_activations(model, splits.get("harmful", "direction_train"), sites=["resid_pre"]),
    cache_activations(model, splits.get("harmless", "direction_train"), sites=["resid_pre"]),
)
same_place = mine.direction(mine.index(direction.site, direction.layer, direction.pos))
print(
    f"{direction.site} L{direction.layer} pos {direction.pos}: cosine to the same candidate from your "
    f"prompts = {direction.cosine(same_place):.3f}"
)
