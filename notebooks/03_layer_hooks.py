# %% [markdown]
# # 03 · One layer up close
#
# The hooks of a single block, their shapes, the refusal direction's projection at each site,
# what each intervention does to this layer's activations, and the attention pattern of its heads.

# %%
import torch

from workbench import data
from workbench import interventions as iv
from workbench.chat import format_prompts, tokenize
from workbench.figures import use_notebook_renderer
from workbench.models import load_model
from workbench.pipeline import Analysis
from workbench.sites import SITES, hook_name

torch.set_grad_enabled(False)
use_notebook_renderer()  # figures render in JupyterLab, the classic notebook and exported HTML
model = load_model("organism")
analysis = Analysis(model)
direction = analysis.direction()
LAYER = direction.layer
print("direction from", direction.site, "layer", LAYER, "position", direction.pos)

# %% [markdown]
# ## The hooks of block `LAYER` and their shapes

# %%
prompts = [data.load_split("harmful", "test")[0], data.load_split("harmless", "test")[0]]
tokens, mask = tokenize(model.tokenizer, format_prompts(model.tokenizer, prompts))
_, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: n.startswith(f"blocks.{LAYER}."))
for name, value in cache.items():
    print(f"{name:45s} {tuple(value.shape)}")

# %% [markdown]
# ## Projection on the refusal direction at each site of this block (last prompt token)

# %%
import pandas as pd

unit = direction.unit
rows = []
for site in SITES:
    proj = cache[hook_name(site, LAYER)][:, -1].float() @ unit
    rows.append({"site": site, "harmful": float(proj[0]), "harmless": float(proj[1])})
pd.DataFrame(rows)

# %% [markdown]
# ## What each intervention does to this layer's residual stream
# The projection of `resid_post` on r̂ (last token), per intervention.

# %%
plane = analysis.plane()
interventions = {
    "none": [],
    "ablate resid": iv.ablation_hooks(model, direction, "resid"),
    "ablate attn": iv.ablation_hooks(model, direction, "attn"),
    "ablate mlp": iv.ablation_hooks(model, direction, "mlp"),
    "ablate all": iv.ablation_hooks(model, direction, "all"),
    "add": iv.addition_hooks(direction, layers=[LAYER], model=model),
    "rotate 180°": iv.rotation_hooks(model, plane, 180.0),
}
rows = []
for name, hooks in interventions.items():
    with model.hooks(fwd_hooks=hooks):
        _, c = model.run_with_cache(tokens, attention_mask=mask, names_filter=[hook_name("resid_post", LAYER)])
    proj = c[hook_name("resid_post", LAYER)][:, -1].float() @ unit
    rows.append({"intervention": name, "harmful": float(proj[0]), "harmless": float(proj[1])})
table = pd.DataFrame(rows)
table

# %%
import plotly.express as px

px.bar(
    table.melt(id_vars="intervention", var_name="prompt", value_name="projection"),
    x="intervention",
    y="projection",
    color="prompt",
    barmode="group",
    title=f"Projection of resid_post[{LAYER}] on the refusal direction under each intervention",
)

# %% [markdown]
# ## Rotation, addition and ablation as rotations (on this layer's real activations)

# %%
from workbench.figures import special_cases_figure
from workbench.steering_math import special_cases

acts = cache[hook_name("resid_pre", LAYER)][:, -4:].reshape(-1, model.cfg.d_model)
special_cases_figure(special_cases(acts, direction.vector, [-40.0, -10.0, 10.0, 40.0, 160.0]), model="organism")

# %% [markdown]
# ## Attention patterns of this block's heads (circuitsvis)

# %%
import circuitsvis as cv

str_tokens = model.to_str_tokens(tokens[0][mask[0].bool()])
pattern = cache[f"blocks.{LAYER}.attn.hook_pattern"][0][:, mask[0].bool()][:, :, mask[0].bool()]
cv.attention.attention_patterns(tokens=str_tokens, attention=pattern)
