"""The ``metaspike reproduce`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import argparse
import math

from metaspike.app.reproduce.experiments import EXPERIMENTS
from metaspike.app.reproduce.scales import SCALES

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``reproduce NAME [--scale cpu|paper] [--seeds ...] [--data-dir DIR] [--out DIR] [--quiet]``.

    Names and scales are checked by :func:`run`, so a wrong one ends with one ``metaspike: error:`` line.

    Example:
        >>> parser = argparse.ArgumentParser(prog="metaspike")
        >>> _ = add_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["reproduce", "fig5ab"]).scale
        'cpu'
    """
    names = ", ".join(f"{name} ({e.what})" for name, e in EXPERIMENTS.items())
    parser = subparsers.add_parser("reproduce", help="reproduce a figure or table of the paper",
                                   description=f"Experiments: {names}.")
    parser.add_argument("name", metavar="NAME", help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--scale", default="cpu", help=f"one of {', '.join(SCALES)}: cpu runs offline in minutes; "
                        "paper uses the paper's datasets (from --data-dir) and sizes (default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the full datasets (default: $METASPIKE_DATA or ~/.cache/metaspike/data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds; tables give mean ± std (default: %(default)s)")
    parser.add_argument("--out", default="runs", help="results folder (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _mean_std(mean: float, std: float) -> str:
    """``mean±std``, or the mean alone where one seed gave no spread (NaN).

    Example:
        >>> _mean_std(51.0, float("nan")), _mean_std(51.0, 1.25)
        ('51.00', '51.00±1.25')
    """
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f}±{std:.2f}"


def run(args: argparse.Namespace) -> None:
    """Run the experiment named in ``args`` and print where its table and figure are."""
    from metaspike.app.reproduce import reproduce

    root, rows = reproduce(args.name, args.scale, args.seeds, args.out, progress=not args.quiet, data_dir=args.data_dir)
    for row in rows:
        cells = [f"{k}={_mean_std(*v)}" if isinstance(v, tuple) else f"{k}={v}" for k, v in row.items() if k != "setting"]
        print(f"{row['setting']}: {'  '.join(cells)}")
    print(f"\nresults: {root}  (table.csv, figure)")
