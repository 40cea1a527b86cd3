"""The two scales of the paper's experiments and how metaplasticity strengths map between them.

``scale="paper"`` uses the paper's datasets, sizes and training length; ``scale="cpu"`` runs on the
offline datasets in minutes. ``|W_h|`` grows with the number of updates, so the CPU scale (about 800
updates per task instead of 24,000) multiplies every paper strength by ``CPU_META_FACTOR = 10 / 1.35``.
"""

from __future__ import annotations

__all__ = ["SCALES", "CPU_META_FACTOR", "meta_at"]

SCALES = ("cpu", "paper")
CPU_META_FACTOR = 10.0 / 1.35


def meta_at(scale: str, paper_meta: float) -> float:
    """The metaplasticity strength used at ``scale`` for the paper's ``paper_meta``.

    Example:
        >>> round(meta_at("cpu", 1.35), 6), meta_at("paper", 1.35)
        (10.0, 1.35)
    """
    return paper_meta if scale == "paper" else round(paper_meta * CPU_META_FACTOR, 2)
