"""Figures from run directories (matplotlib, imported only when a figure is drawn).

* :func:`plot_run`: each task's test accuracy over training (the paper's Fig. 2 layout) and the
  hidden-weight histograms per layer after each task.
* :func:`plot_comparison`: several runs on the same stream side by side.
* :func:`plot_first_task`: the first task's accuracy after each task, one line per setting (examples).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaspike.app.config import DEFAULT_RULE
from metaspike.app.models import optimizer_kind
from metaspike.app.tables import last_task_column
from metaspike.continual.results import load_run
from metaspike.diagnostics import HISTOGRAM_QUANTITIES
from metaspike.files import atomic_open

__all__ = ["plot_run", "plot_comparison", "plot_first_task", "pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend; a clear ImportError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("figures need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (a temporary file renamed into place, as every file metaspike
    writes: a symbolic link planted at ``path`` is replaced, never written through) and close it.

    Example:
        >>> import tempfile
        >>> fig = pyplot().figure()
        >>> save_figure(fig, Path(tempfile.mkdtemp()) / "empty.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    pyplot().close(fig)
    return Path(path)


#: The hidden-weight figure shows at most this many layers (the first ones).
MAX_HISTOGRAM_LAYERS = 16
#: At most this many snapshots of the hidden weights are drawn per layer (the first, the last and evenly between).
MAX_HISTOGRAM_SNAPSHOTS = 12
#: A value shown in a figure's title is cut to this many characters.
MAX_TITLE_PART = 80

#: Beyond this many tasks the accuracy curves are coloured by task index with a colour bar instead of a legend.
LEGEND_TASKS = 10
_TASK_COLORMAP = "viridis"


def _draw_curves(ax, run: dict[str, Any], title: str) -> None:
    curves, names = run["curves"], run["task_names"]
    if not curves:
        return
    x = [row["global_epoch"] for row in curves]
    many = len(names) > LEGEND_TASKS
    colors = _task_colors(len(names)) if many else [None] * len(names)
    for j, name in enumerate(names):
        # the evaluations that measured this task (an evaluation budget skips some): drawn joined, with markers
        # where some were skipped, so that a task measured once is still seen
        points = [(epoch, row[name]) for epoch, row in zip(x, curves) if math.isfinite(row[name])]
        sparse = len(points) < len(curves)
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[j], lw=0.8 if many else None,
                marker="o" if sparse else None, ms=2.5 if many else 4, label=f"task {j + 1}" if len(names) > 1 else "test")
    epochs = run["config"].get("epochs")
    if isinstance(epochs, int) and epochs > 0 and 1 < len(names) <= LEGEND_TASKS:
        for boundary in range(epochs, min(int(max(x)), epochs * len(names)), epochs):
            ax.axvline(boundary + 0.5, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    if many:  # a long stream: tasks coloured by index, one colour bar instead of a legend per task
        plt = pyplot()
        bar = plt.colorbar(plt.cm.ScalarMappable(plt.Normalize(1, len(names)), _TASK_COLORMAP), ax=ax)
        bar.set_label("task")
    else:
        ax.legend(fontsize=8, loc="lower left")


def _task_colors(tasks: int) -> list[Any]:
    """One colour per task, by its index along :data:`_TASK_COLORMAP`."""
    colormap = pyplot().get_cmap(_TASK_COLORMAP)
    return [colormap(j / max(tasks - 1, 1)) for j in range(tasks)]


def _shown(value: Any) -> str:
    """A value of a results file as a title shows it: at most :data:`MAX_TITLE_PART` characters (a file from outside
    may hold a string of any length, which the figure would lay out for minutes)."""
    text = str(value)
    return text if len(text) <= MAX_TITLE_PART else text[:MAX_TITLE_PART - 3] + "..."


def _run_title(config: dict[str, Any], run_dir: str | os.PathLike) -> str:
    """``scenario`` (with a split's class mode), ``model``, and the metaplasticity ``meta`` and the consolidation rule
    (where it is not the default) where the model's optimizer uses them."""
    model = config.get("model", "?")
    if not isinstance(model, str):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: 'model' must be a string, got {_shown(repr(model))}")
    try:
        uses_meta = optimizer_kind(model) == "metaplastic-adam"
    except ValueError:  # a model kind this version does not know: show what the config says
        uses_meta = True
    rule = config.get("rule")
    rule_part = f", rule {_shown(rule)}" if uses_meta and rule not in (None, DEFAULT_RULE) else ""
    meta = f", meta = {_shown(config.get('meta', '?'))}{rule_part}" if uses_meta else ""
    mode = config.get("split_mode", "task")
    scenario = _shown(config.get("scenario", "run")) + (f" ({_shown(mode)})" if config.get("scenario") == "split"
                                                        and mode != "task" else "")
    return f"{scenario}, {_shown(model)}{meta}"


#: The axis label of each kind of histogram (:data:`metaspike.diagnostics.HISTOGRAM_QUANTITIES`; files written before
#: the kind was recorded hold hidden weights).
_HISTOGRAM_LABELS = {HISTOGRAM_QUANTITIES["hidden"]: "hidden weight $W_h$",
                     HISTOGRAM_QUANTITIES["latent"]: r"BiMU latent weight $\lambda$",
                     HISTOGRAM_QUANTITIES["mean"]: r"MESU mean $\mu$", HISTOGRAM_QUANTITIES["float"]: "weight"}


def _histogram_label(histogram: dict[str, Any]) -> str:
    """The x-axis label of a layer's histogram (a file's ``quantity`` it does not know: the hidden weights')."""
    quantity = histogram.get("quantity")
    hidden = _HISTOGRAM_LABELS[HISTOGRAM_QUANTITIES["hidden"]]
    return _HISTOGRAM_LABELS.get(quantity, hidden) if isinstance(quantity, str) else hidden


def _drawn_snapshots(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most :data:`MAX_HISTOGRAM_SNAPSHOTS` histogram snapshots, evenly spaced, the first and the last among them
    (a long stream keeps one per evaluation: thousands of lines would be a wall, and take minutes to draw)."""
    if len(snapshots) <= MAX_HISTOGRAM_SNAPSHOTS:
        return snapshots
    last, count = len(snapshots) - 1, MAX_HISTOGRAM_SNAPSHOTS
    return [snapshots[round(k * last / (count - 1))] for k in range(count)]


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Draw ``accuracy_curves.png`` and ``hidden_weights.png`` into ``out`` (default: ``run_dir``, which may then be
    read-only); return their paths.

    A malformed result file raises one line of ``ValueError`` naming it (see :func:`load_run`).

    Example:
        >>> plot_run("runs/permuted-meta10")  # doctest: +SKIP
    """
    plt = pyplot()
    run = load_run(run_dir)
    path = Path(run_dir if out is None else out)
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _draw_curves(ax, run, _run_title(run["config"], run_dir))
    fig.tight_layout()
    save_figure(fig, path / "accuracy_curves.png")
    written.append(path / "accuracy_curves.png")
    if run["histograms"]:
        layers = list(run["histograms"][-1]["layers"])[:MAX_HISTOGRAM_LAYERS]  # (a figure, not a wall)
        fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
        for k, (ax, layer) in enumerate(zip(axes[0], layers)):
            for snapshot in _drawn_snapshots(run["histograms"]):
                h = snapshot["layers"][layer]
                centres = [(a + b) / 2 for a, b in zip(h["edges"][:-1], h["edges"][1:])]
                ax.plot(centres, h["counts"], label=f"after task {snapshot['after_task']}")
            ax.set_yscale("log")
            shape = run["histograms"][-1]["layers"][layer].get("shape")
            ax.set_title(f"layer {k + 1}" + (f" ({shape[1]}→{shape[0]})" if shape and len(shape) == 2 else ""), fontsize=10)
            ax.set_xlabel(_histogram_label(run["histograms"][-1]["layers"][layer]))
        axes[0][0].set_ylabel("count")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, path / "hidden_weights.png")
        written.append(path / "hidden_weights.png")
    return written


def plot_comparison(
    run_dirs: Sequence[str | os.PathLike],
    labels: Sequence[str],
    out: str | os.PathLike,
    final: Sequence[tuple[Sequence[float], Sequence[float]]] | None = None,
) -> Path:
    """One figure: accuracy curves of each run (top, its seed in the title: a comparison over seeds draws the curves
    of its first) and accuracy per task after the last task (bottom).

    ``final`` gives, per setting, the mean and std of that accuracy over seeds (bars with error
    bars); without it the bars show the runs in ``run_dirs``.

    Example:
        >>> plot_comparison(["runs/a", "runs/b"], ["meta=0", "meta=10"], "runs/compare.png")  # doctest: +SKIP
    """
    plt = pyplot()
    runs = [load_run(d) for d in run_dirs]
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.4), squeeze=False)
    for k, (run, label) in enumerate(zip(runs, labels)):
        seed = run["config"].get("seed")
        _draw_curves(axes[0][k], run, label if seed is None else f"{label} (seed {seed})")
    bottom = plt.subplot2grid((2, len(runs)), (1, 0), colspan=len(runs), fig=fig)
    for ax in axes[1]:
        ax.remove()
    n_tasks = len(runs[0]["task_names"])
    bars = final if final is not None else [(run["matrix"][-1], [math.nan] * n_tasks) for run in runs]
    grouped_bars(bottom, [f"task {j + 1}" for j in range(n_tasks)], list(labels), [list(zip(*bar)) for bar in bars])
    bottom.set_ylabel("accuracy after the last task (%)" + (" mean ± std" if final is not None else ""))
    bottom.set_ylim(0, 100)
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def _error_bars(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """The std of each ``(mean, std)`` as an error bar; none (0) where no spread was measured (``nan``)."""
    return [std if math.isfinite(std) else 0.0 for _, std in pairs]


def grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str],
                 values: Sequence[Sequence[tuple[float, float]]]) -> None:
    """Bars of ``values[k][i] = (mean, std)`` for series ``k`` in group ``i`` (std ``nan``: no error bar).

    Example:
        >>> fig, ax = pyplot().subplots()
        >>> grouped_bars(ax, ["task 1", "task 2"], ["m=0", "m=5"], [[(50, 1), (90, 2)], [(80, 1), (88, math.nan)]])
    """
    width = 0.8 / len(series)
    for k, (label, bars) in enumerate(zip(series, values)):
        means = [mean for mean, _ in bars]
        errors = _error_bars(bars)
        ax.bar([i + k * width for i in range(len(groups))], means, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=20 if len(groups) > 6 else 0)
    ax.legend(fontsize=8)


def plot_forgetting_by_model(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Forgetting by neuron model, one bar per meta value (mean ± std over seeds), from comparison rows.

    Example:
        >>> plot_forgetting_by_model(rows, "runs/forgetting.png")  # doctest: +SKIP
    """
    plt = pyplot()
    neurons = list(dict.fromkeys(r["neuron"] for r in rows))
    metas = list(dict.fromkeys(r["meta"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(neurons)), 4))
    cells = {(r["neuron"], r["meta"]): r["forgetting"] for r in rows}
    missing = (math.nan, math.nan)  # a model run at fewer m (the kinds without one run once): no bar
    values = [[cells.get((n, m), missing) for n in neurons] for m in metas]
    labels = {None: "its own synapses (BiMU, MESU, SGD: no m)", 0: "no metaplasticity"}
    grouped_bars(ax, neurons, [labels[m] if m in labels else f"meta = {m:g}" for m in metas], values)
    ax.set_ylabel("forgetting (accuracy points)")
    ax.set_title("forgetting by neuron model")
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def plot_tradeoff(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """The stability-plasticity frontier: memory (first task after the last) against plasticity (last task),
    one curve per neuron model through its meta values, mean ± std over seeds.

    Example:
        >>> plot_tradeoff(rows, "runs/tradeoff.png")  # doctest: +SKIP
    """
    plt = pyplot()
    last = last_task_column(rows)
    fig, ax = plt.subplots(figsize=(6.4, 5))
    for neuron in dict.fromkeys(r["neuron"] for r in rows):
        mine = sorted((r for r in rows if r["neuron"] == neuron), key=lambda r: r["meta"] or 0.0)  # (None: no m)
        xs, ys = [r[last] for r in mine], [r["task 1"] for r in mine]
        line = ax.errorbar([x for x, _ in xs], [y for y, _ in ys],
                           xerr=_error_bars(xs), yerr=_error_bars(ys), marker="o", capsize=3, label=neuron)
        for r, (x, _), (y, _) in zip(mine, xs, ys):
            if r["meta"] is not None:
                ax.annotate(f"{r['meta']:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                            color=line[0].get_color())
    ax.set_xlabel("plasticity: last task's accuracy (%)")
    ax.set_ylabel("memory: first task's accuracy after the last task (%)")
    ax.set_title("stability-plasticity trade-off (labels: meta)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def plot_first_task(matrices: dict[str, Sequence[Sequence[float]]], out: str | os.PathLike) -> Path:
    """Accuracy on the first task after each task (column 0 of each accuracy matrix), one line per setting.

    Example:
        >>> plot_first_task({"meta = 0": [[90, 10], [40, 91]], "meta = 30": [[89, 9], [80, 88]]}, "forgetting.png")  # doctest: +SKIP
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    tasks = max(len(matrix) for matrix in matrices.values())
    for name, matrix in matrices.items():
        ax.plot(range(1, len(matrix) + 1), [row[0] for row in matrix], marker="o", label=f"task 1, {name}")
    ax.set_xticks(range(1, tasks + 1), [f"after task {i}" for i in range(1, tasks + 1)])
    ax.set_ylabel("accuracy on task 1 (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out
