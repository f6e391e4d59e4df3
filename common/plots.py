"""Plots as files: matplotlib on the display-free Agg backend, PNGs written atomically and reproducibly."""

from __future__ import annotations

from pathlib import Path

from common.files import atomic_write


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically, without matplotlib's version stamp (same bytes on rerun), and
    close it."""
    path = Path(path)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=100, metadata={"Software": None})
    pyplot().close(fig)
    return path
