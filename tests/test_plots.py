"""Figures: every series drawn its own way, labels and legends that hide nothing, and no figure drawn blank."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from matplotlib.container import BarContainer

from metaspike.app import plots
from metaspike.app.cli import main

NAN = math.nan


def _run_folder(root: Path, name: str = "run", final: tuple[float, float] = (85.5, 91.0)) -> Path:
    """A finished run's folder as `metaspike plot` reads it: two tasks, curves and hidden-weight histograms."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"scenario": "permuted", "model": "bnn", "meta": 5.0, "epochs": 2,
                                                 "seed": 1}))
    (run / "accuracy_matrix.csv").write_text(f"after_task,t1,t2\n1,90.0,\n2,{final[0]},{final[1]}\n")
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,\n1,2,2,0.4,90,10\n"
                                    f"2,1,3,0.3,88,80\n2,2,4,0.2,{final[0]},{final[1]}\n")
    layer = {"shape": [4, 3], "edges": [-1.0, 0.0, 1.0], "counts": [5, 7]}
    (run / "hidden_weights.json").write_text(json.dumps([{"after_task": 1, "layers": {"0": layer}},
                                                         {"after_task": 2, "layers": {"0": layer}}]))
    return run


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions would save, drawn as saved and kept open (closed after the test), in order."""
    figures = []

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    yield figures
    for fig in figures:
        plots.pyplot().close(fig)


def _tradeoff_rows(models: list[str], metas: list[float | None], point) -> list[dict]:
    """Comparison rows of a neuron sweep: ``point(k, j)`` gives model k's (last task, task 1, ACC) at meta j."""
    rows = []
    for k, model in enumerate(models):
        for j, meta in enumerate(metas):
            last, first, acc = point(k, j)
            rows.append({"neuron": model, "meta": meta, "runs": 3, "task 1": (first, 1.0), "task 2": (last, 1.0),
                         "ACC": (acc, 1.0)})
    return rows


def test_series_style_tells_apart_every_curve_and_every_bar():
    styles = [plots.series_style(k) for k in range(320)]
    assert len({(s.color, s.marker, s.linestyle) for s in styles}) == 320  # a curve: colour, marker, line style
    assert len({(s.color, s.hatch) for s in styles[:80]}) == 80  # a bar: colour and hatch
    assert all(s.hatch is None and s.marker == "o" and s.linestyle == "-" for s in styles[:10])  # as before: colour


def test_a_tradeoff_of_more_models_than_colours_draws_each_its_own_way(tmp_path, drawn):
    """matplotlib's cycle has 10 colours: the 11th model was drawn exactly as the first."""
    models = [f"model{k}" for k in range(25)]
    plots.plot_tradeoff(_tradeoff_rows(models, [0.0], lambda k, j: (50.0 + k, 10.0 + 3 * k, 50.0)), tmp_path / "t.png")
    ax = drawn[0].axes[0]
    lines = [container.lines[0] for container in ax.containers]
    looks = {(tuple(line.get_color()), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(lines) == 25 and len(looks) == 25
    assert [text.get_text() for text in ax.get_legend().get_texts()] == models


def test_grouped_bars_of_more_series_than_colours_draw_each_its_own_way_with_the_legend_beside_them():
    fig, ax = plots.pyplot().subplots(figsize=(6.4 + plots.LEGEND_WIDTH, 4))
    series = [f"setting {k}" for k in range(12)]
    plots.grouped_bars(ax, ["task 1", "task 2"], series, [[(99.0, NAN), (99.0, NAN)] for _ in series])
    fig.tight_layout()
    fig.canvas.draw()
    looks = [{(tuple(bar.get_facecolor()), bar.get_hatch()) for bar in container} for container in ax.containers]
    assert all(len(look) == 1 for look in looks)  # one look per series...
    assert len(set.union(*looks)) == 12  # ...and no two alike
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the axes: over no bar, whatever their height
    plots.pyplot().close(fig)


def test_tradeoff_labels_do_not_overlap_where_the_points_cluster(tmp_path, drawn):
    """8 models whose 5 meta values lie within a few points of each other (as the committed neuron sweep's do):
    every label stays clear of the others (its leader line included) and inside the axes."""
    models = [f"model{k}" for k in range(8)]
    metas = [0.0, 5.0, 10.0, 20.0, 50.0]
    rows = _tradeoff_rows(models, metas, lambda k, j: (88.0 + 0.3 * k - 0.5 * j, 40.0 + 1.5 * k + 8 * j, 60.0 + j % 3))
    plots.plot_tradeoff(rows, tmp_path / "t.png")
    fig = drawn[0]
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    labels = [(text.get_text(), text.get_window_extent(renderer)) for text in ax.texts]
    overlapping = [(a[0], b[0]) for a, b in itertools.combinations(labels, 2) if a[1].overlaps(b[1])]
    assert overlapping == []
    # each curve's ends (0, 50) and its best ACC (60 + j % 3 is largest at j = 2: meta 10)
    assert sorted(text for text, _ in labels) == sorted(["0", "50", "10"] * 8)
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
               for _, box in labels)


def test_a_tradeoff_with_one_meta_for_every_model_says_it_once(tmp_path, drawn):
    plots.plot_tradeoff(_tradeoff_rows(["leaky", "leaky+bimu"], [0.0], lambda k, j: (80.0, 30.0 + 50 * k, 60.0)),
                        tmp_path / "t.png")
    ax = drawn[0].axes[0]
    assert len(ax.texts) == 0 and ax.get_title() == "stability-plasticity trade-off (meta = 0)"


def test_plot_refuses_a_run_without_its_curves_in_one_line(tmp_path, capsys):
    """A missing curves.csv drew a blank accuracy_curves.png and exited 0."""
    run = _run_folder(tmp_path)
    (run / "curves.csv").unlink()
    assert main(["plot", str(run)]) == 2
    assert capsys.readouterr().err == (f"metaspike: error: {run / 'curves.csv'} is missing (moved or deleted?): each "
                                       "task's accuracy over training is drawn from it\n")
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n")  # its header only
    with pytest.raises(ValueError, match="curves.csv holds nothing to draw: each task's accuracy over training"):
        plots.plot_run(run)
    assert not list(run.glob("*.png"))  # nothing drawn, not even the histograms


def test_plot_without_hidden_weights_draws_the_curves_and_names_the_figure_it_skipped(tmp_path, capsys):
    run = _run_folder(tmp_path)
    (run / "hidden_weights.json").unlink()
    assert main(["plot", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{run / 'accuracy_curves.png'}\n"
    assert err == (f"metaspike: warning: hidden_weights.png not drawn: {run / 'hidden_weights.json'} is missing "
                   "(moved or deleted?)\n")


def test_the_curves_of_a_stream_of_one_epoch_a_task_are_drawn_against_the_task(tmp_path, drawn):
    """A long stream's figure (one epoch a task) labelled its axis "epoch", which there counts tasks."""
    run = _run_folder(tmp_path)
    plots.plot_run(run)
    (run / "config.json").write_text(json.dumps({"scenario": "permuted", "model": "bimu", "epochs": 1, "seed": 1}))
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,\n2,1,2,0.4,70,60\n")
    plots.plot_run(run)
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,60\n")  # (joint: one task)
    plots.plot_run(run)
    assert [fig.axes[0].get_xlabel() for fig in drawn[::2]] == ["epoch", "task (one epoch each)", "epoch"]
    assert all(line.get_marker() == "o" for line in drawn[-2].axes[0].get_lines())  # (one point: seen by its marker)


def test_plot_of_a_run_stopped_in_its_first_task_draws_its_epochs_so_far(tmp_path, capsys):
    """A run interrupted before its first task ended (its epochs in curves.csv, no matrix yet: a task's row is
    written at its end) was said to have measured nothing."""
    run = _run_folder(tmp_path)
    for name in ("accuracy_matrix.csv", "hidden_weights.json"):
        (run / name).unlink()
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,\n1,2,2,0.4,90,10\n")
    assert main(["plot", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{run / 'accuracy_curves.png'}\n" and (run / "accuracy_curves.png").stat().st_size > 0
    assert err == (f"metaspike: warning: hidden_weights.png not drawn: {run / 'hidden_weights.json'} is written at a "
                   "task's end, and this run has not ended its first task\n")
    (run / "curves.csv").write_text("task,epoch,global_epoch,t1\n1,1,1,80\n")  # (not a header metaspike writes)
    assert main(["plot", str(run)]) == 2
    assert "curves.csv must start with a header 'task,epoch,global_epoch,loss,<task names>'" in capsys.readouterr().err
    # a run that ended a task has its matrix: without it, it is not taken for one in its first task
    (run / "curves.csv").write_text("task,epoch,global_epoch,loss,t1,t2\n1,1,1,0.5,80,\n2,1,2,0.4,70,60\n")
    with pytest.raises(ValueError, match=r"accuracy_matrix.csv is missing \(moved or deleted\?\), though the run has "
                                         "ended a task \\(curves.csv holding a later task's epochs\\)"):
        plots.plot_run(run)


@pytest.mark.parametrize("name, content, message", [
    ("config.json", '{"epochs": ' + "9" * 5000 + "}",
     "config.json is not valid JSON for metaspike (Exceeds the limit (4300 digits) for integer string conversion"),
    ("hidden_weights.json", json.dumps([{"after_task": 1, "layers": {"0": {"edges": [0, 1], "counts": [10**400]}}}]),
     "hidden_weights.json is malformed: snapshot 1, layer '0': 'edges' and 'counts' must be lists of finite numbers"),
], ids=["integer-of-5000-digits", "count-beyond-float"])
def test_plot_names_the_file_of_a_huge_integer(tmp_path, capsys, name, content, message):
    """read_json caught JSONDecodeError only: a 5000-digit integer gave Python's "Exceeds the limit (4300 digits)"
    without the file's name; a count of 10**400 raised OverflowError from the finite-number check."""
    run = _run_folder(tmp_path)
    (run / name).write_text(content)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(run / name) in err and message in err and "\n" not in err, err


def test_plot_of_histograms_without_layers_draws_the_curves_and_names_the_file(tmp_path, capsys):
    """Snapshots without layers reached matplotlib ("Number of columns must be a positive integer, not 0"). They are
    what a run of a model without weight matrices (a user's model of bare parameters) writes, so they are no damage:
    the curves are drawn and one warning names the file, as for a missing one."""
    run = _run_folder(tmp_path)
    (run / "hidden_weights.json").write_text(json.dumps([{"after_task": 1, "layers": {}}]))
    assert main(["plot", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{run / 'accuracy_curves.png'}\n"
    assert err == (f"metaspike: warning: hidden_weights.png not drawn: {run / 'hidden_weights.json'} holds no layers "
                   "(the model has no weight matrices)\n")


@pytest.mark.parametrize("std", [NAN, 1.5])
def test_a_comparison_keeps_its_legend_off_the_bars_and_says_when_one_seed_measured_no_spread(tmp_path, drawn, std):
    """Five settings at 95-99 %: the legend inside the axes sat on task 1's bars; and one seed was labelled
    "mean ± std" with zero-height error bars."""
    labels = [f"meta={k} rule=cascade si c=1" for k in range(5)]
    runs = [_run_folder(tmp_path, f"run{k}", (95.0 + k, 99.0 - k)) for k in range(5)]
    final = [((95.0 + k, 99.0 - k), (std, std)) for k in range(5)]
    plots.plot_comparison(runs, labels, tmp_path / "comparison.png", final)
    bottom = drawn[0].axes[-1]
    legend = bottom.get_legend().get_window_extent()
    assert [bar for bar in bottom.patches if bar.get_height() > 0 and bar.get_window_extent().overlaps(legend)] == []
    spread = math.isfinite(std)
    assert bottom.get_ylabel().endswith("mean ± std over seeds" if spread else "one seed")
    bars = [container for container in bottom.containers if isinstance(container, BarContainer)]
    assert len(bars) == 5 and all((container.errorbar is not None) == spread for container in bars)


def test_a_reproductions_float_dnn_and_joint_runs_are_titled_as_what_they_trained():
    """A reproduction's DNN run was titled "bnn, meta = 0.0": its config.json describes the BNN its method replaces."""
    dnn = {"scenario": "permuted", "model": "bnn", "meta": 0.0, "method": {"label": "DNN", "dnn": True}}
    joint = {"scenario": "permuted", "model": "bnn", "meta": 0.0, "method": {"label": "joint", "joint": True}}
    assert plots._run_title(dnn, "run") == "permuted, float DNN"
    assert plots._run_title(joint, "run") == "permuted, bnn, meta = 0.0, all tasks at once"
    assert plots._run_title({"scenario": "permuted", "model": "bnn", "meta": 1.35}, "run") == "permuted, bnn, meta = 1.35"
