"""The registry of paper experiments and their settings at each scale.

``scale="paper"`` uses the paper's datasets, sizes and training length (24,000 updates per task:
40 epochs of 600 batches of 100 on 60,000 images); ``scale="cpu"`` runs on the offline datasets in
minutes on 2 cores. Because ``|W_h|`` grows with the number of updates, the metaplasticity
strengths are mapped to the CPU scale by one factor, ``CPU_META_FACTOR = 10 / 1.35`` (measured on
permuted mnist5k with ~800 updates per task: m = 10 keeps task 1 at ~66 % where m = 0 keeps ~24 %,
the role the paper's 1.35 plays at 24,000 updates), so the paper's m in {0, 0.5, 1, 1.35, 1.5, 2.5}
become {0, 3.7, 7.41, 10, 11.11, 18.52}. The factor is fixed here, independent of the CLI default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metaspike.app.config import RunConfig, default_meta
from metaspike.app.reproduce import long_stream
from metaspike.app.reproduce.continual import TABLE_LABELS, Method, compare_methods
from metaspike.app.reproduce.scales import CPU_META_FACTOR, SCALES, meta_at
from metaspike.app.tables import comparison_csv
from metaspike.checks import unknown_name
from metaspike.continual.baselines import EWC_LAMBDA
from metaspike.files import atomic_write_text

__all__ = ["Experiment", "EXPERIMENTS", "SCALES", "PAPER", "CPU_META_FACTOR", "meta_at", "get_experiment"]

SI_C = 1.0  # not calibrated against the paper (its SI strength is not restated here)
#: The CPU-scale permuted stream (fig2, table1): 3 permutations of the offline ``digits`` set (1,437
#: training images), one hidden layer of 256, 10 epochs of 29 batches of 50 per task: ~16 s per run
#: on 2 shared cores, so 3 seeds x 6 methods fit in minutes.
CPU_PERMUTED = RunConfig(datasets=("digits",), tasks=3, epochs=10, hidden=(256,), batch_size=50)

#: The CPU-scale method comparison (table1) runs on the stream of metaspike's main job: 3 permutations of
#: ``mnist5k`` (4,000 training images), 784-512-512-10, 20 epochs of 40 batches of 100 per task: ~15 s per
#: run. On the smaller ``digits`` stream every consolidating method, random consolidation included, lands
#: within a point of the others and joint training is not an upper bound: too easy to separate them.
CPU_TABLE1 = RunConfig(datasets=("mnist5k",), tasks=3, epochs=20, hidden=(512, 512))

#: The CPU-scale pair of datasets of fig3 (MNIST <-> Fashion-MNIST in the paper): ``mnist5k`` then ``digits``, and
#: back, 10 epochs each, 784-256-256-10.
CPU_SEQUENCE = RunConfig(scenario="sequence", datasets=("mnist5k", "digits"), epochs=10, hidden=(256, 256))

#: The paper's reported numbers beside which ours are written, by experiment and setting. Laborieux
#: et al., Nat. Commun. 12, 2549 (2021): Fig. 2 (permuted MNIST), Table 1 (method comparison),
#: Fig. 3 (MNIST <-> Fashion-MNIST), the Fashion-MNIST stream, Fig. 5. No value is filled in: none
#: could be checked against the paper text here, so every entry is "n/a" rather than a number
#: quoted from memory. Fill in a setting as ``"label": "97.1"`` once checked.
PAPER: dict[str, dict[str, str]] = {"fig2": {}, "table1": {}, "fig3": {}, "stream": {}, "fig5ab": {}, "fig5cde": {}}


@dataclass(frozen=True)
class Experiment:
    """A paper experiment: ``run(scale, seeds, root, progress, data_dir, device)`` writes its table and figure into
    ``root``; ``keeps_runs``: whether it keeps a folder per training run there (``metaspike plot`` draws one), or
    computes its table anew from nothing it keeps (``fig5ab``, ``fig5cde``)."""

    name: str
    what: str
    run: Callable[[str, Sequence[int], Path, bool, str | None, str], list[dict[str, Any]]]
    keeps_runs: bool = True


def _continual(name: str, title: str, configs: Callable[[str], list[tuple[str, RunConfig, list[Method]]]]) -> Callable:
    def run(scale: str, seeds: Sequence[int], root: Path, progress: bool, data_dir: str | None,
            device: str) -> list[dict[str, Any]]:
        rows = []
        for part, config, methods in configs(scale):
            config = replace(config, data_dir=data_dir, device=device)
            where = root / part if part else root
            where.mkdir(exist_ok=True)
            for row in compare_methods(config, methods, seeds, where, PAPER[name], f"{title} {part}".strip(), progress):
                rows.append({**row, "setting": f"{part} {row['setting']}".strip()})
        if where != root:  # several parts (e.g. both directions of fig3): one table of all of them
            atomic_write_text(root / "table.csv", comparison_csv(rows, TABLE_LABELS))
        return rows

    return run


def _fig2(scale: str) -> list[tuple[str, RunConfig, list[Method]]]:
    paper = scale == "paper"
    # paper scale: the authors' published command (6 tasks, 4096-4096, 40 epochs per task, weight decay 1e-7)
    config = (RunConfig(datasets=("mnist",), tasks=6, epochs=40, hidden=(4096, 4096), weight_decay=1e-7)
              if paper else CPU_PERMUTED)
    metas = [meta_at(scale, m) for m in (0.0, 0.5, 1.0, 1.35)]
    methods = [Method(f"BNN m={m:g}", meta=m) for m in metas]
    methods += [Method("DNN m=0", dnn=True), Method(f"DNN m={metas[-1]:g}", meta=metas[-1], dnn=True)]
    return [("", config, methods)]


def _table1_methods(scale: str) -> list[Method]:
    # at CPU scale, also metaspike's default: one m per layer, chosen by benchmarks/sweep_default.py
    default = [Method("metaplastic BNN m=" + "/".join(f"{m:g}" for m in default_meta(3)), meta=default_meta(3))]
    return (default if scale == "cpu" else []) + [
        Method(f"metaplastic BNN m={meta_at(scale, 1.35):g}", meta=meta_at(scale, 1.35)),
        Method(f"BNN + EWC lambda={EWC_LAMBDA:g}", baseline="ewc", strength=EWC_LAMBDA),
        Method(f"BNN + SI c={SI_C:g}", baseline="si", strength=SI_C),
        Method(f"BNN + random consolidation lambda={EWC_LAMBDA:g}", baseline="random", strength=EWC_LAMBDA),
        Method("BNN m=0", meta=0.0),
        Method("BNN joint training", joint=True),
    ]


def _table1(scale: str) -> list[tuple[str, RunConfig, list[Method]]]:
    if scale == "paper":
        return [(f"hidden{h}", RunConfig(datasets=("mnist",), tasks=6, epochs=40, hidden=(h, h)), _table1_methods(scale))
                for h in (512, 1024, 2048, 4096)]
    return [("", CPU_TABLE1, _table1_methods(scale))]


def _fig3(scale: str) -> list[tuple[str, RunConfig, list[Method]]]:
    # paper scale: 50 epochs per dataset (Fig. 1a) with 4096-4096 (the authors' published command)
    config = (RunConfig(scenario="sequence", datasets=("mnist", "fashion-mnist"), epochs=50, hidden=(4096, 4096))
              if scale == "paper" else CPU_SEQUENCE)
    m = meta_at(scale, 1.5)
    return [("-to-".join(order), replace(config, datasets=order), [Method("BNN m=0"), Method(f"BNN m={m:g}", meta=m)])
            for order in (config.datasets, config.datasets[::-1])]


def _stream(scale: str) -> list[tuple[str, RunConfig, list[Method]]]:
    paper = scale == "paper"
    config = RunConfig(scenario="stream", datasets=("fashion-mnist" if paper else "mnist5k",), tasks=60 if paper else 10,
                       epochs=20 if paper else 10, hidden=(1024, 1024) if paper else (256, 256))
    m = meta_at(scale, 2.5)
    return [("", config, [Method("BNN m=0"), Method(f"BNN m={m:g}", meta=m), Method("BNN joint training", joint=True)])]


def _fig5ab(scale: str, seeds: Sequence[int], root: Path, progress: bool, data_dir: str | None,
            device: str) -> list[dict[str, Any]]:
    from metaspike.app.reproduce.quadratic import reproduce_fig5ab

    # (a quadratic task of 100 binary weights: the CPU whatever the device)
    return reproduce_fig5ab(scale, seeds, root, PAPER["fig5ab"])


def _fig5cde(scale: str, seeds: Sequence[int], root: Path, progress: bool, data_dir: str | None,
             device: str) -> list[dict[str, Any]]:
    from metaspike.app.reproduce.flips import reproduce_fig5cde

    return reproduce_fig5cde(scale, seeds, root, PAPER["fig5cde"], data_dir, device)


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("fig2", "permuted MNIST, BNN with several m and the DNN variant",
                   _continual("fig2", "Fig. 2: permuted tasks", _fig2)),
        Experiment("table1", "metaplastic BNN vs EWC, SI, random consolidation, m=0 and joint training",
                   _continual("table1", "Table 1: permuted tasks", _table1)),
        Experiment("fig3", "MNIST -> Fashion-MNIST and back (CPU: mnist5k <-> digits)",
                   _continual("fig3", "Fig. 3:", _fig3)),
        Experiment("stream", "one dataset learned as a stream of subsets",
                   _continual("stream", "stream of subsets", _stream)),
        Experiment("fig5ab", "quadratic binary task: the optimum moves, metaplastic weights keep their signs", _fig5ab,
                   keeps_runs=False),
        Experiment("fig5cde", "loss increase when flipping weights, binned by |W_h|", _fig5cde, keeps_runs=False),
        Experiment("long-stream", "100 permuted tasks, one pass at batch size 1: BiMU, MESU, the 2021 rule, EWC-Online, SI, SGD, plain BNN", long_stream.run),
    )
}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a clear error lists the names otherwise.

    Example:
        >>> get_experiment("table1").name
        'table1'
    """
    if not isinstance(name, str) or name not in EXPERIMENTS:  # (a str first: a list read from a file is unhashable)
        raise ValueError(unknown_name("experiment", name, EXPERIMENTS))
    return EXPERIMENTS[name]
