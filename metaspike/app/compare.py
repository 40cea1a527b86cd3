"""Comparisons: several settings (meta values, neuron models) on the same task stream, one table and figure.

A comparison folder holds ``plan.json`` (what is compared: the base config, the settings, the
seeds), one run directory per (setting, seed), and, when every run is done, ``comparison.csv``,
``comparison.txt``, ``comparison.json`` and a figure. Every number in the table is read back from
the run directories, so a comparison killed at any moment and continued with
:func:`resume_comparison` (``metaspike compare --resume DIR``) gives the same table as one that
never stopped: finished runs are kept, a killed run resumes from its checkpoint, missing runs start.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from metaspike.app.config import KIND_SETTINGS, RunConfig, meta_label, refuse_freezing_nothing
from metaspike.app.imports import import_flags
from metaspike.app.models import BIMU_SUFFIX, build_model, is_builtin, optimizer_kind
from metaspike.app.runs import (
    COMPARISON_PLAN,
    announce_run,
    check_same_sources,
    config_from_record,
    continued_by,
    finished_result,
    load_config,
    ran_with,
    remove_unstarted,
    removed_unless_measured,
    resume,
    resume_folder,
    run_lock,
    run_planned,
)
from metaspike.app.tables import (
    check_settings,
    comparison_csv,
    format_table,
    last_task_column,
    one_decimal,
    summarize_results,
)
from metaspike.checks import is_finite_number, shown
from metaspike.continual.metrics import learned_nothing
from metaspike.continual.results import RunDirectory, unique_directory
from metaspike.continual.trainer import ContinualResult
from metaspike.files import atomic_write_text, read_json

__all__ = ["DEFAULT_NEURONS", "every_neuron_model", "DEFAULT_SNN_META", "DEFAULT_SNN_SWEEP", "SNN_DEFAULTS", "Row",
           "compare", "compare_neurons", "resume_comparison", "tradeoff_rows", "format_tradeoff", "model_and_rule"]

#: CPU defaults of the spiking comparison (all neuron models, 3 permuted mnist5k tasks, on 2 cores).
SNN_DEFAULTS: dict[str, Any] = {"hidden": (256,), "epochs": 2}
#: Metaplasticity strength of the spiking comparison at laptop scale (benchmarks/snn_forgetting.py).
DEFAULT_SNN_META = 50.0
#: The meta values each neuron model is swept over by default (every model gets its own best m).
DEFAULT_SNN_SWEEP = (0.0, 5.0, 10.0, 20.0, 50.0)
#: The test of a model's metaplasticity: at some swept m it forgets at least this fraction less than at m = 0 ...
FORGETTING_CUT = 0.5
#: ... while its last task stays within this many points of m = 0's.
PLASTICITY_SLACK = 5.0
DEFAULT_NEURONS = ("bnn", "leaky", "synaptic", "alpha", "lapicque", "self-recurrent", "norse-lif", "norse-lsnn")
PLAN = COMPARISON_PLAN


def every_neuron_model() -> list[str]:
    """What ``compare --neurons`` compares where it names none: :data:`DEFAULT_NEURONS`, then the neuron models
    registered in this process (``--import``), by name.

    Example:
        >>> every_neuron_model() == list(DEFAULT_NEURONS)  # (none of one's own registered)
        True
    """
    from metaspike.snn.neurons import BUILTIN_NEURONS, available_neurons

    return [*DEFAULT_NEURONS, *(name for name in available_neurons() if name not in BUILTIN_NEURONS)]
#: The table a comparison writes once every run is done (so also the mark of a finished comparison).
TABLE = "comparison.csv"


@dataclass(frozen=True)
class Row:
    """One row of a comparison: its label columns and one config per seed."""

    labels: dict[str, Any]
    configs: tuple[RunConfig, ...]


def _rule_setting(config: RunConfig, rules: Sequence[str] | None) -> str:
    """How a row's label names its rule: always in a comparison of ``rules`` (``"rule=tanh"``), else only where it is
    not the default (:attr:`RunConfig.rule_setting`)."""
    return f"rule={config.rule}" if rules and config.rule is not None else config.rule_setting


def _meta_rows(base: RunConfig, settings: Sequence[tuple[float, ...]], seeds: Sequence[int],
               rules: Sequence[str] | None = None) -> list[Row]:
    ruled = [replace(base, rule=rule) for rule in rules] if rules else [base]
    return [Row({"setting": " ".join(filter(None, [f"meta={meta_label(s)}", _rule_setting(own, rules),
                                                   own.baseline_setting, own.freezing_setting])),
                 "meta": meta_label(s), "rule": own.rule},
                tuple(replace(own, meta=s, seed=int(seed)) for seed in seeds)) for own in ruled for s in settings]


def takes_meta(kind: str) -> bool:
    """Whether a model kind's synapses take an m (the 2021 rule's); BiMU, MESU and SGD do not.

    Example:
        >>> takes_meta("leaky"), takes_meta("bimu")
        (True, False)
    """
    return optimizer_kind(kind) == "metaplastic-adam"


def _swept_metas(neuron: str, metas: Sequence[float]) -> Sequence[float]:
    """The m values a model kind is run at: all of them for metaplastic binary synapses, one (m = 0, which
    the Bayesian synapses ignore) for the ``+bimu`` kinds."""
    return metas if takes_meta(neuron) else (0.0,)


def _neuron_rows(base: RunConfig, neurons: Sequence[str], metas: Sequence[float], seeds: Sequence[int],
                 rules: Sequence[str] | None = None) -> list[Row]:
    # a kind whose optimizer has no meta (BiMU, MESU, SGD) is named alone, with the settings only it takes; each kind
    # runs without the settings it does not take (RunConfig.for_model), a rule among them
    # (such a kind's "meta" is None: written as an empty cell, so that it is never taken for a baseline at m = 0)
    rows = []
    for n in neurons:
        for own in ([replace(base, rule=rule).for_model(n) for rule in rules] if rules and takes_meta(n)
                    else [base.for_model(n)]):
            rows += [Row({"setting": " ".join(filter(None, [f"{n} meta={m:g} {_rule_setting(own, rules)}".rstrip()
                                                            if takes_meta(n) else _kind_label(base, n),
                                                            own.baseline_setting, own.freezing_setting])),
                          "neuron": n, "meta": m if takes_meta(n) else None, "rule": own.rule},
                         tuple(replace(own, seed=int(seed), **({"meta": (float(m),)} if takes_meta(n) else {}))
                               for seed in seeds))
                     for m in _swept_metas(n, metas)]
    return rows


def _kind_label(base: RunConfig, kind: str) -> str:
    """``kind`` and the kind-only settings it runs with (``"leaky+bimu readout_lambda=1"``)."""
    own = base.for_model(kind)
    extras = [f"{key}={getattr(own, key):g}" for key in KIND_SETTINGS if getattr(own, key) is not None]
    return " ".join([kind, *extras])


_PLAN_KEYS = {"meta": {"kind", "base", "settings", "seeds"}, "neurons": {"kind", "base", "neurons", "metas", "seeds"}}
#: What a plan of several rules adds (a plan of one keeps its rule in its base, as before there were several)
_RULES_KEY = "rules"


def _check_plan(plan: Any, path: Path) -> None:
    """One ``ValueError`` naming ``path`` and the first field of a plan read back from disk that is not what
    :func:`compare` or :func:`compare_neurons` writes (the values are checked again when the runs are built)."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid comparison plan: {why}")

    kind = plan.get("kind") if isinstance(plan, dict) else None
    if not isinstance(kind, str) or kind not in _PLAN_KEYS:  # (a str first: a JSON list cannot even be looked up)
        raise bad(f"'kind' must be one of {sorted(_PLAN_KEYS)}")
    keys = _PLAN_KEYS[plan["kind"]]
    if set(plan) - {_RULES_KEY} != keys:
        raise bad(f"it has the fields {sorted(map(str, plan))}, expected {sorted(keys)} (and '{_RULES_KEY}')")
    rules = plan.get(_RULES_KEY)
    if _RULES_KEY in plan and not (isinstance(rules, list) and len(rules) >= 2
                                   and all(isinstance(r, str) for r in rules) and len(set(rules)) == len(rules)):
        raise bad(f"'{_RULES_KEY}' must be a list of two or more distinct rule names, got {shown(rules)}")
    if not isinstance(plan["base"], dict):
        raise bad("'base' must be a run config (an object)")
    if not isinstance(plan["seeds"], list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in plan["seeds"]):
        raise bad(f"'seeds' must be a list of integers, got {shown(plan['seeds'])}")
    if plan["kind"] == "meta":
        settings = plan["settings"]
        if not isinstance(settings, list) or not all(isinstance(x, list) and x and all(map(is_finite_number, x))
                                                     for x in settings):
            raise bad(f"'settings' must be a list of lists of finite numbers, got {shown(settings)}")
    else:
        if (not isinstance(plan["neurons"], list) or not plan["neurons"]
                or not all(isinstance(x, str) for x in plan["neurons"])):
            raise bad(f"'neurons' must be a list of at least one model name, got {shown(plan['neurons'])}")
        if not isinstance(plan["metas"], list) or not all(map(is_finite_number, plan["metas"])):
            raise bad(f"'metas' must be a list of finite numbers, got {shown(plan['metas'])}")
    try:
        check_settings(plan["settings"] if plan["kind"] == "meta" else plan["metas"], plan["seeds"])
    except ValueError as err:
        raise bad(str(err)) from None


def _rows(plan: dict[str, Any], root: Path) -> list[Row]:
    """The comparison's rows; two runs that would share one folder (``--meta 5 5.0000001``, a model listed twice)
    are refused, since the second would silently reuse the first one's results."""
    base, rules = config_from_record(plan["base"], root / PLAN), plan.get(_RULES_KEY)
    if plan["kind"] == "neurons":
        rows = _neuron_rows(base, plan["neurons"], plan["metas"], plan["seeds"], rules)
    else:
        rows = _meta_rows(base, [tuple(s) for s in plan["settings"]], plan["seeds"], rules)
    seen: dict[str, str] = {}
    for row in rows:
        for config in row.configs:
            # one m for every layer is the same run whether written once or per layer (--meta 5 and 5,5)
            same = replace(config, meta=config.meta[:1]) if config.meta and len(set(config.meta)) == 1 else config
            if same.name in seen:
                raise ValueError(f"{row.labels['setting']} and {seen[same.name]} would be one run ({same.name}): "
                                 "list each model once and meta settings that differ at 6 significant digits")
            seen[same.name] = row.labels["setting"]
    return rows


def _run_or_continue(config: RunConfig, root: Path, progress: bool) -> ContinualResult:
    path = root / config.name
    remove_unstarted(path)
    if not path.is_dir():
        run_planned(config, root, progress=progress, plot=False, name=config.name)
    else:  # a run of an earlier (killed) pass: only if it is the one the plan asks for
        if load_config(path) != config:
            raise ValueError(f"{path} holds a run of other settings than {root / PLAN} plans for it (was the plan "
                             "edited, or the run folder replaced?)")
        if finished_result(path) is None:
            for warning in resume(path, progress=progress, plot=False)[2]:  # (checks the data itself)
                print(f"metaspike: warning: {warning}", file=sys.stderr)
        else:  # the runs still to come must train on the data this one was trained on
            check_same_sources(path, config)
    result = finished_result(path)
    assert result is not None
    return result


def _execute(root: Path, plan: dict[str, Any], planned: list[Row], progress: bool) -> tuple[Path, list[dict[str, Any]]]:
    # a Ctrl-C at any moment, in a run or while the table and figures are written, names the comparison's --resume
    with continued_by(root, f"metaspike compare --resume {root}{import_flags(plan['base'].get('imports'))}"):
        rows = []
        first_runs: list[Path] = []
        total, started = sum(len(row.configs) for row in planned), itertools.count(1)
        for row in planned:
            results = []
            for config in row.configs:
                announce_run(next(started), total, config.name, progress)
                results.append(_run_or_continue(config, root, progress))
            first_runs.append(root / row.configs[0].name)
            unlearned = [config.name for config, result in zip(row.configs, results)
                         if learned_nothing(result.matrix, result.baseline)]
            rows.append({**row.labels, "runs": len(results), **summarize_results(results), "learned_nothing": unlearned})
        arithmetic, mixed = ran_with([root / config.name for row in planned for config in row.configs])
        if mixed:
            print(f"metaspike: warning: {mixed}", file=sys.stderr)
        _write_comparison(root, plan, rows, first_runs, arithmetic)
    return root, rows


def _write_comparison(root: Path, plan: dict[str, Any], rows: list[dict[str, Any]], first_runs: list[Path],
                      arithmetic: dict[str, list[Any]]) -> None:
    """The comparison's table (CSV, text, JSON, which records the arithmetic its runs ran with: :func:`ran_with`) and
    figures; a neuron comparison's trade-off table too."""
    # (the rule too: a table of one comparison per rule, merged, still says which rule each row ran)
    labels = ("neuron", "meta", "rule", "runs") if plan["kind"] == "neurons" else ("setting", "meta", "rule", "runs")
    n_tasks = sum(1 for key in rows[0] if key.startswith("task "))
    atomic_write_text(root / TABLE, comparison_csv(rows, labels))
    atomic_write_text(root / "comparison.txt", format_table(rows, n_tasks) + "\n")
    RunDirectory(root).write_json("comparison.json", {**plan, "rows": rows, "ran_with": arithmetic})
    from metaspike.app import plots

    if plan["kind"] == "neurons":
        named = [{**row, "neuron": model_and_rule(row, rows)} for row in rows]  # (a curve or bar per model and rule)
        plots.plot_forgetting_by_model(named, root / "forgetting.png")
        tradeoff = tradeoff_rows(rows)
        atomic_write_text(root / "tradeoff.csv", comparison_csv(tradeoff, TRADEOFF_LABELS))
        atomic_write_text(root / "tradeoff.txt", format_tradeoff(tradeoff) + "\n")
        plots.plot_tradeoff(named, root / "tradeoff.png")
    else:
        final = [[row[f"task {j + 1}"] for j in range(n_tasks)] for row in rows]
        plots.plot_comparison(first_runs, [r["setting"] for r in rows], root / "comparison.png",
                              [tuple(zip(*f)) for f in final])


TRADEOFF_LABELS = ("neuron", "rule", "best_meta", "runs", "verdict")


def _reference(neuron: str, rows: Sequence[dict[str, Any]]) -> str:
    """The kind whose binary synapses at m = 0 ``neuron`` is judged against: a spiking BiMU kind's neuron model, the
    binary network (``bnn`` or ``bnn-layernorm``, whichever ran) for the ``bimu`` and ``mesu`` kinds, else itself.

    Example:
        >>> _reference("leaky+bimu", []), _reference("mesu", [{"neuron": "bnn"}]), _reference("mesu", [])
        ('leaky', 'bnn', 'mesu')
    """
    if neuron.endswith(BIMU_SUFFIX):
        return neuron.removesuffix(BIMU_SUFFIX)
    if optimizer_kind(neuron) in ("bimu", "mesu"):
        return next((kind for kind in ("bnn", "bnn-layernorm") if any(r["neuron"] == kind for r in rows)), neuron)
    return neuron


def _forgetting_words(forgetting: float) -> str:
    """A forgetting figure in a verdict: ``"12.3 points"``, or for none (the earlier tasks ended at their best or above
    it) ``"nothing"`` and what they gained."""
    if forgetting > 0:
        return f"{one_decimal(forgetting)} points"
    gained = one_decimal(abs(forgetting))
    return "nothing" + (f" (its earlier tasks gained {gained} points)" if gained != "0.0" else "")


def _why_undefined(undefined: Sequence[str]) -> str:
    """Why the trade-off's figures ``undefined`` (among ``ACC``, the last task's column, ``forgetting``) are NaN.

    Example:
        >>> _why_undefined(["forgetting"])[:60]
        'forgetting needs each task evaluated right after its own tra'
    """
    reasons = []
    if any(key != "forgetting" for key in undefined):
        reasons.append("ACC needs every task evaluated after the last one (--eval-tasks left some out)")
    if "forgetting" in undefined:
        reasons.append("forgetting needs each task evaluated right after its own training: --eval-every 1 and every "
                       "task in --eval-tasks, tasks trained one after another (joint training forgets nothing)")
    return "; ".join(reasons)


def tradeoff_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per neuron model: the m that maximises ACC, its stability-plasticity figures against m = 0, and a verdict.

    ``memory`` is the first task's accuracy after the last task, ``plasticity`` the last task's. The
    verdict takes, among the swept m > 0 whose last task stays within :data:`PLASTICITY_SLACK` points of
    m = 0's, the one that forgets least, and says whether it forgets at least :data:`FORGETTING_CUT` less
    than m = 0 (``"no m = 0 row"`` when the sweep has no baseline).

    Example:
        >>> row = lambda m, f, t1, t2: {"neuron": "leaky", "meta": m, "runs": 1, "ACC": (50.0 + m, 0.0),
        ...     "forgetting": (f, 0.0), "task 1": (t1, 0.0), "task 2": (t2, 0.0)}
        >>> tradeoff_rows([row(0.0, 40.0, 30.0, 90.0), row(10.0, 10.0, 80.0, 88.0), row(50.0, 1.0, 89.0, 70.0)])[0]["verdict"]
        'm=10 forgets 75% less, last task -2.0 points'
        >>> tradeoff_rows([row(0.0, 10.0, 60.0, 90.0), row(10.0, 15.0, 55.0, 89.0)])[0]["verdict"]
        'FAILS (needs 50% less): m=10 forgets 50% more, last task -1.0 points'
        >>> tradeoff_rows([row(0.0, 26.1, 61.4, 81.1), row(10.0, -1.1, 89.2, 91.4)])[0]["verdict"]
        'm=10 forgets nothing (its earlier tasks gained 1.1 points), last task +10.3 points'
    """
    out = []
    last = last_task_column(rows)
    for neuron, rule in dict.fromkeys((r["neuron"], r.get("rule")) for r in rows):  # (a model under each rule)
        mine = [r for r in rows if r["neuron"] == neuron and r.get("rule") == rule]
        reference = _reference(neuron, rows)
        kind = optimizer_kind(neuron)
        synapse = "MESU" if kind == "mesu" else "BiMU"
        # (its own rule's m = 0, or for a kind without a rule the reference's first)
        plain = next((r for r in rows if r["neuron"] == reference and r["meta"] == 0
                      and (rule is None or r.get("rule") == rule)), None)
        judged = mine + ([plain] if plain is not None else [])
        undefined = [key for key in ("ACC", last, "forgetting") if not all(math.isfinite(r[key][0]) for r in judged)]
        best = max(mine, key=lambda r: r["ACC"][0]) if "ACC" not in undefined else mine[0]
        if takes_meta(neuron):
            verdict = "no m = 0 row"
        elif reference != neuron:
            verdict = f"not judged: no {reference} at m = 0 ran beside it"
        else:
            missing = ", and no bnn ran at m = 0 beside it" if kind in ("bimu", "mesu") else ""
            verdict = f"not judged: {neuron} has no m{missing}"
        if last == "task 1":
            verdict = "cannot judge: forgetting needs at least 2 tasks evaluated apart (this scenario evaluates one)"
        elif undefined:
            verdict = f"cannot judge: {' and '.join(undefined)} undefined ({_why_undefined(undefined)})"
        elif plain is not None:
            plastic = [r for r in mine if r is not plain and r[last][0] >= plain[last][0] - PLASTICITY_SLACK]
            if not plastic and reference != neuron:
                drop = mine[0][last][0] - plain[last][0]
                verdict = (f"FAILS: {synapse} forgets {_forgetting_words(mine[0]['forgetting'][0])} (m=0: "
                           f"{one_decimal(plain['forgetting'][0])}) but its last task is "
                           f"{one_decimal(drop, plus=True)} points, beyond {PLASTICITY_SLACK:g}")
            elif len(mine) == 1 and reference == neuron:
                verdict = "m = 0 only: nothing to compare it with"
            elif not plastic:
                verdict = f"FAILS: every m > 0 costs the last task more than {PLASTICITY_SLACK:g} points"
            else:
                chosen = min(plastic, key=lambda r: r["forgetting"][0])
                kept = plain["forgetting"][0]
                drop = chosen[last][0] - plain[last][0]
                what = f"m={chosen['meta']:g}" if reference == neuron else f"{synapse} (against {reference} m=0)"
                if kept <= 0:
                    verdict = (f"nothing to protect: m = 0 forgets {_forgetting_words(kept)}; {what} forgets "
                               f"{_forgetting_words(chosen['forgetting'][0])}, last task "
                               f"{one_decimal(drop, plus=True)} points")
                else:
                    forgot = chosen["forgetting"][0]
                    less = 1 - forgot / kept
                    if forgot > 0:
                        change = f"{100 * less:.0f}% less" if less >= 0 else f"{-100 * less:.0f}% more"
                    else:  # (its earlier tasks end at their best, or above it: no percentage of m = 0's figure)
                        change = _forgetting_words(forgot)
                    verdict = f"{what} forgets {change}, last task {one_decimal(drop, plus=True)} points"
                    if less < FORGETTING_CUT:
                        verdict = (f"FAILS (needs {100 * FORGETTING_CUT:.0f}% less): " + verdict
                                   + (f" (forgets only {one_decimal(kept)} points at m = 0)" if kept < 10 else ""))
        swept = reference == neuron and takes_meta(neuron)
        out.append({"neuron": neuron, "rule": rule,
                    "best_meta": f"{best['meta']:g}" if swept and "ACC" not in undefined else "-",
                    "runs": best["runs"], "verdict": verdict,
                    "ACC": best["ACC"], "memory": best["task 1"], "plasticity": best[last],
                    "forgetting": best["forgetting"],
                    "forgetting_m0": plain["forgetting"] if plain else (float("nan"), float("nan")),
                    "plasticity_m0": plain[last] if plain else (float("nan"), float("nan"))})
    return out


def format_tradeoff(rows: Sequence[dict[str, Any]]) -> str:
    """Text table of :func:`tradeoff_rows` (means over seeds).

    Example:
        >>> print(format_tradeoff([{"neuron": "leaky", "best_meta": "50", "ACC": (80.0, 1.0), "memory": (70.0, 2.0),
        ...     "plasticity": (85.0, 1.0), "forgetting": (9.0, 1.0), "forgetting_m0": (40.0, 3.0),
        ...     "plasticity_m0": (88.0, 1.0), "verdict": "ok"}]).splitlines()[2])
        leaky                 50      80.0      70.0      85.0           9.0            40.0  ok
    """
    names = [model_and_rule(r, rows) for r in rows]
    width = max(16, *(len(name) + 2 for name in names))
    header = (f"{'neuron':<{width}}{'best m':>8}{'ACC':>10}{'memory':>10}{'plastic.':>10}{'forgetting':>14}"
              f"{'forgetting m=0':>16}  verdict")
    lines = [header, "-" * len(header)]
    for name, r in zip(names, rows):
        cells = [one_decimal(r[key][0]) for key in ("ACC", "memory", "plasticity", "forgetting", "forgetting_m0")]
        lines.append(f"{name:<{width}}{r['best_meta']:>8}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}"
                     f"{cells[3]:>14}{cells[4]:>16}  {r['verdict']}")
    return "\n".join(lines)


def model_and_rule(row: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """A row's model as a table or figure names it: its kind, and its rule where ``rows`` ran several.

    Example:
        >>> rows = [{"neuron": "leaky", "rule": "tanh"}, {"neuron": "leaky", "rule": "cascade"}, {"neuron": "bimu"}]
        >>> [model_and_rule(r, rows) for r in rows]
        ['leaky tanh', 'leaky cascade', 'bimu']
    """
    several = len({r.get("rule") for r in rows} - {None}) > 1
    return f"{row['neuron']} {row['rule']}" if several and row.get("rule") is not None else row["neuron"]


def comparison_name(base: RunConfig, neurons: bool, rules: Sequence[str] | None = None,
                    kinds: Sequence[str] = ()) -> str:
    """The folder name of a comparison of ``meta`` settings (``neurons=False``) or of neuron models (``kinds``) on
    ``base``'s stream, with the consolidation rule where it is not the default (every rule of a comparison of
    ``rules``), the baseline every run takes (its strength where every kind takes the same one: each optimizer has its
    own default) and the freezing asked for (``-2``, ``-3`` ... are added where it is taken; a kind with nothing
    besides its synapses runs without it, and its rows do not say "freeze after").

    Example:
        >>> comparison_name(RunConfig(datasets=("digits",)), neurons=True)
        'compare-neurons-permuted-digits'
        >>> comparison_name(RunConfig(rule="cascade", baseline="si"), neurons=False)
        'compare-permuted-mnist5k-cascade-si0.1'
        >>> comparison_name(RunConfig(), neurons=False, rules=["tanh", "cascade"])
        'compare-permuted-mnist5k-tanh-cascade'
        >>> comparison_name(RunConfig(baseline="ewc"), neurons=True, kinds=["mlp", "bnn"])
        'compare-neurons-permuted-mnist5k-ewc'
    """
    rule_part = "".join(f"-{rule}" for rule in rules) if rules else base.rule_part()
    one_strength = len({base.for_model(kind).baseline_strength for kind in kinds}) <= 1
    return (f"compare-{'neurons-' if neurons else ''}{base.stream_part()}{rule_part}"
            f"{base.baseline_part(strength=one_strength)}{base.freezing_part()}")


def is_finished_comparison(root: Path) -> bool:
    """Whether the comparison folder ``root`` has every run done and its table written.

    Example:
        >>> is_finished_comparison(Path("no-such-folder"))
        False
    """
    return (root / PLAN).is_file() and (root / TABLE).is_file()


def _start(out: str | Path, name: str, plan: dict[str, Any], progress: bool) -> tuple[Path, list[dict[str, Any]]]:
    planned = _rows(plan, Path(out) / name)  # checked before the folder is made
    root = unique_directory(out, name)
    # (the lock: a `compare --resume` of this folder meanwhile is one line, not a second writer)
    with removed_unless_measured(root), run_lock(root):
        RunDirectory(root).write_json(PLAN, plan)
        return _execute(root, plan, planned, progress)


def compare(base: RunConfig, metas: Sequence[float | Sequence[float]], seeds: Sequence[int] = (1,),
            out: str | Path = "runs", progress: bool = True,
            rules: Sequence[str] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Run the same task stream with each ``meta`` setting (a number, or one per layer) and each seed, and with
    each of ``rules`` (consolidation rules' names; ``None``: ``base``'s rule). At m = 0 every built-in rule is plain
    Adam, so the rules' m = 0 rows agree (each runs its own).

    Returns ``(comparison folder, rows)``; the folder gets ``comparison.png`` (accuracy curves of the
    first seed, final accuracy per task with mean ± std over seeds).

    Example:
        >>> path, rows = compare(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)), [0, 5],
        ...                      out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    settings = check_settings(metas, seeds)
    base, rules = _check_rules(base, rules, [base.model])
    refuse_freezing_nothing(base.freeze_unconsolidated, [base.model], base.batchnorm_kept_per_task)
    for rule in rules or [base.rule]:  # every run's settings checked before the comparison's folder is made
        for setting in settings:
            for seed in seeds:
                replace(base, meta=setting, seed=seed, rule=rule)
    plan = {"kind": "meta", "base": base.to_dict(), "settings": [list(s) for s in settings],
            "seeds": [int(s) for s in seeds], **({_RULES_KEY: rules} if rules else {})}
    return _start(out, comparison_name(base, neurons=False, rules=rules), plan, progress)


def _check_rules(base: RunConfig, rules: Sequence[str] | None,
                 models: Sequence[str]) -> tuple[RunConfig, list[str] | None]:
    """``base`` and ``rules`` as a comparison of ``models`` runs them: ``rules`` a list of two or more distinct
    names, as the plan holds them, else ``None`` with ``base`` taking the one rule named. One ``ValueError`` for
    rules that are not names (each is then checked as a run's config is made), a name given twice, or rules given
    where none of ``models`` takes one (their runs would ignore them)."""
    if rules is None:
        return base, None
    if isinstance(rules, str) or not isinstance(rules, Sequence) or not rules or not all(
            isinstance(rule, str) and rule for rule in rules):
        raise ValueError(f"rules must be a list of consolidation rules' names, got {rules!r}")
    if len(set(rules)) != len(rules):
        raise ValueError(f"rules must name each rule once, got {list(rules)}")
    if not any(map(takes_meta, models)):
        raise ValueError(f"rules: none of the models compared ({', '.join(models)}) trains with MetaplasticAdam, "
                         "whose consolidation rule they set")
    return (replace(base, rule=rules[0]), None) if len(rules) == 1 else (base, list(rules))


def compare_neurons(base: RunConfig, neurons: Sequence[str] = DEFAULT_NEURONS, metas: Sequence[float] = DEFAULT_SNN_SWEEP,
                    seeds: Sequence[int] = (1,), out: str | Path = "runs", progress: bool = True,
                    rules: Sequence[str] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """Train every neuron model (binary synapses) with every ``meta`` and seed on the same stream, and with each of
    ``rules`` where it names two or more consolidation rules (the models whose synapses take an m; the others run
    once, as without it).

    Every model is swept over the same ``metas``, so each is judged at its own best m: a single m
    would compare the models' sensitivity to m, not their memory. Rows have ``setting``, ``neuron``,
    ``meta``, ``rule``, ``runs`` and ``(mean, std)`` of each task's final accuracy, ACC, BWT, FWT, forgetting and
    seconds; the folder also gets ``tradeoff.csv``/``.txt`` (per model: the m that maximises ACC,
    memory = first task after the last, plasticity = last task, forgetting against m = 0, see
    :func:`tradeoff_rows`), ``tradeoff.png`` (the stability-plasticity frontier, one curve per model
    over m, seeds as error bars) and ``forgetting.png``.

    Example:
        >>> path, rows = compare_neurons(RunConfig(datasets=("digits",), tasks=2, epochs=1, hidden=(32,)),
        ...     ["bnn", "self-recurrent"], [0, 20], out=__import__("tempfile").mkdtemp(), progress=False)  # doctest: +SKIP
    """
    if not neurons:
        raise ValueError("neurons needs at least one neuron model")
    settings = check_settings(list(metas), seeds)
    base, rules = _check_rules(base, rules, neurons)
    refuse_freezing_nothing(base.freeze_unconsolidated, neurons, base.batchnorm_kept_per_task)
    for rule in rules or [base.rule]:  # every run's settings checked before the comparison's folder is made
        for neuron in neurons:
            for setting in settings:
                for seed in seeds:
                    replace(base, meta=setting, seed=seed, rule=rule).for_model(neuron)
    _check_backends(base, neurons)
    plan = {"kind": "neurons", "base": base.to_dict(), "neurons": list(neurons), "metas": [float(m) for m in metas],
            "seeds": [int(s) for s in seeds], **({_RULES_KEY: rules} if rules else {})}
    return _start(out, comparison_name(base, neurons=True, rules=rules, kinds=neurons), plan, progress)


def _check_backends(base: RunConfig, neurons: Sequence[str]) -> None:
    """Build a small model of each of metaspike's own ``neurons`` (one input, two classes, the run's layers of one unit
    each): a backend that is not installed (Norse, snnTorch) is one line before the first run, not after the runs of
    the models before it. (A registered neuron model is the user's code, built when its runs start.)"""
    layers = tuple(1 for _ in base.hidden)  # (as many as the runs have, so that their own checks apply; no cost)
    with torch.random.fork_rng(devices=[]):  # (the runs draw their weights from their own seeds anyway)
        for neuron in neurons:
            if is_builtin(neuron):
                build_model(neuron, layers, (1,), 2, base.num_steps)


def resume_comparison(root: str | Path, progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Finish a killed comparison: keep finished runs, resume killed ones, start missing ones.

    Example:
        >>> resume_comparison("runs/compare-permuted-mnist5k")  # doctest: +SKIP
    """
    root = resume_folder(root, PLAN)
    plan = read_json(root / PLAN)
    _check_plan(plan, root / PLAN)
    try:
        planned = _rows(plan, root)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{root / PLAN} is not a valid comparison plan ({err})") from None
    _refuse_runs_frozen_before(root, plan["base"].get("freeze_unconsolidated"), planned)
    planned = _strengths_begun_with(root, plan["base"].get("baseline_strength"), planned)
    with run_lock(root):
        return _execute(root, plan, planned, progress)


def _strengths_begun_with(root: Path, recorded: float | None, planned: list[Row]) -> list[Row]:
    """``planned``, where an earlier version ran a kind at the strength ``recorded`` in the plan (it gave every kind
    the first model's) that this version gives another (each optimizer its own default): that row keeps the strength
    it began with, as a resumed run does (else the comparison would run the kind again beside its finished runs, and
    a finished comparison could not be drawn again)."""
    kept = []
    for row in planned:
        first = row.configs[0]
        began = [replace(c, baseline_strength=recorded) for c in row.configs] if recorded is not None else []
        if (first.baseline is None or first.baseline_strength == recorded
                or not any((root / c.name).is_dir() for c in began)):
            kept.append(row)
            continue
        setting = row.labels["setting"].replace(first.baseline_setting, began[0].baseline_setting)
        kept.append(Row({**row.labels, "setting": setting}, tuple(began)))
    return kept


def _refuse_runs_frozen_before(root: Path, asked: int | None, planned: list[Row]) -> None:
    """One ``ValueError`` where a run the plan now makes unfrozen (its kind has nothing this version freezes after
    ``asked`` tasks) was made frozen by an earlier version (which froze per-task BatchNorm too): resumed, the
    comparison would run that kind again beside the finished run, under another name, and its row would change
    without a word."""
    if asked is None:
        return
    for row in planned:
        for config in row.configs:
            if config.freeze_unconsolidated is not None:
                continue
            frozen = replace(config, freeze_unconsolidated=asked).name
            if (root / frozen).is_dir() and not (root / config.name).is_dir():
                raise ValueError(f"{root}: an earlier version ran {config.model} frozen ({frozen}), freezing its "
                                 "per-task BatchNorm too; this version leaves that learning, so it would run "
                                 f"{config.model} again, unfrozen, beside that run: start a new comparison")
