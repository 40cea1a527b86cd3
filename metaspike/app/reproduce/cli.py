"""The ``metaspike reproduce`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from metaspike.app.reproduce.experiments import EXPERIMENTS
from metaspike.app.reproduce.scales import SCALES

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``reproduce NAME [--scale cpu|paper] [--seeds ...] [--data-dir DIR] [--device D] [--out DIR]
    [--quiet]`` and
    ``reproduce --resume DIR``.

    Names and scales are checked by :func:`run`, so a wrong one ends with one ``metaspike: error:`` line.

    Example:
        >>> parser = argparse.ArgumentParser(prog="metaspike")
        >>> _ = add_parser(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["reproduce", "--resume", "runs/reproduce-fig2-cpu"]).name is None
        True
    """
    names = ", ".join(f"{name} ({e.what})" for name, e in EXPERIMENTS.items())
    parser = subparsers.add_parser("reproduce", help="reproduce a figure or table of the paper",
                                   description=f"Experiments: {names}.")
    parser.add_argument("name", metavar="NAME", nargs="?", help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--scale", default=None, help=f"one of {', '.join(SCALES)}: cpu runs offline, in minutes "
                        "(long-stream: about 30 a seed); "
                        "paper uses the paper's datasets (from --data-dir) and sizes (default: cpu)")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the full datasets (default: $METASPIKE_DATA or ~/.cache/metaspike/data)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds; tables give mean ± std (default: 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] for the training runs (default: cpu; fig5ab's "
                        "quadratic task runs on the CPU)")
    parser.add_argument("--out", default=None, help="results folder (default: runs)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="finish a stopped reproduction in its folder DIR, with the settings it started with")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _mean_std(mean: float, std: float) -> str:
    """``mean±std``, the mean alone where one seed gave no spread (NaN), ``n/a`` where the metric is undefined (a
    task's forgetting before any later task), as ``metaspike train`` writes it.

    Two decimals, more where a mean below 0.1 needs them to show two significant digits (fig5cde's smallest loss
    increase, about 0.001, read 0.00).

    Example:
        >>> _mean_std(51.0, float("nan")), _mean_std(51.0, 1.25), _mean_std(float("nan"), float("nan"))
        ('51.00', '51.00±1.25', 'n/a')
        >>> _mean_std(0.00123, 0.0004)
        '0.0012±0.0004'
    """
    if not math.isfinite(mean):
        return "n/a"
    places = 2 if mean == 0 or abs(mean) >= 0.1 else 1 - math.floor(math.log10(abs(mean)))
    return f"{mean:.{places}f}" if math.isnan(std) else f"{mean:.{places}f}±{std:.{places}f}"


def run(args: argparse.Namespace) -> None:
    """Run (or, with ``--resume``, finish) the experiment named in ``args`` and print where its table and figure are."""
    from metaspike.app.reproduce import reproduce, resume_reproduction
    from metaspike.app.runs import refuse_several_processes, results_folder

    refuse_several_processes("reproduce")
    settings = [flag for flag, value in (("NAME", args.name), ("--scale", args.scale), ("--seeds", args.seeds),
                                         ("--data-dir", args.data_dir), ("--device", args.device),
                                         ("--out", args.out)) if value is not None]
    if args.resume is not None:
        if settings:
            raise ValueError(f"--resume finishes a reproduction with the settings it started with (in its "
                             f"reproduction.json); remove {', '.join(settings)}")
        root, rows = resume_reproduction(args.resume, progress=not args.quiet)
    elif args.name is None:
        raise ValueError(f"reproduce needs an experiment NAME (one of {', '.join(EXPERIMENTS)}) or --resume DIR")
    else:
        scale = "cpu" if args.scale is None else args.scale  # (an empty --scale is refused, as any unknown one)
        out = results_folder("runs" if args.out is None else args.out)
        root, rows = reproduce(args.name, scale, args.seeds or [1], out, progress=not args.quiet,
                               data_dir=args.data_dir, device="cpu" if args.device is None else args.device)
    for row in rows:
        cells = [f"{k}={_mean_std(*v)}" if isinstance(v, tuple) else f"{k}={v}" for k, v in row.items() if k != "setting"]
        print(f"{row['setting']}: {'  '.join(cells)}")
    print(f"\nresults: {root}  ({', '.join(_outputs(root))})")


def _outputs(root: Path) -> list[str]:
    """The tables and figures a reproduction wrote, relative to its folder (some write one per part).

    Example:
        >>> _outputs(Path("no-such-folder"))
        []
    """
    def in_a_run(relative: Path) -> bool:  # (a run folder's own curves and matrix are not the reproduction's)
        return any((root / folder / "config.json").exists() for folder in relative.parents)

    found = sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in (".csv", ".png"))
    return [str(p) for p in found if not in_a_run(p)]
