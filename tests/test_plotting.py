"""Profile, image and loss figures (devito_uq.inference.plotting)."""

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import summarize


def test_plots_write_png(tmp_path):
    from devito_uq.inference.plotting import plot_images, plot_loss, plot_profiles

    s = torch.randn(100, 12).cumsum(1)
    fig = plot_profiles(
        summarize(s),
        depth=torch.arange(12) * 10.0,
        samples=s[:5],
        truth=s[0],
        path=tmp_path / "p.png",
    )
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # depth increases downwards
    plot_images(
        summarize(torch.randn(20, 6, 5)), samples=torch.randn(2, 6, 5), path=tmp_path / "i.png"
    )
    plot_loss(
        {"loss": [3, 2, 1], "misfit": [1, 1, 1], "prior": [0, 0, 0], "neg_entropy": [2, 1, 0]},
        path=tmp_path / "l.png",
    )
    for name in ("p.png", "i.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InvalidShapeError, match="plot_profiles needs 1-D models"):
        plot_profiles(summarize(torch.randn(5, 2, 2)))
    with pytest.raises(InvalidArgumentError, match=r"history lacks the terms \['misfit'"):
        plot_loss({"loss": [1.0]})
