"""The ``metaspike`` command: ``train``, ``compare`` and ``plot``.

Errors in what the user gave (bad values, unknown names, missing data, unwritable folders) are
printed as one line ``metaspike: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

import torch

import metaspike
from metaspike.allocator import allocation_failure, keep_freed_memory
from metaspike.app.config import (
    DEFAULT_INPUT_META,
    DEFAULT_META,
    KIND_SETTINGS,
    RunConfig,
    import_hint,
    meta_label,
    parse_meta,
    refuse_freezing_nothing,
)
from metaspike.app.imports import FLAG, check_resumed_imports, import_flags, import_modules, normalized_import
from metaspike.app.models import DEFAULT_LR, available_models, takes_setting
from metaspike.app.reproduce import cli as reproduce_cli
from metaspike.checks import first_line, listed, unknown_name
from metaspike.continual.metrics import LONG_STREAM_TASKS, LearnedNothingWarning
from metaspike.continual.scenarios import SPLIT_MODES
from metaspike.data import OFFLINE_DATASETS
from metaspike.distributed import world, world_size_from_env
from metaspike.files import expanded_path, read_json
from metaspike.rules import available_rules
from metaspike.stops import caused_by_sigterm, forget_kept_stop, handling_stops, raise_kept_stop

__all__ = ["main"]

_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


#: What a torch.distributed backend says when a process of the group is gone (gloo's TCP pairs, NCCL's watchdog).
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


def _lost_process(err: BaseException) -> str | None:
    """One line for an error that says another process of this torchrun launch is gone (killed, out of memory),
    ``None`` for any other: the survivor's own traceback from inside torch's backend says nothing of what to do."""
    processes = world_size_from_env()
    message = str(err)
    if processes < 2 or not (isinstance(err, torch.distributed.DistError) or any(m in message for m in _LOST_PEER)):
        return None
    first = first_line(err)
    first = first if len(first) <= 160 else first[:157] + "..."
    command = getattr(err, "continue_with", None)  # (set once the run's folder is known: runs.named_for_lost_processes)
    kept = (f"the run's folder keeps its last checkpoint: continue it as it ran, {command}" if command else
            "it stopped before the run's folder was made and shared, so no checkpoint was kept")
    return f"another process of this torchrun launch stopped ({first}); that process's own message says why; {kept}"


def _add_run_options(parser: argparse.ArgumentParser, meta_help: str, several_rules: bool = False) -> None:
    from metaspike.continual.scenarios import available_scenarios

    d = _DEFAULTS
    parser.add_argument("--scenario", default=d["scenario"], help=f"one of {', '.join(available_scenarios())} (default: %(default)s)")
    parser.add_argument("--dataset", nargs="+", default=list(d["datasets"]), metavar="NAME",
                        help="dataset name(s); offline: mnist5k, digits; from --data-dir: mnist, fashion-mnist, kmnist, cifar10 "
                             "(sequence takes several, e.g. mnist5k digits) (default: %(default)s)")
    parser.add_argument("--tasks", type=int, default=d["tasks"], help="permutations / class groups / stream subsets (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per task (default: {d['epochs']})")
    parser.add_argument("--meta", type=str, nargs="+", default=None, help=meta_help)
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help=f"hidden layer widths (default: {' '.join(map(str, d['hidden']))})")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"],
                        help="1 needs a model without BatchNorm: bnn-layernorm, bimu, mesu, mlp or a spiking one "
                             "(leaky, leaky+bimu, ...) (default: %(default)s)")
    parser.add_argument("--samples-per-task", type=int, default=None, metavar="N",
                        help="permuted: train each task on a seeded subset of N samples (default: all)")
    parser.add_argument("--eval-every", type=int, default=d["eval_every"], metavar="K",
                        help="evaluate after every K-th task only (default: %(default)s)")
    parser.add_argument("--eval-tasks", type=int, default=None, metavar="M",
                        help="evaluate at most M tasks: the last 5 trained and an even sample of M - 5 from the "
                             "first task to the last (after the last task M - 1 where the sample has two or more "
                             "points: its last one is the last task) (default: all)")
    parser.add_argument("--memory-window", type=float, default=None, metavar="N",
                        help="models with Bayesian synapses (bimu, mesu, <neuron>+bimu): the optimizer's memory window N "
                             "in training samples (at least --batch-size); smaller forgets sooner and stays more "
                             "plastic (default: the published setting)")
    parser.add_argument("--eval-samples", type=int, default=None, metavar="K",
                        help="models that predict from weight samples (bimu): average the predictions of K samples in "
                             "evaluation, 1..1000 (default: as many as a training step draws, 5; more predict better)")
    parser.add_argument("--readout-lambda", type=float, default=None, metavar="L",
                        help="models with BiMU synapses (bimu, <neuron>+bimu): start the output layer's latent weights "
                             "at +-L with their drawn signs, a nearly deterministic readout from the first task "
                             "(default: N(0, 0.1^2) like every layer)")
    parser.add_argument("--num-steps", type=int, default=d["num_steps"], metavar="T",
                        help="spiking models: the time steps each sample is shown for (default: %(default)s)")
    parser.add_argument("--standardize", action="store_true",
                        help="feed the model (x - mean) / std, the pixel mean and std of the first dataset's training "
                             "split, as the papers' long streams do (spiking models too: the registry's feed it as a "
                             "current)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate of the model's optimizer: MetaplasticAdam, or SGD for --model mlp "
                             f"(default: {DEFAULT_LR['metaplastic-adam']:g}, with SGD {DEFAULT_LR['sgd']:g}; the "
                             "Bayesian models bimu, mesu and <neuron>+bimu take their published settings instead)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="weight decay of that optimizer, added to the gradient (default: 0)")
    from metaspike.app.models import SGD_PENALTY_BUDGET
    from metaspike.continual.baselines import BASELINE_STRENGTHS, EWC_ONLINE_GAMMA

    strengths = ", ".join(f"{name} {meaning} {default:g}" for name, (meaning, default) in BASELINE_STRENGTHS.items())
    strengths += (f"; under SGD (mlp) EWC's kinds take lambda {SGD_PENALTY_BUDGET:g} / (lr x the tasks their penalty "
                  "sums), 20 on the default stream, which SGD follows where no Fisher value passes 1; a run it cannot "
                  "follow is refused with the strength it can")
    parser.add_argument("--baseline", default=None, choices=list(BASELINE_STRENGTHS),
                        help="add a continual-learning baseline's penalty to the loss: EWC (Kirkpatrick et al. 2017), "
                             "EWC-Online (one running Fisher, Schwarz et al. 2018), SI (Zenke et al. 2017) or random "
                             "(EWC's importances on random synapses); for models trained by gradient steps, not "
                             "bimu/mesu (default: none)")
    parser.add_argument("--baseline-strength", type=float, default=None, metavar="S",
                        help=f"the baseline's strength: lambda (EWC kinds) or c (SI) (default: {strengths})")
    parser.add_argument("--baseline-gamma", type=float, default=None, metavar="G",
                        help="--baseline ewc-online: decay in [0, 1] of its running Fisher, F <- G*F + F_task "
                             f"(default: {EWC_ONLINE_GAMMA:g}; 1: the Fishers of all tasks add up)")
    parser.add_argument("--freeze-unconsolidated", type=int, default=None, metavar="K",
                        help="the parameters no consolidation acts on (learned gains, biases, normalisation, neuron "
                             "parameters, float weight matrices of layers not binarized) learn during the first K "
                             "tasks only; the synapses go on (default: every task)")
    parser.add_argument("--rule", default=None, nargs="+" if several_rules else None,
                        help=f"consolidation rule of MetaplasticAdam: {', '.join(available_rules())} (default: tanh)"
                             + ("; several are compared side by side, each at every --meta" if several_rules else ""))
    parser.add_argument("--batchnorm", default=d["batchnorm"], choices=["per-task", "shared"],
                        help="BatchNorm state per task (paper) or shared (default: %(default)s)")
    parser.add_argument("--optimizer", default=d["optimizer"], choices=["per-task", "shared"],
                        help="new optimizer per task or one across tasks (default: %(default)s)")
    parser.add_argument("--split-mode", default=d["split_mode"], choices=SPLIT_MODES,
                        help="split scenario: task-incremental, class-incremental, or class-incremental with a growing "
                             "head (the classes to come masked out in training and evaluation) (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $METASPIKE_DATA or ~/.cache/metaspike/data)")
    parser.add_argument("--out", default="runs", help="results folder; each run gets a new subfolder (default: %(default)s)")
    parser.add_argument("--device", default=d["device"], help="cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(FLAG, dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (a module name or a .py file; repeatable), so that the rules and "
                             "neuron models it registers can be named by --rule, --model and --neurons")


def _config(args: argparse.Namespace, meta: Sequence[float] | None, seed: int) -> RunConfig:
    return RunConfig(
        scenario=args.scenario, datasets=tuple(args.dataset), tasks=args.tasks,
        epochs=_DEFAULTS["epochs"] if args.epochs is None else args.epochs,
        hidden=tuple(_DEFAULTS["hidden"] if args.hidden is None else args.hidden),
        meta=None if meta is None else tuple(meta), rule=args.rule, lr=args.lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, samples_per_task=args.samples_per_task, eval_every=args.eval_every,
        eval_tasks=args.eval_tasks, model=getattr(args, "model", _DEFAULTS["model"]), memory_window=args.memory_window,
        standardize=args.standardize,
        seed=seed, batchnorm=args.batchnorm, optimizer=args.optimizer, split_mode=args.split_mode,
        device=args.device, data_dir=args.data_dir, imports=tuple(args.imports), eval_samples=args.eval_samples,
        readout_lambda=args.readout_lambda, num_steps=args.num_steps, baseline=args.baseline,
        baseline_strength=args.baseline_strength, baseline_gamma=args.baseline_gamma,
        freeze_unconsolidated=args.freeze_unconsolidated,
    )


class _OneLineErrors(argparse.ArgumentParser):
    """argparse's errors as one line naming the command (``metaspike train: error: ...``), without the usage block
    (``--help`` prints it); its subcommands' parsers are of this class too."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)  # (an abbreviated flag would slip past --resume's checks)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


#: (command, flag it does not take) -> what it takes instead, said after argparse's "unrecognized arguments"
_OTHER_FLAGS = {("compare", "--model"): "compare names its models with --neurons (one model: --neurons {value})",
                ("compare", "--seed"): "compare takes --seeds (one or more)",
                ("reproduce", "--seed"): "reproduce takes --seeds (one or more)",
                ("train", "--neurons"): "train runs one model, named by --model; compare several with compare --neurons",
                ("train", "--seeds"): "train runs one seed, given by --seed; several: compare --seeds",
                # (the registry's spiking models take the direct encoder, the membrane readout and their backend's
                # surrogate; --readout was answered "did you mean --readout-lambda?", BiMU's readout start)
                **{(command, f"--{setting}"): f"the command's spiking models take one {setting}; other {setting}s are "
                                              f"set in Python (metaspike.snn.NetSpec({setting}=...) and a neuron "
                                              "model of your own, named with --import)"
                   for command in ("train", "compare") for setting in ("encoder", "readout", "surrogate")}}


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line parsed, a flag the command does not take refused in one line, with what it takes instead
    where another command takes that flag (``compare --model``)."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hints = []
        for (command, flag), hint in _OTHER_FLAGS.items():
            at = next((k for k, word in enumerate(unknown) if word.split("=")[0] == flag), None)
            if command == args.command and at is not None:
                word = unknown[at]
                value = word.split("=", 1)[1] if "=" in word else unknown[at + 1] if at + 1 < len(unknown) else "NAME"
                hints.append(hint.format(value=value))
        if not hints:
            hints = _one_value_hints(_command_parser(parser, args.command), argv, unknown)
        if not hints:  # (a mistyped flag: --epoch for --epochs, which is not abbreviated)
            actions = _command_parser(parser, args.command)._actions
            flags = [flag for action in actions for flag in action.option_strings]
            hints = [f"did you mean {near[0]}?" for word in unknown if word.startswith("--")
                     for near in [difflib.get_close_matches(word.split("=")[0], flags, n=1)] if near]
        parser.error("; ".join([f"unrecognized arguments: {' '.join(unknown)}", *hints]))
    _refuse_repeated_flags(parser, args.command, argv)
    return args


def _one_value_hints(parser: argparse.ArgumentParser, argv: Sequence[str], unknown: Sequence[str]) -> list[str]:
    """What to say where a word argparse did not take follows the value of a flag that takes one value
    (``train --rule tanh cascade``: argparse names only ``cascade`` as unrecognized)."""
    single = {flag for action in parser._actions if action.option_strings and action.nargs is None
              and isinstance(action, argparse._StoreAction) for flag in action.option_strings}
    for k, word in enumerate(argv):
        if word.startswith("-") or word not in unknown or k == 0:
            continue
        before = argv[k - 1]
        flag, value = (before.split("=", 1) if before.startswith("--") and "=" in before else
                       (argv[k - 2], before) if k >= 2 else ("", ""))
        if flag in single:
            return [f"{flag} takes one value, got {value} {word}"]
    return []


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command``, one of ``parser``'s subcommands."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def _refuse_repeated_flags(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> None:
    """One line where a flag that takes its value once (``--meta 1 --meta 2``, ``--hidden 8 16 --hidden 4``) is given
    twice: argparse keeps the last silently, and a run of other settings than meant follows."""
    for action in _command_parser(parser, command)._actions:
        if type(action) is not argparse._StoreAction or not action.option_strings:
            continue  # (--import appends; a switch given twice means the same)
        given = [word.split("=", 1)[0] for word in argv if word.split("=", 1)[0] in action.option_strings]
        if len(given) > 1:
            parser.error(f"{given[0]} is given {len(given)} times; give it once (one value, or its values after one "
                         f"{given[0]})")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="metaspike",
        description="Metaplastic binarized networks that forget less. Results go to --out (default runs/).",
    )
    parser.add_argument("--version", action="version", version=f"metaspike {metaspike.__version__}, torch "
                        f"{torch.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train one continual-learning run")
    default = (f"{DEFAULT_INPUT_META:g} for the first layer, {DEFAULT_META:g} for the others; {DEFAULT_META:g} for every "
               "layer of a neuron model registered by --import, whose layers are counted only once it is built")
    _add_run_options(train, f"metaplasticity m >= 0: one value, or one per layer (default: {default})")
    train.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="(default: %(default)s)")
    train.add_argument("--model", default=_DEFAULTS["model"],
                       help="model kind, which also picks its optimizer: bnn, bnn-layernorm, mlp, bimu, mesu or a "
                            "spiking neuron model (see metaspike.app.models.available_models()) (default: %(default)s)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint "
                       "(its settings are read from RUN_DIR; a flag that would change one is refused)")
    cmp = sub.add_parser("compare", help="several meta values, or models (--neurons), on one task stream: one table "
                                         "and figure")
    _add_run_options(cmp, "meta settings to compare, each a number or one number per layer like 5,30,30 "
                          f"(default: 0 and {default})", several_rules=True)
    cmp.add_argument("--seeds", type=int, nargs="+", default=[_DEFAULTS["seed"]],
                     help=f"seeds; the table gives mean ± std (default: {_DEFAULTS['seed']})")
    cmp.add_argument("--resume", metavar="DIR", help="finish a killed comparison with the settings it started with "
                                                     "(read from DIR/plan.json; give no other option but --quiet)")
    from metaspike.app.compare import DEFAULT_SNN_SWEEP

    cmp.add_argument("--neurons", nargs="*", default=None, metavar="NAME",
                     help="compare models (bnn, or spiking neuron models such as leaky norse-lif, or one with "
                          "BiMU synapses such as leaky+bimu; see metaspike.app.models.available_models(); none "
                          "named: bnn and every spiking model with binary synapses, those of --import too), each "
                          "swept over every --meta "
                          f"(default {' '.join(f'{m:g}' for m in DEFAULT_SNN_SWEEP)}) so each is judged at "
                          "its own best m (a +bimu model runs once and is judged against its neuron model at m=0); "
                          "--hidden/--epochs then default to 256/2")
    reproduce_cli.add_parser(sub)
    plot = sub.add_parser("plot", help="draw the figures of a run directory")
    plot.add_argument("run_dir", help="a run directory written by 'metaspike train'")
    plot.add_argument("--out", default=None, metavar="DIR",
                      help="draw the figures into DIR (created if needed) instead of the run directory")
    return parser


def _given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The run settings typed on the command line (``args.argv``), as RunConfig fields and values."""
    tokens = [token.split("=", 1)[0] for token in args.argv]
    given: dict[str, object] = {}
    for key, field in _SETTING_FLAGS.items():
        if "--" + key.replace("_", "-") in tokens:
            value = getattr(args, key)
            given[field] = tuple(value) if isinstance(value, list) else value
    if "--meta" in tokens:
        given["meta"] = tuple(v for text in args.meta for v in parse_meta(text))
    return given


def _refuse_unused_flags(given: dict[str, object], config: RunConfig) -> None:
    """One line for a flag typed on the command line that the run would ignore (its model's optimizer does not
    use it, or its scenario sets it otherwise): a run never silently differs from what was asked."""
    from metaspike.app.models import OPTIMIZER_SETTINGS, is_builtin, optimizer_kind, uses_batchnorm

    kind = optimizer_kind(config.model)
    for field, users in OPTIMIZER_SETTINGS.items():
        if field in given and kind not in users:
            what = ", which does" if kind == "sgd" else " and its published settings, which do"
            raise ValueError(f"--{field.replace('_', '-')}: model {config.model!r} trains with its own optimizer "
                             f"({kind}){what} not use it")
    if "num_steps" in given and is_builtin(config.model) and not config.spiking:
        raise ValueError(f"--num-steps applies to spiking models; {config.model!r} sees each sample once")
    if config.scenario != "split" and "split_mode" in given:
        raise ValueError(f"--split-mode applies to --scenario split only, not {config.scenario}")
    if "eval_tasks" in given and config.scenario in ("joint", "stream"):
        raise ValueError(f"--eval-tasks: --scenario {config.scenario} evaluates its own test sets every time, "
                         "not a budget of trained tasks")
    if "batchnorm" in given and is_builtin(config.model) and not uses_batchnorm(config.model):
        raise ValueError(f"--batchnorm: model {config.model!r} has no BatchNorm")
    refuse_freezing_nothing(given.get("freeze_unconsolidated"), [config.model], config.batchnorm_kept_per_task)
    if "data_dir" in given and set(config.datasets) <= set(OFFLINE_DATASETS):
        one = len(config.datasets) == 1
        raise ValueError(f"--data-dir: {' and '.join(config.datasets)} {'comes' if one else 'come'} with the installed "
                         f"packages and {'reads' if one else 'read'} no data folder; leave out --data-dir")
    if config.scenario == "sequence" and "tasks" in given and given["tasks"] != len(config.datasets):
        raise ValueError(f"--tasks: --scenario sequence has one task per --dataset ({len(config.datasets)} here), "
                         f"got --tasks {given['tasks']}")
    _refuse_per_task_modes(given, config)


def _refuse_flags_no_model_uses(given: dict[str, object], configs: Sequence[RunConfig]) -> None:
    """:func:`_refuse_unused_flags` for a comparison of several models (``configs``: each model's settings): one line
    for a flag that none of them would use (one that some use, the others run without)."""
    for field, value in given.items():
        reasons = []
        for config in configs:
            try:
                _refuse_unused_flags({field: value}, config)
            except ValueError as err:
                reasons.append(str(err))
        if len(reasons) == len(configs):
            raise ValueError(reasons[0] + ("" if len(configs) == 1 else "; none of the models compared uses it"))


def _refuse_per_task_modes(given: dict[str, object], config: RunConfig) -> None:
    """One line for ``--batchnorm per-task`` typed for a scenario whose BatchNorm statistics are shared, and for
    ``--optimizer per-task`` typed for a stream, which has no tasks to start a new optimizer at."""
    if given.get("batchnorm") == "per-task" and (config.scenario == "stream" or
                                                  (config.scenario == "split" and config.split_mode != "task")):
        why = ("has no task boundaries" if config.scenario == "stream" else
               "(class-incremental) does not say which task a test sample is from")
        raise ValueError(f"--batchnorm per-task: --scenario {config.scenario} {why}, so its BatchNorm statistics are "
                         "shared; leave out --batchnorm or give --batchnorm shared")
    if given.get("optimizer") == "per-task" and config.scenario == "stream":
        raise ValueError("--optimizer per-task: --scenario stream has no task boundaries, so one optimizer trains the "
                         "whole stream; leave out --optimizer or give --optimizer shared")


#: command-line attribute -> RunConfig field, for the settings --resume must not change
_SETTING_FLAGS = {"scenario": "scenario", "dataset": "datasets", "tasks": "tasks", "epochs": "epochs",
                  "hidden": "hidden", "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay",
                  "rule": "rule", "batchnorm": "batchnorm", "optimizer": "optimizer", "split_mode": "split_mode",
                  "data_dir": "data_dir", "device": "device", "seed": "seed", "samples_per_task": "samples_per_task",
                  "eval_every": "eval_every", "eval_tasks": "eval_tasks", "model": "model",
                  "memory_window": "memory_window", "standardize": "standardize", "eval_samples": "eval_samples",
                  "readout_lambda": "readout_lambda", "num_steps": "num_steps", "baseline": "baseline",
                  "baseline_strength": "baseline_strength", "baseline_gamma": "baseline_gamma",
                  "freeze_unconsolidated": "freeze_unconsolidated"}


def _train(args: argparse.Namespace) -> None:
    from metaspike.app.runs import (
        ewc_memory_warning,
        load_config,
        matrix_cost_warning,
        results_folder,
        resume,
        resume_folder,
        run,
    )
    from metaspike.app.tables import format_table, summarize_results
    from metaspike.continual.metrics import LEARNED_MARGIN, largest_rise, learned_nothing, tasks_learned_nothing

    if args.resume is not None:
        if "--out" in [token.split("=", 1)[0] for token in args.argv]:
            raise ValueError("--resume continues in RUN_DIR itself; remove --out")
        settings = _given_settings(args)
        _check_stored_imports(resume_folder(args.resume, "config.json") / "config.json",
                              lambda record: record.get("imports"), args)
        path, result, warnings = resume(args.resume, progress=not args.quiet, settings=settings)
        for warning in warnings:
            print(f"metaspike: warning: {warning}", file=sys.stderr)
        config = load_config(path)
    else:
        meta_values = [v for text in args.meta for v in parse_meta(text)] if args.meta else None
        config = _config(args, meta_values, args.seed)
        _refuse_unused_flags(_given_settings(args), config)
        for cost in (matrix_cost_warning(config), ewc_memory_warning(config)):
            if cost is not None:
                print(f"metaspike: warning: {cost}", file=sys.stderr)
        _mention_unfinished(results_folder(args.out) / config.name)
        path, result = run(config, args.out, progress=not args.quiet)
    if world()[0] != 0:
        return  # under torchrun, only the first process reports
    print()
    metrics, tasks = result.metrics, len(result.task_names)
    if tasks == 1 and len(result.matrix) > 1:  # a stream's one test set: no tasks to count
        print(f"{len(result.matrix)} parts of the stream trained: test accuracy at the end {result.matrix[-1][0]:.1f} %")
    elif tasks > LONG_STREAM_TASKS or metrics.get("evaluated_tasks", tasks) < tasks:  # (a budget left tasks out)
        print(f"{tasks} tasks, {int(metrics['evaluated_tasks'])} evaluated: "
              f"mean accuracy over the evaluated tasks {metrics['evaluated_accuracy']:.1f} %, "
              f"over the last 5 {metrics['last5_accuracy']:.1f} %, task 1 at the end {metrics['task1_accuracy']:.1f} %")
    else:
        kind = f"meta={meta_label(config.meta)}" if config.name.count("-meta") else config.model
        label = " ".join(filter(None, [kind, config.rule_setting, config.baseline_setting, config.freezing_setting]))
        print(format_table([{"setting": label, **summarize_results([result])}], len(result.task_names)))
    print(f"\nresults: {path}  (accuracy_matrix.csv, curves.csv, metrics.json, accuracy_curves.png)")
    if learned_nothing(result.matrix, result.baseline):
        print(f"metaspike: warning: no task's accuracy rose {LEARNED_MARGIN:g} points or more above the untrained "
              f"network's (best {largest_rise(result.matrix, result.baseline):+.1f}): the run learned nothing; "
              f"{_learning_settings([config.model], config.scenario)}", file=sys.stderr)
    elif unlearned := tasks_learned_nothing(result.matrix, result.baseline):
        print(f"metaspike: warning: task(s) {', '.join(map(str, unlearned))} ended their own training less than "
              f"{LEARNED_MARGIN:g} points above the untrained network's accuracy: they learned nothing while they "
              "trained "
              f"(a slow start; check {_learning_flags([config.model])})", file=sys.stderr)


def _mention_unfinished(folder: Path, command: str = "train") -> None:
    """Warn where runs (``command`` ``"train"``) or comparisons (``"compare"``) the new one would be named after
    (``folder``, ``folder-2``, ...) are unfinished: the same command typed again after a Ctrl-C starts anew beside
    them, and the user may have meant to continue one."""
    from metaspike.app.compare import is_finished_comparison
    from metaspike.app.runs import is_complete

    if world()[0] != 0 or not folder.parent.is_dir():
        return
    what, marker, finished = (("run", "config.json", is_complete) if command == "train" else
                              ("comparison", "plan.json", is_finished_comparison))
    numbered = {int(p.name[len(folder.name) + 1:]): p for p in folder.parent.glob(f"{folder.name}-*")
                if p.name[len(folder.name) + 1:].isdigit()}
    unfinished = [p for _, p in sorted({1: folder, **numbered}.items()) if (p / marker).is_file() and not finished(p)]
    if unfinished:
        held = f"{unfinished[0]} holds an unfinished {what}" if len(unfinished) == 1 else \
            f"{', '.join(map(str, unfinished))} hold unfinished {what}s"
        print(f"metaspike: warning: {held}; this one starts in a new folder beside it (continue the last with: "
              f"metaspike {command} --resume {unfinished[-1]})", file=sys.stderr)


def _learning_flags(models: Sequence[str]) -> str:
    """The flags that set how the optimizers of model kinds ``models`` learn (a hint after a run learned nothing).

    Example:
        >>> _learning_flags(["bnn"]), _learning_flags(["bimu"])
        ('--lr, --meta (a large m freezes every weight), --epochs', '--memory-window, --epochs')
    """
    from metaspike.app.models import BAYESIAN_OPTIMIZERS, OPTIMIZER_SETTINGS, optimizer_kind

    kinds = {optimizer_kind(model) for model in models}
    flags = [flag for field, flag in (("lr", "--lr"), ("meta", "--meta (a large m freezes every weight)"))
             if kinds & set(OPTIMIZER_SETTINGS[field])]
    flags += ["--memory-window"] if kinds & set(BAYESIAN_OPTIMIZERS) else []
    return ", ".join(flags + ["--epochs"])


def _learning_settings(models: Sequence[str], scenario: str) -> str:
    """The hint after a run (or the runs of a comparison) of ``models`` on ``scenario`` learned nothing: the flags
    that set how they learn (``--samples-per-task`` where the scenario takes it), and the data."""
    samples = ", --samples-per-task" if scenario == "permuted" else ""
    return (f"check the learning settings ({_learning_flags(models)}{samples}) and the data (a task of one class has "
            "nothing to tell apart)")


def _compare(args: argparse.Namespace) -> None:
    from metaspike.app import compare
    from metaspike.app.runs import refuse_several_processes, results_folder, resume_folder
    from metaspike.app.tables import format_table
    from metaspike.checks import check_seed
    from metaspike.continual.metrics import LEARNED_MARGIN

    refuse_several_processes("compare")
    if args.resume is not None:
        given = [flag for flag in args.argv if flag.startswith("--") and flag.split("=")[0] not in ("--resume", "--quiet", FLAG)]
        if given:
            raise ValueError(f"--resume continues a comparison with its stored plan; remove {' '.join(given)}")
        _check_stored_imports(resume_folder(args.resume, compare.PLAN) / compare.PLAN,
                              lambda plan: plan.get("base", {}).get("imports") if isinstance(plan.get("base"), dict) else None,
                              args)
        path, rows = compare.resume_comparison(args.resume, progress=not args.quiet)
        plan = read_json(path / compare.PLAN)  # (checked by the resume)
        models = plan["neurons"] if plan["kind"] == "neurons" else [plan["base"]["model"]]
        scenario = plan["base"]["scenario"]
    else:
        for seed in args.seeds:
            check_seed("--seeds", seed)
        rules = _compared_rules(args)
        if args.neurons is not None:
            args.neurons = args.neurons or compare.every_neuron_model()
            unknown = next((name for name in args.neurons if name not in available_models()), None)
            if unknown is not None:  # (named as train --model names it, before a setting is checked against it)
                raise ValueError(unknown_name("model", unknown, available_models())
                                 + import_hint([normalized_import(spec) for spec in args.imports]))
            if args.hidden is None:
                args.hidden = list(compare.SNN_DEFAULTS["hidden"])
            if args.epochs is None:
                args.epochs = compare.SNN_DEFAULTS["epochs"]
            settings = [parse_meta(text) for text in args.meta] if args.meta is not None else [(m,) for m in compare.DEFAULT_SNN_SWEEP]
            if any(len(setting) != 1 for setting in settings):
                raise ValueError("--neurons compares one meta value per setting, not one per layer")
            metas = [setting[0] for setting in settings]
            if args.meta is not None and not any(map(compare.takes_meta, args.neurons)):
                raise ValueError(f"--meta: none of the models compared ({', '.join(args.neurons)}) trains with "
                                 "MetaplasticAdam, whose m --meta sets (each runs once, without an m); leave out --meta")
            # the base run is one of the compared models (compare has no --model), one that takes every kind-only setting
            # given (--readout-lambda: a BiMU kind); each model then runs without those it does not take
            _refuse_shared_optimizer_setting(args)
            given = [key for key in KIND_SETTINGS if getattr(args, key) is not None]
            given_optimizer = [key for key in ("lr", "weight_decay", "rule") if getattr(args, key) is not None]
            args.model = next((n for n in args.neurons if all(KIND_SETTINGS[key](n) for key in given)
                               and all(takes_setting(n, key) for key in given_optimizer)), args.neurons[0])
            base = _config(args, [metas[0]] if compare.takes_meta(args.model) else None, args.seeds[0])
            given_flags = {k: v for k, v in _given_settings(args).items() if k != "meta"}  # (--meta: checked above)
            _refuse_flags_no_model_uses(given_flags, [base.for_model(n) for n in args.neurons])
            out = results_folder(args.out)
            _mention_unfinished(out / compare.comparison_name(base, neurons=True, rules=rules, kinds=args.neurons),
                                "compare")
            path, rows = compare.compare_neurons(base, args.neurons, metas, args.seeds, out=args.out,
                                                 progress=not args.quiet, rules=rules)
            models, scenario = args.neurons, base.scenario
        else:
            base = _config(args, None, args.seeds[0])
            _refuse_unused_flags(_given_settings(args), base)
            metas = [parse_meta(text) for text in args.meta] if args.meta is not None else [(0.0,), base.meta]
            out = results_folder(args.out)
            _mention_unfinished(out / compare.comparison_name(base, neurons=False, rules=rules), "compare")
            path, rows = compare.compare(base, metas, args.seeds, args.out, progress=not args.quiet, rules=rules)
            models, scenario = [base.model], base.scenario
    n_tasks = sum(1 for key in rows[0] if key.startswith("task "))
    print()
    print(f"final test accuracy (%) after the last task, mean ± std over seeds {_seeds(path)}:")
    print(format_table(rows, n_tasks))
    if (path / "tradeoff.txt").exists():
        print("\neach neuron model at its own best meta (memory: task 1 after the last task; plasticity: the last task):")
        print((path / "tradeoff.txt").read_text().rstrip())
    print(f"\nresults: {path}  (comparison.csv, comparison.txt, figures, one run folder per run; "
          f"continue a killed comparison with --resume {path}{import_flags(list(args.imports))})")
    unlearned = [name for row in rows for name in row["learned_nothing"]]
    if unlearned:
        print(f"metaspike: warning: in {len(unlearned)} run(s) no task's accuracy rose {LEARNED_MARGIN:g} points or "
              f"more above the untrained network's: {', '.join(unlearned)} learned nothing; "
              f"{_learning_settings(models, scenario)}",
              file=sys.stderr)


def _compared_rules(args: argparse.Namespace) -> list[str] | None:
    """The rules ``compare --rule`` names where it names several (``None`` for one or none), each once; the first
    becomes ``args.rule``, the rule the comparison's base run is checked with.

    Example:
        >>> _compared_rules(argparse.Namespace(rule=["tanh", "cascade"]))
        ['tanh', 'cascade']
    """
    if args.rule is None:
        return None
    repeated = next((rule for k, rule in enumerate(args.rule) if rule in args.rule[:k]), None)
    if repeated is not None:
        raise ValueError(f"--rule names {repeated!r} twice; name each rule once")
    rules, args.rule = list(args.rule), args.rule[0]
    return rules if len(rules) > 1 else None


def _refuse_shared_optimizer_setting(args: argparse.Namespace) -> None:
    """One line for ``--lr``, ``--weight-decay`` or ``--baseline-strength`` given to a comparison of models trained by
    different gradient optimizers: one learning rate, or one penalty's strength, is a different step to Adam and to
    SGD, and each takes its own default.

    Example:
        >>> _refuse_shared_optimizer_setting(argparse.Namespace(neurons=["bnn", "mlp"], lr=0.01, weight_decay=None,
        ...                                                 baseline_strength=None))
        Traceback (most recent call last):
        ...
        ValueError: --lr: the models compared train with different optimizers (bnn: metaplastic-adam, mlp: sgd), to which one setting means different steps; leave it out (each takes its own default) or compare them separately
    """
    from metaspike.app.models import optimizer_kind

    kinds = {n: kind for n in args.neurons if (kind := optimizer_kind(n)) in DEFAULT_LR}
    shared = ("lr", "weight_decay") + (("baseline_strength",) if getattr(args, "baseline", None) != "si" else ())
    for key in shared:  # (SI's default c is the same under both: its strength is not refused)
        if getattr(args, key) is not None and len(set(kinds.values())) > 1:
            trained = ", ".join(f"{n}: {kind}" for n, kind in kinds.items())
            raise ValueError(f"--{key.replace('_', '-')}: the models compared train with different optimizers "
                             f"({trained}), to which one setting means different steps; leave it out (each takes its "
                             "own default) or compare them separately")


def _check_stored_imports(record_path: Path, stored: Callable[[dict], object], args: argparse.Namespace) -> None:
    """``--resume``: the imports recorded in ``record_path`` (a run's config, a comparison's plan) must be the ones
    given now; a file that cannot be read is left to the resume's own checks, which name it."""
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        return
    if isinstance(record, dict):
        check_resumed_imports(stored(record), args.imports, str(record_path.parent))


def _seeds(path: Path) -> list[int]:
    from metaspike.files import read_json

    return read_json(path / "plan.json")["seeds"]


def _keeps_runs(record: Path) -> bool:
    """Whether the reproduction whose ``reproduction.json`` is ``record`` keeps a folder per run (not ``fig5ab``'s or
    ``fig5cde``'s); ``True`` where the file does not say which experiment it is."""
    from metaspike.app.reproduce.experiments import EXPERIMENTS

    try:
        name = read_json(record).get("name")
    except (OSError, ValueError, AttributeError):
        return True
    experiment = EXPERIMENTS.get(name) if isinstance(name, str) else None
    return experiment is None or experiment.keeps_runs


def _plot(args: argparse.Namespace) -> None:
    from metaspike.app.compare import PLAN
    from metaspike.app.plots import plot_run
    from metaspike.app.reproduce import RECORD
    from metaspike.app.runs import finished_result, recorded_processes, refuse_several_processes, train_resume_command

    refuse_several_processes("plot", "run it without torchrun")
    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: {'no such folder' if not folder.exists() else 'not a folder'} (plot takes a run "
                         "folder, e.g. runs/permuted-mnist5k-meta5-30-30-seed1)")
    if not (folder / "accuracy_matrix.csv").exists():
        for record, command in ((PLAN, "compare"), (RECORD, "reproduce")):
            if (folder / record).is_file():
                one_run = ("(finished runs are reused); `metaspike plot` redraws one run of it"
                           if command == "compare" or _keeps_runs(folder / record) else "(it keeps no runs to plot)")
                raise ValueError(f"{folder} is a {command} folder: `metaspike {command} --resume {folder}"
                                 f"{_recorded_imports(folder / record)}` redraws its table and figures {one_run}")
        if (folder / "config.json").is_file():
            from metaspike.app.runs import is_complete

            if is_complete(folder):
                raise ValueError(f"{folder} is a finished run without its accuracy_matrix.csv (moved or deleted), "
                                 "which its figures are drawn from; its metrics.json and curves.csv hold the numbers")
            if not (folder / "curves.csv").is_file():  # (a run stopped in its first task draws its epochs so far)
                raise ValueError(f"{folder} has measured nothing yet (stopped before its first evaluation): continue "
                                 f"it with: {train_resume_command(folder, recorded_processes(folder))}")
        else:
            runs = sorted(sub.name for sub in folder.iterdir() if (sub / "config.json").is_file())
            if runs:  # (a folder of runs: a part of a reproduction, or runs/ itself)
                raise ValueError(f"{folder} holds run folders ({listed(runs)}), not a run's results: plot one of them, "
                                 f"e.g. metaspike plot {folder / runs[0]}")
    finished_result(folder)  # (a finished run's files must agree, as where a comparison reads it back: a matrix edited
    # or copied from another run is refused, not drawn, and before --out is made)
    out = None if args.out is None else expanded_path(args.out, "--out")
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: it is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    try:
        written = plot_run(folder, out)
    except PermissionError as err:
        if out is not None:
            raise
        raise OSError(err.errno, f"{err.strerror}; `metaspike plot {folder} --out DIR` draws the figures elsewhere",
                      err.filename) from None
    for path in written:
        print(path)


def _import_given(argv: Sequence[str]) -> tuple[str, ...]:
    """Import the modules named by ``--import`` in a ``train`` or ``compare`` command line, once each; return them as
    a run records them (other commands take no ``--import``: their parser refuses it, and nothing is imported)."""
    if not argv or argv[0] not in ("train", "compare"):
        return ()
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument(FLAG, dest="imports", action="append", default=[])
    return import_modules(pre.parse_known_args(argv)[0].imports)


def _escape_unencodable_output() -> None:
    """Let stdout and stderr write what their encoding cannot hold as escapes (``\\xe9``) instead of raising: with an
    ASCII-only terminal (``PYTHONIOENCODING=ascii``) a run under a non-ASCII ``--out`` finished, wrote its files and
    then failed on printing its folder, exiting 2 as if the run had failed."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # (a replaced stream may have none)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """A warning in the command's own process as one ``metaspike: warning:`` line, as the command's own warnings read:
    Python's form names the line of the library's first caller, which there is Python's own ``<frozen runpy>``.

    Example:
        >>> _show_warning(UserWarning("the gain diverges"), UserWarning, "<frozen runpy>", 88, sys.stdout)
        metaspike: warning: the gain diverges
    """
    kind = "" if category is UserWarning else f"{category.__name__}: "
    print(f"metaspike: warning: {kind}{message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaspike`` console script; returns the exit status.

    Example:
        >>> main(["train", "--tasks", "0"])  # doctest: +SKIP
        metaspike: error: --tasks must be an integer >= 1, got 0
        2
    """
    if argv is None:  # the command's own process (not a caller's): steps reuse freed memory instead of faulting,
        keep_freed_memory()  # SIGTERM stops it as Ctrl-C does (both even where they land in a finalizer), a path
        _escape_unencodable_output()  # its terminal cannot encode is escaped, and a warning reads as the command's own
        warnings.showwarning = _show_warning
        with handling_stops():  # (after it, a SIGTERM while the interpreter shuts down, as torchrun sends when a peer
            return _main(list(sys.argv[1:]))  # died, ends it quietly)
    return _main(list(argv))


def _recorded_imports(record: Path) -> str:
    """The ``--import`` flags a comparison's ``plan.json`` records (its base run's), for a command that continues it;
    none where the file says none or cannot be read (its own command then names what it lacks)."""
    from metaspike.files import read_json

    try:
        return import_flags(read_json(record).get("base", {}).get("imports"))
    except (OSError, ValueError, AttributeError):
        return ""


def _say_if_thread_setting_ignored() -> None:
    """One line where ``OMP_NUM_THREADS`` holds what OpenMP ignores (0, a negative number, text): the run then takes
    the machine's thread count, which its results record, not the one asked for."""
    value = os.environ.get("OMP_NUM_THREADS")
    if value is not None and not re.fullmatch(r"\s*0*[1-9][0-9]*(\s*,\s*0*[1-9][0-9]*)*\s*", value):
        print(f"metaspike: OMP_NUM_THREADS={value!r} is not a positive integer, so it is ignored: this run uses "
              f"{torch.get_num_threads()} threads", file=sys.stderr)


def _main(argv: list[str]) -> int:
    """:func:`main` on ``argv``: the exit status, every failure a caller can mend as one line."""
    from metaspike.training import TrainingDiverged

    try:
        imported = _import_given(argv)  # (before the parser, whose help lists the registered rules)
        args = _parse(argv)
        args.argv = argv
        for flag in ("out", "data_dir"):
            folder = getattr(args, flag, None)
            if folder == "":  # (Path("") is the current folder: never what was meant)
                raise ValueError(f"--{flag.replace('_', '-')} must name a folder, got ''")
            if flag == "data_dir" and folder is not None and expanded_path(folder, "--data-dir").is_file():
                raise ValueError(f"--data-dir {folder} is a file; it names the folder that holds each dataset's "
                                 "folder (mnist/, fashion-mnist/, ...)")
        if hasattr(args, "imports"):
            args.imports = imported
        _say_if_thread_setting_ignored()
        try:
            with warnings.catch_warnings():  # (the commands say it themselves, with the flags that set the learning)
                warnings.filterwarnings("ignore", category=LearnedNothingWarning)
                command = {"train": _train, "compare": _compare, "plot": _plot, "reproduce": reproduce_cli.run}
                command[args.command](args)
            raise_kept_stop()  # (one that landed in a finalizer where no run's guard named it)
        finally:  # (inside the handlers below: a Ctrl-C landing here is one line too)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    except (ValueError, ImportError, TrainingDiverged) as err:
        print(f"metaspike: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as err:
        lost = _lost_process(err)
        if lost is not None:
            print(f"metaspike: error: {lost}", file=sys.stderr)
            return 2
        failure = allocation_failure(err)
        if failure is None:
            raise
        print(f"metaspike: error: {failure}; a smaller --hidden, --batch-size, --samples-per-task or --eval-samples "
              "needs less", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that vanished, a file that cannot be read
        where = f" {err.filename}" if err.filename else ""
        print(f"metaspike: error: cannot read or write{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # (a run's Interrupted says where and how to continue)
        forget_kept_stop()
        terminated = caused_by_sigterm(err)
        stopped = "terminated (SIGTERM)" if terminated else "interrupted"
        print(f"metaspike: {stopped}; {err}" if str(err) else f"metaspike: {stopped}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    return 0


if __name__ == "__main__":  # python -m metaspike.app.cli (the command itself is python -m metaspike)
    sys.exit(main())
