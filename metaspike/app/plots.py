"""Figures from run directories (matplotlib, imported only when a figure is drawn).

* :func:`plot_run`: each task's test accuracy over training (the paper's Fig. 2 layout) and the
  hidden-weight histograms per layer after each task.
* :func:`plot_comparison`: several runs on the same stream side by side.
* :func:`plot_first_task`: the first task's accuracy after each task, one line per setting (examples).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from metaspike.app.config import DEFAULT_RULE
from metaspike.app.models import optimizer_kind
from metaspike.app.tables import last_task_column
from metaspike.checks import shown
from metaspike.continual.results import load_run
from metaspike.diagnostics import HISTOGRAM_QUANTITIES
from metaspike.files import atomic_open

__all__ = ["plot_run", "plot_comparison", "plot_first_task", "pyplot", "save_figure", "series_style"]


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
#: At most this many tasks' accuracy curves are drawn (the first, the last and evenly between, of those measured).
MAX_DRAWN_TASKS = 200
_TASK_COLORMAP = "viridis"


def _nothing_to_draw(run: dict[str, Any], key: str, name: str) -> str | None:
    """Why the file ``name`` of the run folder ``run`` (:func:`load_run`) gives nothing to draw where ``run[key]``,
    read from it, is empty (the file is missing, or holds nothing); ``None`` where it holds something."""
    if run[key]:
        return None
    file = Path(run["path"]) / name
    return f"{file} {'holds nothing to draw' if file.exists() else 'is missing (moved or deleted?)'}"


def _no_layers(run: dict[str, Any]) -> str | None:
    """Why the histograms of the run folder ``run`` (:func:`load_run`, which checks that every snapshot has the same
    layers) give no figure where they hold no layer: what a run writes for a model without weight matrices (a
    user's model of bare parameters), whose figure of zero columns matplotlib refuses; ``None`` where they hold one."""
    if run["histograms"][-1]["layers"]:
        return None
    return f"{Path(run['path']) / 'hidden_weights.json'} holds no layers (the model has no weight matrices)"


def _check_curves(run: dict[str, Any]) -> None:
    """One ``ValueError`` naming ``curves.csv`` where the run folder ``run`` has no curves to draw: a blank figure
    would pass for a drawn one."""
    why = _nothing_to_draw(run, "curves", "curves.csv")
    if why is not None:
        raise ValueError(f"{why}: each task's accuracy over training is drawn from it")


def _draw_curves(ax, run: dict[str, Any], title: str) -> None:
    curves, names = run["curves"], run["task_names"]
    x = [row["global_epoch"] for row in curves]
    many = len(names) > LEGEND_TASKS
    colors = _task_colors(len(names)) if many else [None] * len(names)
    measured = [j for j, name in enumerate(names) if any(math.isfinite(row[name]) for row in curves)]
    for j in _evenly_chosen(measured, MAX_DRAWN_TASKS):  # (a long stream's thousands: a wall, drawn for minutes)
        # the evaluations that measured this task (an evaluation budget skips some): drawn joined, with markers
        # where some were skipped, so that a task measured once is still seen
        name = names[j]
        points = [(epoch, row[name]) for epoch, row in zip(x, curves) if math.isfinite(row[name])]
        sparse = len(points) < len(curves) or len(points) == 1  # (a line of one point is not drawn: its marker is)
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[j], lw=0.8 if many else None,
                marker="o" if sparse else None, ms=2.5 if many else 4, label=f"task {j + 1}" if len(names) > 1 else "test")
    epochs = run["config"].get("epochs")
    if isinstance(epochs, int) and epochs > 0 and 1 < len(names) <= LEGEND_TASKS:
        for boundary in range(epochs, min(int(max(x)), epochs * len(names)), epochs):
            ax.axvline(boundary + 0.5, color="0.8", lw=0.8, zorder=0)
    trained = {row.get("task") for row in curves}  # (a stream of one epoch a task: its epochs count tasks)
    ax.set_xlabel("task (one epoch each)" if epochs == 1 and len(trained) > 1 else "epoch")
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
    r"""A value of a results file as a title shows it: at most :data:`MAX_TITLE_PART` characters (a file from outside
    may hold a string of any length, which the figure would lay out for minutes), a character no text encoding holds
    (a lone surrogate, which JSON spells ``\ud800``) as its escape, and ``$`` as itself, not as the start of the
    mathematics matplotlib would parse (both failed inside matplotlib).

    Example:
        >>> print(_shown("bnn\ud800 $x^$"))
        bnn\ud800 \$x^\$
    """
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8").replace("$", r"\$")
    return text if len(text) <= MAX_TITLE_PART else text[:MAX_TITLE_PART - 3] + "..."


def _run_title(config: dict[str, Any], run_dir: str | os.PathLike) -> str:
    """``scenario`` (with a split's class mode), ``model``, and the metaplasticity ``meta`` and the consolidation rule
    (where it is not the default) where the model's optimizer uses them; a reproduction's float DNN or joint run
    (its ``"method"``, :data:`~metaspike.app.runs.BUILT_BY_REPRODUCE`) says so, not what its settings describe."""
    model = config.get("model", "?")
    if not isinstance(model, str):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: 'model' must be a string, got {shown(model)}")
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    try:
        uses_meta = optimizer_kind(model) == "metaplastic-adam" and not method.get("dnn")
    except ValueError:  # a model kind this version does not know: show what the config says
        uses_meta = True
    if method.get("dnn"):
        model = "float DNN"
    rule = config.get("rule")
    rule_part = f", rule {_shown(rule)}" if uses_meta and rule not in (None, DEFAULT_RULE) else ""
    meta = f", meta = {_shown(config.get('meta', '?'))}{rule_part}" if uses_meta else ""
    meta += ", all tasks at once" if method.get("joint") else ""
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


def _evenly_chosen(items: list[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, evenly spaced, the first and the last among them (a long stream's histogram
    snapshots or task curves: thousands of lines would be a wall, and take minutes to draw).

    Example:
        >>> _evenly_chosen(list(range(10)), 4), _evenly_chosen([1, 2], 4)
        ([0, 3, 6, 9], [1, 2])
    """
    if len(items) <= count:
        return items
    last = len(items) - 1
    return [items[round(k * last / (count - 1))] for k in range(count)]


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """Draw ``accuracy_curves.png`` and ``hidden_weights.png`` into ``out`` (default: ``run_dir``, which may then be
    read-only); return their paths.

    A malformed result file raises one line of ``ValueError`` naming it (see :func:`load_run`), and so does a missing
    or empty ``curves.csv``, which the curves are drawn from; without ``hidden_weights.json`` (written at a task's end:
    a run stopped in its first task has its epochs' curves only) the histograms are not drawn, and a warning line
    (standard error) names the file.

    Example:
        >>> plot_run("runs/permuted-meta10")  # doctest: +SKIP
    """
    plt = pyplot()
    run = load_run(run_dir, first_task_going=True)
    _check_curves(run)
    path = Path(run_dir if out is None else out)
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _draw_curves(ax, run, _run_title(run["config"], run_dir))
    fig.tight_layout()
    save_figure(fig, path / "accuracy_curves.png")
    written.append(path / "accuracy_curves.png")
    why = (f"{Path(run_dir) / 'hidden_weights.json'} is written at a task's end, and this run has not ended its first "
           "task" if not run["matrix"] else
           _nothing_to_draw(run, "histograms", "hidden_weights.json") or _no_layers(run))
    if why is not None:
        print(f"metaspike: warning: hidden_weights.png not drawn: {why}", file=sys.stderr)
        return written
    layers = list(run["histograms"][-1]["layers"])[:MAX_HISTOGRAM_LAYERS]  # (a figure, not a wall)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for k, (ax, layer) in enumerate(zip(axes[0], layers)):
        for snapshot in _evenly_chosen(run["histograms"], MAX_HISTOGRAM_SNAPSHOTS):
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
    of its first) and accuracy per task after the last task (bottom, the legend beside it).

    ``final`` gives, per setting, the mean and std of that accuracy over seeds (bars with error
    bars; std ``nan`` where one seed measured no spread: no error bars, and the axis says "one seed"); without it
    the bars show the runs in ``run_dirs``.

    Example:
        >>> plot_comparison(["runs/a", "runs/b"], ["meta=0", "meta=10"], "runs/compare.png")  # doctest: +SKIP
    """
    plt = pyplot()
    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        _check_curves(run)
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs) + LEGEND_WIDTH, 6.4), squeeze=False)
    for k, (run, label) in enumerate(zip(runs, labels)):
        seed = run["config"].get("seed")
        _draw_curves(axes[0][k], run, label if seed is None else f"{label} (seed {seed})")
    bottom = plt.subplot2grid((2, len(runs)), (1, 0), colspan=len(runs), fig=fig)
    for ax in axes[1]:
        ax.remove()
    n_tasks = len(runs[0]["task_names"])
    bars = final if final is not None else [(run["matrix"][-1], [math.nan] * n_tasks) for run in runs]
    values = [list(zip(*bar)) for bar in bars]
    grouped_bars(bottom, [f"task {j + 1}" for j in range(n_tasks)], list(labels), values)
    spread = any(_has_spread(series) for series in values)
    bottom.set_ylabel("accuracy after the last task (%)\n" + ("mean ± std over seeds" if spread else "one seed"))
    bottom.set_ylim(0, 100)
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


#: Inches a figure is widened by for a legend beside its axes (one never drawn over the data).
LEGEND_WIDTH = 2.4
#: A legend beside its axes, at their top right.
_LEGEND_BESIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}


class SeriesStyle(NamedTuple):
    """How one series of a figure is drawn: colour, and marker (curves) or hatch (bars), and line style (curves)."""

    color: tuple[float, float, float, float]
    marker: str
    hatch: str | None
    linestyle: str


#: What tells apart series beyond the 10 colours of matplotlib's ``tab10``: a marker and a line style for a curve, a
#: hatch for a bar (one per further 10 series; the line styles turn one further after every 10 × 8 curves).
_SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SERIES_HATCHES = (None, "//", "..", "xx", "\\\\", "oo", "--", "++")
_SERIES_LINESTYLES = ("-", "--", ":", "-.")
_SERIES_COLOURS = 10


def series_style(k: int) -> SeriesStyle:
    """The style of series ``k`` (from 0) of a figure with several: the ``tab10`` colours in turn, then the next marker
    and line style, or hatch, for every further 10 series (a curve of the eleventh colour is dashed, not only marked
    with squares a few pixels wide), so that no two series look the same: up to 80 bars (a bar has no line style) and
    320 curves per figure.

    Example:
        >>> [(s.marker, s.hatch, s.linestyle) for s in (series_style(0), series_style(9), series_style(10))]
        [('o', None, '-'), ('o', None, '-'), ('s', '//', '--')]
        >>> series_style(0).color == series_style(10).color != series_style(1).color
        True
    """
    shape = k // _SERIES_COLOURS
    return SeriesStyle(color=pyplot().get_cmap("tab10")(k % _SERIES_COLOURS),
                       marker=_SERIES_MARKERS[shape % len(_SERIES_MARKERS)],
                       hatch=_SERIES_HATCHES[shape % len(_SERIES_HATCHES)],
                       linestyle=_SERIES_LINESTYLES[(shape + shape // len(_SERIES_MARKERS)) % len(_SERIES_LINESTYLES)])


def _has_spread(pairs: Sequence[tuple[float, float]]) -> bool:
    """Whether any ``(mean, std)`` has a measured spread (a finite std: more than one seed)."""
    return any(math.isfinite(std) for _, std in pairs)


def _error_bars(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """The std of each ``(mean, std)`` as an error bar; none (0) where no spread was measured (``nan``)."""
    return [std if math.isfinite(std) else 0.0 for _, std in pairs]


def grouped_bars(ax: Any, groups: Sequence[str], series: Sequence[str],
                 values: Sequence[Sequence[tuple[float, float]]]) -> None:
    """Bars of ``values[k][i] = (mean, std)`` for series ``k`` in group ``i`` (std ``nan``: no error bar), each series
    in its own :func:`series_style`, the legend beside the axes (widen the figure by :data:`LEGEND_WIDTH`).

    Example:
        >>> fig, ax = pyplot().subplots()
        >>> grouped_bars(ax, ["task 1", "task 2"], ["m=0", "m=5"], [[(50, 1), (90, 2)], [(80, 1), (88, math.nan)]])
    """
    width = 0.8 / len(series)
    for k, (label, bars) in enumerate(zip(series, values)):
        style = series_style(k)
        ax.bar([i + k * width for i in range(len(groups))], [mean for mean, _ in bars], width,
               yerr=_error_bars(bars) if _has_spread(bars) else None, capsize=3, label=label, color=style.color,
               hatch=style.hatch, edgecolor="white" if style.hatch else None, linewidth=0)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=20 if len(groups) > 6 else 0)
    ax.legend(fontsize=8, **_LEGEND_BESIDE)


def plot_forgetting_by_model(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Forgetting by neuron model, one bar per meta value (mean ± std over seeds), from comparison rows.

    Example:
        >>> plot_forgetting_by_model(rows, "runs/forgetting.png")  # doctest: +SKIP
    """
    plt = pyplot()
    neurons = list(dict.fromkeys(r["neuron"] for r in rows))
    metas = list(dict.fromkeys(r["meta"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(neurons)) + LEGEND_WIDTH, 4))
    cells = {(r["neuron"], r["meta"]): r["forgetting"] for r in rows}
    missing = (math.nan, math.nan)  # a model run at fewer m (the kinds without one run once): no bar
    values = [[cells.get((n, m), missing) for n in neurons] for m in metas]
    labels = {None: "its own synapses (BiMU, MESU, SGD: no m)", 0: "no metaplasticity"}
    # (a model's rule, where a comparison ran several, under its name: "leaky\ncascade")
    grouped_bars(ax, [n.replace(" ", "\n") for n in neurons], [labels[m] if m in labels else f"meta = {m:g}"
                                                                for m in metas], values)
    ax.set_ylabel("forgetting (accuracy points)")
    ax.set_title("forgetting by neuron model")
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out)
    return out


def _labelled(mine: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of one model's curve (sorted by meta) whose meta is written beside its point: the curve's two ends
    and, where the rows carry ACC, the point of best ACC (a model without an m has none)."""
    swept = [r for r in mine if r["meta"] is not None]
    if not swept:
        return []
    chosen = {0, len(swept) - 1}
    scored = [k for k, r in enumerate(swept) if "ACC" in r and math.isfinite(r["ACC"][0])]
    if scored:
        chosen.add(max(scored, key=lambda k: swept[k]["ACC"][0]))
    return [swept[k] for k in sorted(chosen)]


#: Distances (points) from its data point at which a label is tried, nearest first, each in every direction of
#: :data:`_LABEL_DIRECTIONS` (the first clears the point's marker).
_LABEL_DISTANCES = (4.0, 8.0, 14.0, 24.0, 36.0, 52.0, 72.0)
#: A label this far (points) or farther from its point is joined to it by a thin line.
_LEADER_FROM = 14.0
#: Directions tried, in this order: up and right of the point first.
_LABEL_DIRECTIONS = ((0.7, 0.7), (1.0, 0.0), (0.7, -0.7), (0.0, 1.0), (0.0, -1.0), (-0.7, 0.7), (-1.0, 0.0),
                     (-0.7, -0.7))
#: Radius (points) kept free around each data point (a marker is 6 points wide): a label hides no marker where
#: it has a free spot.
_MARKER_RADIUS = 4.0
#: Spacing (display pixels) of the points sampled along drawn lines, which a label avoids crossing.
_LINE_STEP = 2.0


def _side(direction: float) -> int:
    """-1, 0 or 1: which side of its point a label placed in ``direction`` lies on."""
    return (direction > 0) - (direction < 0)


def _overlap(box: Any, others: Sequence[Any]) -> float:
    """The area of ``box`` that ``others`` (display boxes) cover, summed."""
    total = 0.0
    for other in others:
        common = box.intersection(box, other)  # (Bbox's static method: None where they are apart)
        total += 0.0 if common is None else common.width * common.height
    return total


def _line_samples(ax: Any) -> Any:
    """Display points every :data:`_LINE_STEP` pixels along the lines drawn in ``ax`` (curves, error bars; of a
    line drawn as markers only, its vertices), as an ``(n, 2)`` array."""
    import numpy as np

    paths = [(line.get_transform().transform(line.get_xydata()), line.get_linestyle() not in ("None", "none", " ", ""))
             for line in ax.lines]
    paths += [(collection.get_transform().transform(path.vertices), True)
              for collection in ax.collections for path in collection.get_paths()]
    samples = [np.zeros((0, 2))]
    for vertices, joined in paths:
        vertices = vertices[np.isfinite(vertices).all(axis=1)]
        samples.append(vertices)
        for start, end in zip(vertices[:-1], vertices[1:]) if joined else ():
            steps = int(np.hypot(*(end - start)) // _LINE_STEP) + 1
            samples.append(start + np.linspace(0.0, 1.0, steps + 1)[:, None] * (end - start))
    return np.concatenate(samples)


def _crossed(box: Any, samples: Any) -> int:
    """How many of the display points ``samples`` lie inside ``box``."""
    x, y = samples[:, 0], samples[:, 1]
    return int(((x > box.x0) & (x < box.x1) & (y > box.y0) & (y < box.y1)).sum())


def _place_labels(ax: Any, labels: Sequence[tuple[float, float, str, Any]]) -> None:
    """Write each ``(x, y, text, colour)`` beside its data point, inside the axes, where it (and its leader line)
    covers no label placed before it and no other data point, and crosses the fewest drawn lines: the first such spot
    of :data:`_LABEL_DISTANCES` × :data:`_LABEL_DIRECTIONS` (one crossing no line ends the search), so the same figure
    always gets the same labels. Call it once the figure's layout is final (after ``tight_layout``): it measures in
    display coordinates.
    """
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    scale = ax.figure.dpi / 72  # display pixels per point
    frame = ax.get_window_extent(renderer)
    lines = _line_samples(ax)
    points = [ax.transData.transform((x, y)) for x, y, _, _ in labels]
    free = _MARKER_RADIUS * scale
    markers = [Bbox.from_bounds(px - free, py - free, 2 * free, 2 * free) for px, py in points]
    placed: list[Any] = []
    for k, ((x, y, text, colour), (px, py)) in enumerate(zip(labels, points)):
        others = [*markers[:k], *markers[k + 1:], *placed]
        probe = ax.text(0, 0, text, fontsize=7)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        width, height = extent.width + 2, extent.height + 2  # (a pixel of margin on each side)
        best = None
        for distance in _LABEL_DISTANCES:
            for dx, dy in _LABEL_DIRECTIONS:  # (the box's near edge at ``distance`` from the point)
                cx = px + dx * distance * scale + _side(dx) * width / 2
                cy = py + dy * distance * scale + _side(dy) * height / 2
                box = Bbox.from_bounds(cx - width / 2, cy - height / 2, width, height)
                covers = box if distance < _LEADER_FROM else Bbox.union([box, Bbox.from_extents(
                    min(px, cx), min(py, cy), max(px, cx), max(py, cy))])
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                cost = (_overlap(covers, others) if inside else math.inf, _crossed(box, lines))
                if best is None or cost < best[0]:
                    best = (cost, distance, cx, cy, covers)
            if best[0] == (0.0, 0):
                break
        _, distance, cx, cy, covers = best
        placed.append(covers)
        line = None if distance < _LEADER_FROM else {"arrowstyle": "-", "color": colour, "lw": 0.5, "shrinkA": 0,
                                                     "shrinkB": _MARKER_RADIUS}
        ax.annotate(text, (x, y), xytext=((cx - px) / scale, (cy - py) / scale), textcoords="offset points",
                    ha="center", va="center", fontsize=7, color=colour, arrowprops=line)


def plot_tradeoff(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """The stability-plasticity frontier: memory (first task after the last) against plasticity (last task),
    one curve per neuron model through its meta values, mean ± std over seeds, each model in its own
    :func:`series_style`. The meta of each curve's ends and of its best ACC is written beside the point, where no
    other label or point is (:func:`_place_labels`); where every row has the same meta, the title says it instead.

    Example:
        >>> plot_tradeoff(rows, "runs/tradeoff.png")  # doctest: +SKIP
    """
    plt = pyplot()
    last = last_task_column(rows)
    fig, ax = plt.subplots(figsize=(6.4 + LEGEND_WIDTH, 5))
    metas = {r["meta"] for r in rows if r["meta"] is not None}
    labels: list[tuple[float, float, str, Any]] = []
    for k, neuron in enumerate(dict.fromkeys(r["neuron"] for r in rows)):
        style = series_style(k)
        mine = sorted((r for r in rows if r["neuron"] == neuron), key=lambda r: r["meta"] or 0.0)  # (None: no m)
        xs, ys = [r[last] for r in mine], [r["task 1"] for r in mine]
        ax.errorbar([x for x, _ in xs], [y for y, _ in ys], xerr=_error_bars(xs), yerr=_error_bars(ys),
                    color=style.color, marker=style.marker, linestyle=style.linestyle, capsize=3, label=neuron)
        labels += [(r[last][0], r["task 1"][0], f"{r['meta']:g}", style.color) for r in _labelled(mine)
                   if len(metas) > 1 and math.isfinite(r[last][0]) and math.isfinite(r["task 1"][0])]
    ax.set_xlabel("plasticity: last task's accuracy (%)")
    ax.set_ylabel("memory: first task's accuracy after the last task (%)")
    shown = (f"meta = {next(iter(metas)):g}" if len(metas) == 1 else
             "labels: meta at each curve's ends and best ACC" if metas else "")
    ax.set_title("stability-plasticity trade-off" + (f" ({shown})" if shown else ""))
    ax.legend(fontsize=8, **_LEGEND_BESIDE)
    fig.tight_layout()
    _place_labels(ax, labels)
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
