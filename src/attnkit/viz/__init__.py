"""See attention: capture a model's attention maps, analyse them, draw them.

::

    from attnkit.viz import load_for_viz, capture, rollout, plots

    model, tok = load_for_viz("runs/tiny/best")          # attnkit checkpoint or HF directory
    cap = capture(model, tok, "The cat sat on the mat.")  # AttentionCapture
    R = rollout(cap.weights["self"])                      # (L, L), Abnar & Zuidema 2020
    plots.save_figure(plots.plot_grid(cap), "grid.png")

Modules: :mod:`~attnkit.viz.capture` (one forward pass with hooks, memory budget, to_disk),
:mod:`~attnkit.viz.result` (:class:`AttentionCapture`: JSON, safetensors),
:mod:`~attnkit.viz.bertviz` (:func:`to_bertviz`: the arguments of bertviz's views),
:mod:`~attnkit.viz.analysis` (rollout, flow, entropy, distance, head similarity),
:mod:`~attnkit.viz.plots` (matplotlib figures, imported lazily),
:mod:`~attnkit.viz.sites` (the attention modules of a model, memory estimate),
:mod:`~attnkit.viz.loading` (:func:`load_for_viz`), :mod:`~attnkit.viz.tokens` (display strings),
:mod:`~attnkit.viz.cli` (``attnkit viz``), :mod:`~attnkit.viz.web` / :mod:`~attnkit.viz.server`
(the interactive explorer).
"""

from attnkit.viz.analysis import (
    attention_flow,
    entropy,
    head_similarity,
    head_stats,
    mean_distance,
    rollout,
    top_attended,
)
from attnkit.viz.bertviz import to_bertviz
from attnkit.viz.capture import attention_sites, capture, estimate_bytes, model_info
from attnkit.viz.loading import load_for_viz
from attnkit.viz.result import KINDS, AttentionCapture

__all__ = [
    "KINDS", "AttentionCapture", "capture", "estimate_bytes", "attention_sites", "model_info",
    "load_for_viz", "rollout", "attention_flow", "entropy", "mean_distance", "top_attended",
    "head_similarity", "head_stats", "to_bertviz",
]
