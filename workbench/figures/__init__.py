"""Plotly figures from the workbench's tidy tables: one function per figure, one shared style.

Each function takes a table from :mod:`workbench.experiments`, :mod:`workbench.directions`,
:mod:`workbench.planes` or :mod:`workbench.steering_math`, checks its columns (ValueError naming the
missing ones) and returns a ``go.Figure``; ``model=`` adds the model to the title. Polar plots use
the plane convention: 0° = b1 (refusal) points east, angles grow counter-clockwise toward b2.
:func:`save_figure` writes self-contained HTML and, when kaleido finds a Chromium, a PNG.

By job: :mod:`.style` (colours, names, orders, the ``workbench`` template, the notebook renderer
choice, shared helpers), :mod:`.export` (saving, the notebook PNG renderer), and the builders by
topic: :mod:`.interventions`, :mod:`.selection`, :mod:`.planes`, :mod:`.behaviours`, :mod:`.stability`. Importing the
package registers the template and the ``workbench_png`` renderer.
"""

from __future__ import annotations

from .behaviours import behaviour_bars, label_map_polar
from .export import NOTEBOOK_PNG, save_figure
from .interventions import damage_vs_effect, layer_subset_figure, location_comparison, special_cases_figure
from .planes import angle_sweep_polar, plane_projection, rotation_variants_figure
from .selection import cosine_matrix_figure, projection_histograms, selection_heatmaps
from .stability import stability_figure
from .style import (
    CONDITION_COLORS,
    CONDITION_NAMES,
    CONDITION_ORDER,
    LABEL_COLORS,
    LABEL_ORDER,
    NOTEBOOK_RENDERER,
    PNG_SIZE,
    SITE_SYMBOLS,
    SPLIT_COLORS,
    STAT_TITLES,
    STATIC_ENV,
    STATIC_RENDERER,
    TEMPLATE,
    use_notebook_renderer,
)

__all__ = [
    "TEMPLATE",
    "SPLIT_COLORS",
    "CONDITION_COLORS",
    "CONDITION_NAMES",
    "LABEL_COLORS",
    "CONDITION_ORDER",
    "LABEL_ORDER",
    "SITE_SYMBOLS",
    "STAT_TITLES",
    "location_comparison",
    "selection_heatmaps",
    "cosine_matrix_figure",
    "plane_projection",
    "angle_sweep_polar",
    "projection_histograms",
    "layer_subset_figure",
    "special_cases_figure",
    "rotation_variants_figure",
    "label_map_polar",
    "behaviour_bars",
    "stability_figure",
    "damage_vs_effect",
    "save_figure",
    "use_notebook_renderer",
    "NOTEBOOK_RENDERER",
    "STATIC_RENDERER",
    "STATIC_ENV",
    "NOTEBOOK_PNG",
    "PNG_SIZE",
]
