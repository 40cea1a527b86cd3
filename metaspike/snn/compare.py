"""Compare neuron models on one task stream, each with and without metaplasticity.

Every (neuron model, meta, seed) trains the same stream (same seed → same permutations) through
the continual trainer with binary synapses (``metaspike.binarize``) and :class:`MetaplasticAdam`.
The comparison folder holds one run folder per run, ``comparison.csv`` / ``comparison.txt``
(final accuracy per task, ACC, BWT, FWT, forgetting, wall time; mean ± std over seeds) and
``forgetting.png`` (forgetting by neuron model, one bar per meta value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import metaspike
from metaspike.continual.results import RunDirectory, atomic_write_text, unique_directory
from metaspike.continual.scenarios import Scenario, make_scenario
from metaspike.continual.trainer import ContinualResult
from metaspike.experiment import (
    RunConfig,
    build_trainer,
    check_settings,
    comparison_csv,
    format_table,
    parse_meta,
    summarize_results,
    versions,
)
from metaspike.snn.neurons import NetSpec, build_neuron_model, check_neurons

__all__ = ["SNN_DEFAULTS", "DEFAULT_SNN_META", "DEFAULT_NEURONS", "train_neuron", "compare_neurons", "compare_from_args"]

#: CPU defaults of the spiking comparison (measured to finish all neuron models, meta 0 and
#: DEFAULT_SNN_META, 3 permuted mnist5k tasks, in under 30 minutes on 2 cores).
SNN_DEFAULTS: dict[str, Any] = {"hidden": (256,), "epochs": 2}
#: Metaplasticity strength of the spiking comparison at laptop scale (benchmarks/snn_forgetting.py).
DEFAULT_SNN_META = 50.0
DEFAULT_NEURONS = ("bnn", "leaky", "synaptic", "alpha", "lapicque", "self-recurrent", "norse-lif", "norse-lsnn")


def train_neuron(
    neuron: str,
    config: RunConfig,
    scenario: Scenario,
    spec: NetSpec = NetSpec(),
    out: str | Path | None = None,
    progress: bool = False,
) -> ContinualResult:
    """Train one neuron model (binary synapses, ``config.meta[0]``) on ``scenario``.

    With ``out``, the run is written to a new run folder under it.

    Example:
        >>> s = make_scenario("permuted", ["digits"], tasks=2)
        >>> r = train_neuron("self-recurrent", RunConfig(hidden=(32,), epochs=1, meta=(5.0,)), s, NetSpec(num_steps=2))
        >>> len(r.matrix)
        2
    """
    check_neurons([neuron])
    torch.manual_seed(config.seed)
    spec = replace(spec, hidden=config.hidden, input_shape=scenario.input_shape, classes=scenario.num_classes)
    model = metaspike.binarize(build_neuron_model(neuron, spec))
    log = None
    if out is not None:
        record = {**config.to_dict(), "neuron": neuron, "spec": spec.__dict__, "versions": versions()}
        log = RunDirectory.create(out, f"{neuron}-meta{config.meta[0]:g}-seed{config.seed}", record,
                                  {"name": scenario.name, **scenario.definition})
    result = build_trainer(config, model, progress).fit(scenario, log=log)
    if log is not None:
        log.write_metrics(result, complete=True)
    return result


def _row(neuron: str, meta: float, results: list[ContinualResult]) -> dict[str, Any]:
    return {"setting": f"{neuron} meta={meta:g}", "neuron": neuron, "meta": meta, "runs": len(results),
            **summarize_results(results)}


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    from metaspike.plots import pyplot

    plt = pyplot()
    neurons = list(dict.fromkeys(r["neuron"] for r in rows))
    metas = list(dict.fromkeys(r["meta"] for r in rows))
    width = 0.8 / len(metas)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(neurons)), 4))
    for k, meta in enumerate(metas):
        values = [next(r for r in rows if r["neuron"] == n and r["meta"] == meta)["forgetting"] for n in neurons]
        ax.bar([i + k * width for i in range(len(neurons))], [v[0] for v in values], width,
               yerr=[v[1] for v in values], label="no metaplasticity" if meta == 0 else f"meta = {meta:g}")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(neurons))], neurons, rotation=20)
    ax.set_ylabel("forgetting (accuracy points)")
    ax.set_title("forgetting by neuron model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_neurons(
    base: RunConfig,
    neurons: Sequence[str] = DEFAULT_NEURONS,
    metas: Sequence[float] = (0.0, DEFAULT_SNN_META),
    seeds: Sequence[int] = (1,),
    spec: NetSpec = NetSpec(),
    out: str | Path = "runs",
    progress: bool = True,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train every neuron model with every ``meta`` (and seed) on the same stream; write table and figure.

    Returns ``(comparison folder, rows)``; each row has ``setting``, ``neuron``, ``meta``, ``runs``
    and ``(mean, std)`` of each task's final accuracy, ACC, BWT, FWT, forgetting and seconds.

    Example:
        >>> path, rows = compare_neurons(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)),
        ...     ["bnn", "self-recurrent"], [0, 20], out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    if not neurons:
        raise ValueError("--neurons needs at least one neuron model")
    check_neurons(list(neurons))
    check_settings(metas, seeds)
    root = unique_directory(out, f"compare-neurons-{base.scenario}-{'-'.join(base.datasets)}")
    scenarios = {seed: make_scenario(base.scenario, base.datasets, base.tasks, seed, base.data_dir, base.split_mode)
                 for seed in seeds}
    rows = []
    for neuron in neurons:
        for m in metas:
            results = [train_neuron(neuron, replace(base, meta=(float(m),), seed=int(seed)), scenarios[seed], spec,
                                    root, progress) for seed in seeds]
            rows.append(_row(neuron, float(m), results))
    table = format_table(rows, len(results[0].matrix[-1]))
    atomic_write_text(root / "comparison.csv", comparison_csv(rows, labels=("neuron", "meta", "runs")))
    atomic_write_text(root / "comparison.txt", table + "\n")
    RunDirectory(root).write_json("comparison.json", {"config": base.to_dict(), "spec": spec.__dict__,
                                                      "seeds": list(seeds), "rows": rows})
    _plot(rows, root / "forgetting.png")
    return root, rows


def compare_from_args(args: Any, make_config: Any) -> None:
    """``metaspike compare --neurons ...``: run :func:`compare_neurons` and print its table.

    ``make_config(args, metas, seed)`` is the CLI's RunConfig builder; ``--hidden`` and ``--epochs``
    not given take :data:`SNN_DEFAULTS`.
    """
    if args.hidden is None:
        args.hidden = list(SNN_DEFAULTS["hidden"])
    if args.epochs is None:
        args.epochs = SNN_DEFAULTS["epochs"]
    settings = [parse_meta(text) for text in args.meta] if args.meta is not None else [(0.0,), (DEFAULT_SNN_META,)]
    if any(len(setting) != 1 for setting in settings):
        raise ValueError("--neurons compares one meta value per setting, not one per layer")
    metas = [setting[0] for setting in settings]
    check_neurons(list(args.neurons))
    base = make_config(args, [metas[0]], args.seeds[0])
    path, rows = compare_neurons(base, args.neurons, metas, args.seeds, out=args.out, progress=not args.quiet)
    print()
    print(f"final test accuracy (%) after the last task, mean ± std over seeds {args.seeds}:")
    print(format_table(rows, sum(1 for key in rows[0] if key.startswith("task "))))
    print(f"\nresults: {path}  (comparison.csv, comparison.txt, forgetting.png, one run folder per run)")
