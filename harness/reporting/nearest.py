"""``nearest.png``: the generator's samples most similar to a training image, each beside that image.

A readable grid for the memorisation report of ``bench generate``: one pair per cell (sample left,
its nearest training image right), titled with the similarity, the training image's id and whether
the sample counts as a near-copy (similarity above the held-out threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from harness.reporting.plots import new_figure, save_figure

PAIR_COLUMNS = 4


def nearest_pairs_figure(
    samples: torch.Tensor,
    train_images: torch.Tensor,
    similarity: torch.Tensor,
    nearest: torch.Tensor,
    train_ids: Sequence[str],
    threshold: float,
    n: int = 8,
) -> Figure:
    """The ``n`` samples most similar to their nearest training image, as (sample, nearest) pairs.

    ``samples`` and ``train_images`` are N x 1 x S x S uint8; ``similarity[i]`` and ``nearest[i]``
    are sample i's best similarity and the index of that training image.
    """
    order = torch.argsort(similarity, descending=True)[: max(1, n)].tolist()
    columns = min(PAIR_COLUMNS, len(order))
    rows = -(-len(order) // columns)
    fig = new_figure(3.3 * columns, 1.95 * rows + 0.5)
    cells = fig.subfigures(rows, columns, squeeze=False, wspace=0.03, hspace=0.04)
    for k, index in enumerate(order):
        cell = cells[k // columns][k % columns]
        cell.set_facecolor("0.95")  # a pair sits on its own panel
        left, right = cell.subplots(1, 2)
        partner = int(nearest[index])
        for ax, image, name in ((left, samples[index], f"sample {index}"),
                                (right, train_images[partner], f"train {train_ids[partner]}")):  # fmt: skip
            ax.imshow(np.asarray(image[0]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=8)
        value = float(similarity[index])
        copy = value > threshold
        title = f"similarity {value:.3f}" + (" — near-copy" if copy else "")
        left.set_title(title, fontsize=9, loc="left", color="firebrick" if copy else "black")
        for ax in (left, right):
            for spine in ax.spines.values():
                spine.set_edgecolor("firebrick" if copy else "0.7")
                spine.set_linewidth(2 if copy else 0.8)
    fig.suptitle(
        f"Most similar samples (left) and their nearest training images (right); near-copy above {threshold:.3f} "
        "(held-out threshold)",
        fontsize=10,
    )
    return fig


def write_nearest_pairs(out_dir: Path, name: str = "nearest", **kwargs) -> list[Path]:
    """Draw :func:`nearest_pairs_figure` and write ``name.png`` and ``name.pdf`` into ``out_dir``."""
    return save_figure(nearest_pairs_figure(**kwargs), Path(out_dir), name)
