"""attnkit.viz.plots: figures render and save as PNG / SVG."""

import struct

import pytest
import torch

from attnkit.models import CausalLM, CausalLMConfig, Seq2SeqConfig, Seq2SeqLM
from attnkit.viz import analysis, plots
from attnkit.viz.capture import capture

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # IHDR chunk
    return width, height


def _svg_ok(path):
    text = path.read_text()
    assert "<svg" in text and text.rstrip().endswith("</svg>")


@pytest.fixture(scope="module")
def cap():
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig.preset("gpt2-tiny")).eval()
    return capture(model, None, list(range(10, 22)))


def test_plot_head_png_and_svg(cap, tmp_path):
    tokens = [f"tok{i}" for i in range(12)]
    fig = plots.plot_head(cap.head("self", 1, 2), tokens, title="layer 1, head 2")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert ax.get_xticklabels()[0].get_rotation() == 90
    assert len(fig.axes) == 2  # the map and its colorbar
    w, h = _png_size(plots.save_figure(fig, tmp_path / "head.png"))
    assert w > 300 and h > 300
    _svg_ok(plots.save_figure(fig, tmp_path / "head.svg"))
    with pytest.raises(ValueError, match=".png or .svg"):
        plots.save_figure(fig, tmp_path / "head.jpg")


def test_tick_font_shrinks_with_length():
    small = plots.plot_head(torch.full((4, 4), 0.25), list("abcd"))
    big = plots.plot_head(torch.full((90, 90), 1 / 90), [str(i) for i in range(90)])
    assert (big.axes[0].get_xticklabels()[0].get_fontsize()
            < small.axes[0].get_xticklabels()[0].get_fontsize())


def test_plot_grid_rollout_stats(cap, tmp_path):
    grid = plots.plot_grid(cap)
    assert len(grid.axes) == 2 * 4
    w, h = _png_size(plots.save_figure(grid, tmp_path / "grid.png"))
    assert w > h > 100  # 4 heads across, 2 layers down

    r = analysis.rollout(cap.weights["self"])
    _png_size(plots.save_figure(plots.plot_rollout(r, cap.tokens), tmp_path / "rollout.png"))
    bar = plots.plot_rollout(r[-1], cap.tokens, "last position")
    _svg_ok(plots.save_figure(bar, tmp_path / "rollout_row.svg"))

    st = analysis.head_stats(cap.weights["self"])
    fig = plots.plot_head_stats(st["entropy"], st["distance"])
    assert len(fig.axes) == 4  # two heatmaps, two colorbars
    w, h = _png_size(plots.save_figure(fig, tmp_path / "stats.png"))
    assert w > h
    _svg_ok(plots.save_figure(fig, tmp_path / "stats.svg"))


def test_grid_of_cross_attention(tmp_path):
    torch.manual_seed(0)
    model = Seq2SeqLM(Seq2SeqConfig.preset("t5-tiny", vocab_size=64)).eval()
    c = capture(model, None, [3, 4, 5, 6, 7], decoder_text=[0, 8, 9], heads=[0, 1])
    fig = plots.plot_grid(c, "cross")
    assert len(fig.axes) == 2 * 2
    q, k = c.axes("cross")
    head = plots.plot_head(c.head("cross", 0, 1), q, k)
    assert [t.get_text() for t in head.axes[0].get_yticklabels()] == q
    _png_size(plots.save_figure(head, tmp_path / "cross.png"))


def test_pyplot_untouched(cap):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.plot_grid(cap)
    plots.plot_head(cap.head("self", 0, 0))
    assert plt.get_fignums() == before  # figures never register with pyplot (nothing leaks)
