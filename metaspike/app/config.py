"""The run configuration: one frozen record that is everything needed to rerun a run (``config.json``).

This is the application layer: its errors name the command-line flags that set each field.
"""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from torch import nn
from torch.optim import Optimizer

from metaspike.app.models import (
    BAYESIAN_OPTIMIZERS,
    DEFAULT_LR,
    OPTIMIZER_SETTINGS,
    SAMPLED_EVALUATION,
    available_models,
    build_optimizer,
    default_baseline_strength,
    has_unconsolidated_parameters,
    is_spiking,
    optimizer_kind,
    published_settings,
    uses_batchnorm,
    weight_layer_count,
)
from metaspike.bayesian.synapses import check_magnitude
from metaspike.chained import ChainedOptimizer
from metaspike.checks import (
    FLOAT32_MAX,
    FLOAT32_TINY,
    check_device,
    check_seed,
    finite_number,
    is_finite_number,
    is_number,
    number_in,
    shown,
    unknown_name,
)
from metaspike.continual.baselines import BASELINE_STRENGTHS, EWC_ONLINE_GAMMA, make_baseline
from metaspike.continual.checkpoints import MAX_GLOBAL_EPOCH
from metaspike.continual.freezing import FreezeUnconsolidated
from metaspike.continual.scenarios import DEFAULT_TASKS, SPLIT_MODES, available_scenarios
from metaspike.continual.trainer import LAST_EVALUATED, TrainerConfig
from metaspike.data import dataset_key
from metaspike.rules import check_meta, get_rule
from metaspike.training import Plugin, minimum_batch_size

__all__ = ["RunConfig", "DEFAULT_RULE", "DEFAULT_META", "DEFAULT_INPUT_META", "default_meta", "parse_meta",
           "meta_label", "flag_name", "refuse_freezing_nothing"]

#: The consolidation rule of MetaplasticAdam where none is given (the 2021 paper's).
DEFAULT_RULE = "tanh"
#: Default metaplasticity of the CPU main job, per layer: the first (input) layer stays nearly plastic,
#: every later layer is consolidated strongly. Chosen from the sweep in README ("Why the default is what
#: it is"): with ~800 updates per task |W_h| stays small, so the paper's m = 1.35 barely consolidates.
DEFAULT_INPUT_META = 5.0
DEFAULT_META = 30.0
#: Time steps a spiking model shows each sample for, unless --num-steps says otherwise.
DEFAULT_NUM_STEPS = 8
#: The largest --lr accepted (see the check in RunConfig).
MAX_LR = 10.0
#: The largest --weight-decay accepted.
MAX_WEIGHT_DECAY = 10.0


def default_meta(layers: int) -> tuple[float, ...]:
    """The default per-layer ``meta`` for a network with ``layers`` weight layers.

    Example:
        >>> default_meta(3)
        (5.0, 30.0, 30.0)
    """
    return (DEFAULT_INPUT_META,) + (DEFAULT_META,) * (layers - 1)


def parse_meta(text: str) -> tuple[float, ...]:
    """One ``--meta`` setting: a number, or one number per layer joined by ``,`` or ``:``.

    Example:
        >>> parse_meta("5:30:30"), parse_meta("1.35")
        ((5.0, 30.0, 30.0), (1.35,))
    """
    try:
        values = tuple(float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise ValueError(f"--meta {text!r} is not a number or a list of numbers like 5,30,30") from None
    for value in values:
        check_meta(value, "--meta")
    return values


def meta_label(meta: Sequence[float]) -> str:
    """``(5.0, 30.0, 30.0)`` -> ``"5:30:30"``; ``(10.0,)`` -> ``"10"``.

    Example:
        >>> meta_label((5.0, 30.0, 30.0))
        '5:30:30'
    """
    return ":".join(f"{m:g}" for m in meta)


#: The fields whose flag is not their name with dashes (a flag that takes one or more values is singular).
_FLAGS = {"datasets": "--dataset", "imports": "--import"}


def flag_name(name: str) -> str:
    """The command-line flag of a :class:`RunConfig` field.

    Example:
        >>> flag_name("batch_size"), flag_name("datasets")
        ('--batch-size', '--dataset')
    """
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


MAX_TASKS = 10_000
"""The most tasks a run takes: each evaluation's metrics read a tasks x tasks matrix (800 MB at this size)."""
MAX_NAME_BYTES = 240
"""The longest run folder name (bytes): most file systems take 255, and a name that is taken gets "-2", "-3"..."""
MAX_EVAL_SAMPLES = 1000
"""The largest ``--eval-samples``: each evaluation holds that many weight samples of every layer at once (1,000 of a
784-100-10 network: 320 MB); on the 100-task stream 100 samples gave nearly all of the gain (REPRODUCTION.md)."""


#: The settings only some model kinds take, each with the test of whether a kind takes it.
KIND_SETTINGS: dict[str, Callable[[str], bool]] = {
    "memory_window": lambda model: optimizer_kind(model) in BAYESIAN_OPTIMIZERS,
    "readout_lambda": lambda model: optimizer_kind(model) in ("bimu", "bimu+adam"),
    "eval_samples": lambda model: model in SAMPLED_EVALUATION,
}



_COUNT_LIMITS = {"tasks": (MAX_TASKS, "the metrics read the accuracy matrix, tasks x tasks numbers"),
                 "eval_samples": (MAX_EVAL_SAMPLES, "an evaluation holds that many weight samples of every layer at once")}
"""Counts with an upper limit too, and why."""


def _check_count(key: str, value: object, low: int) -> None:
    """One ``ValueError`` naming the flag of setting ``key`` and its whole accepted range unless ``value`` is an integer
    in it (from ``low``; up to the limit :data:`_COUNT_LIMITS` gives, if any)."""
    high, why = _COUNT_LIMITS.get(key, (None, ""))
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        accepted = f">= {low}" if high is None else f"in {low}..{high} ({why})"
        raise ValueError(f"{flag_name(key)} must be an integer {accepted}, got {value!r}")

def refuse_freezing_nothing(after: int | None, models: Sequence[str], batchnorm_per_task: bool = False) -> None:
    """One ``ValueError`` where ``--freeze-unconsolidated`` is set (``after``) and none of ``models`` has a parameter
    besides its synapses (:func:`~metaspike.app.models.has_unconsolidated_parameters`; besides its BatchNorm too where
    the run keeps that per task, ``batchnorm_per_task``, which freezing leaves learning): a new run or comparison would
    freeze nothing under a name that says it froze. A stored config keeps any value (it loads and resumes).

    Example:
        >>> refuse_freezing_nothing(1, ["leaky", "mlp"])  # (leaky has biases, gains and neuron parameters to freeze)
    """
    if after is None or any(has_unconsolidated_parameters(kind, batchnorm_per_task) for kind in models):
        return
    if any(map(has_unconsolidated_parameters, models)):  # (only BatchNorm, which per-task BatchNorm leaves learning)
        which = (f"model {models[0]!r} has nothing besides its" if len(models) == 1 else
                 f"the models ({', '.join(models)}) have nothing besides their")
        raise ValueError(f"--freeze-unconsolidated: {which} synapses but BatchNorm scales and shifts, which "
                         "per-task BatchNorm (--batchnorm per-task, the default) keeps per task and leaves learning, "
                         "so nothing would freeze; give --batchnorm shared to freeze them, or leave the flag out")
    which = (f"model {models[0]!r} has no parameter besides its synapses (no" if len(models) == 1 else
             f"none of the models ({', '.join(models)}) has a parameter besides its synapses (a")
    raise ValueError(f"--freeze-unconsolidated: {which} bias, learned gain, normalisation scale or neuron parameter), "
                     "so nothing would freeze; leave the flag out")


#: RunConfig's settings that hold one real number (or None)
_FLOAT_SETTINGS = ("lr", "weight_decay", "memory_window", "readout_lambda", "baseline_strength", "baseline_gamma")


def _python_number(value: Any) -> Any:
    """A real number of another kind than ``int`` and ``float`` as a Python one: a numpy integer as an ``int``, a
    numpy float as the shortest decimal that names it (``np.float32(1.35)`` is ``1.35``, as the run's name shows it,
    not ``1.350000023841858``), any other (a ``Fraction``) as a ``float``; anything else, or a number beyond float's
    range, as it is (for the checks to refuse).

    Example:
        >>> from fractions import Fraction
        >>> _python_number(Fraction(1, 4)), _python_number(np.float32(1.35)), _python_number(3), _python_number("3")
        (0.25, 1.35, 3, '3')
    """
    if not is_number(value) or type(value) in (int, float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        return float(str(value)) if isinstance(value, np.floating) else float(value)
    except OverflowError:  # (a Fraction beyond float's range)
        return value


def stored_setting(key: str, value: Any) -> Any:
    """``value`` of the RunConfig field ``key`` as a config holds it (:func:`_python_number` for a real-valued
    setting and each ``meta`` value), so a value given again compares equal to the one stored.

    Example:
        >>> stored_setting("meta", [np.float64(5.0)]), stored_setting("seed", 3)
        ((5.0,), 3)
    """
    if key == "meta" and isinstance(value, (tuple, list)):
        return tuple(_python_number(m) for m in value)
    return _python_number(value) if key in _FLOAT_SETTINGS else value


def import_hint(imports: Sequence[str]) -> str:
    """What to say after an unknown model or rule name: the modules imported (``--import``), or how to name one's own.

    Example:
        >>> import_hint([])
        ' (one of your own: name the module that registers it with --import)'
    """
    if imports:
        return f" (with those that {' '.join(imports)} registers: check the name, or that the module registers it)"
    return " (one of your own: name the module that registers it with --import)"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json``.

    ``model`` is a kind from :func:`metaspike.app.models.available_models` (``"bnn"``: the paper's
    binarized MLP; a spiking neuron model such as ``"leaky"``, with binary synapses and ``num_steps``
    time steps; ``"bimu"``, ``"mesu"``, ``"mlp"``...), so that any run can be rebuilt and resumed from its
    config alone; the kind also says which optimizer trains it (:meth:`make_optimizer`).

    ``meta``, ``rule``, ``lr`` and ``weight_decay`` set the gradient optimizer (:data:`OPTIMIZER_SETTINGS`): left
    ``None``, they take the kind's defaults (``lr``: :data:`DEFAULT_LR`); a kind whose optimizer does not take one
    (SGD takes no ``meta`` or ``rule``; BiMU and MESU none of them) records it as ``None`` whatever was given.

    Long streams: ``samples_per_task`` trains each permuted task on a seeded subset of that many
    samples; ``eval_every`` and ``eval_tasks`` evaluate after every k-th task on a budget of tasks
    (:func:`metaspike.continual.trainer.evaluated_tasks`); ``batch_size=1`` needs a model without BatchNorm.

    ``standardize`` feeds the model ``(x − mean) / std`` with the mean and std of every pixel of the first dataset's
    training split (:class:`metaspike.app.models.Standardize`, the first module of the model), as the papers' long
    streams do; spiking models too (the registry's feed their input as a current at every step, the direct encoder; a
    registered model whose encoder reads intensities in [0, 1], rate or latency, refuses standardized input at its
    first batch).

    ``eval_samples`` is the number of weight samples whose predictions are averaged in evaluation, for the models
    that evaluate on samples (``bimu``: the published 5 by default, as in training; more predict better).

    ``imports`` records the user's modules the run imported first (``--import``, :mod:`metaspike.app.imports`), where
    its model or rule comes from; a run never imports them by itself (``--resume`` asks for the same ``--import``).

    ``memory_window`` is the ``N`` of the Bayesian synapses' optimizer (MESU, BiMU: the prior term is divided
    by ``N``, so the posterior keeps about the last ``N`` samples' evidence), in training samples (at least
    ``batch_size``: :func:`metaspike.bayesian.settings_for_batch`); ``None`` keeps the kind's published setting
    (:func:`metaspike.app.models.build_optimizer`).

    The ``"sequence"`` scenario has one task per dataset: its ``tasks`` is set to ``len(datasets)`` whatever was given
    (``metaspike train`` refuses a ``--tasks`` that differs).

    ``readout_lambda`` (BiMU kinds) starts the output layer's latent weights at ``±readout_lambda`` with their drawn
    signs (:func:`metaspike.bayesian.start_confident`) instead of ``N(0, 0.1²)``; ``None`` keeps the usual start.

    ``baseline`` adds a continual-learning baseline's penalty to the loss
    (:func:`metaspike.continual.baselines.make_baseline`: ``"ewc"``, ``"ewc-online"``, ``"si"``, or ``"random"``,
    EWC's importances shuffled) for models trained by gradient steps of their weights (not the Bayesian kinds, which
    consolidate by themselves); ``baseline_strength`` is its λ (SI: c) and ``baseline_gamma`` EWC-Online's decay,
    both recorded as run (the defaults filled in).

    ``freeze_unconsolidated`` (``K``) lets the parameters that no consolidation acts on (gains, biases, normalisation,
    neuron parameters) learn during the first ``K`` tasks only
    (:class:`metaspike.continual.freezing.FreezeUnconsolidated`); ``None``: during every task.

    Example:
        >>> RunConfig(meta=(1.35,), tasks=2).name
        'permuted-mnist5k-meta1.35-seed1'
    """

    scenario: str = "permuted"
    datasets: tuple[str, ...] = ("mnist5k",)
    tasks: int = DEFAULT_TASKS
    epochs: int = 20
    hidden: tuple[int, ...] = (512, 512)
    meta: tuple[float, ...] | None = None
    rule: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int = 100
    seed: int = 1
    batchnorm: str = "per-task"
    optimizer: str = "per-task"
    split_mode: str = "task"
    device: str = "cpu"
    data_dir: str | None = None
    model: str = "bnn"
    num_steps: int = DEFAULT_NUM_STEPS
    samples_per_task: int | None = None
    eval_every: int = 1
    eval_tasks: int | None = None
    memory_window: float | None = None
    standardize: bool = False
    imports: tuple[str, ...] = ()
    eval_samples: int | None = None
    readout_lambda: float | None = None
    baseline: str | None = None
    baseline_strength: float | None = None
    baseline_gamma: float | None = None
    freeze_unconsolidated: int | None = None

    def __post_init__(self) -> None:
        self._hold_python_numbers()
        if not isinstance(self.imports, tuple) or not all(isinstance(i, str) and i for i in self.imports):
            raise ValueError(f"--import takes module names or .py files, got {self.imports!r}")
        if self.scenario not in available_scenarios():
            raise ValueError(unknown_name("scenario", self.scenario, available_scenarios()))
        if self.model not in available_models():
            raise ValueError(unknown_name("model", self.model, available_models())
                             + self._import_hint())
        if self.split_mode not in SPLIT_MODES:
            raise ValueError(f"--split-mode must be one of {', '.join(SPLIT_MODES)}, got {self.split_mode!r}")
        if (not isinstance(self.datasets, (tuple, list)) or not self.datasets
                or not all(isinstance(name, str) for name in self.datasets)):
            raise ValueError(f"--dataset takes one or more dataset names, got {self.datasets!r}")
        object.__setattr__(self, "datasets", tuple(dataset_key(name) for name in self.datasets))  # (MNIST5K: mnist5k)
        if self.scenario == "sequence":  # (config.json records it too)
            object.__setattr__(self, "tasks", len(self.datasets))
        elif len(self.datasets) > 1:
            raise ValueError(f"--dataset: --scenario {self.scenario} takes one dataset, got {len(self.datasets)} "
                             f"({', '.join(self.datasets)}); give one, or --scenario sequence to train several in turn")
        for key in ("tasks", "epochs", "batch_size", "num_steps", "eval_every"):
            _check_count(key, getattr(self, key), 1)
        trained = 1 if self.scenario == "joint" else self.tasks  # (joint trains its tasks as one)
        if trained * self.epochs > MAX_GLOBAL_EPOCH:  # (a typo of many digits trained for ever)
            why = (f"for {trained} tasks (at most {MAX_GLOBAL_EPOCH:,} epochs in all)" if trained > 1 else
                   "(the most epochs a run's curves.csv holds)")
            raise ValueError(f"--epochs must be an integer in 1..{MAX_GLOBAL_EPOCH // trained:,} {why}, got "
                             f"{self.epochs}")
        check_seed("--seed", self.seed)
        if self.batch_size < minimum_batch_size(uses_batchnorm(self.model)):
            raise ValueError(f"--batch-size 1: model {self.model!r} has BatchNorm, which cannot train on one sample; "
                             "use a model without it (bnn-layernorm, bimu, mesu, mlp), or --batch-size >= 2")
        for key, low in (("samples_per_task", 1), ("eval_tasks", LAST_EVALUATED + 1), ("eval_samples", 1)):
            if getattr(self, key) is not None:
                _check_count(key, getattr(self, key), low)
        if self.samples_per_task is not None and self.samples_per_task < minimum_batch_size(uses_batchnorm(self.model)):
            raise ValueError(f"--samples-per-task {self.samples_per_task}: model {self.model!r} has BatchNorm, which "
                             "cannot train on one sample; give 2 or more, or use a model without it (bnn-layernorm, "
                             "bimu, mesu, mlp)")
        if self.memory_window is not None:
            value = self.memory_window
            if not (is_finite_number(value) and self.batch_size <= value <= FLOAT32_MAX):
                raise ValueError(f"--memory-window must be a number in [{self.batch_size}, {FLOAT32_MAX:g}], from the "
                                 "batch size (N counts training samples; a window under one step overshoots) to "
                                 f"float32's largest, got {shown(value)}")
            if not KIND_SETTINGS["memory_window"](self.model):
                raise ValueError(f"--memory-window applies to models with Bayesian synapses (bimu, mesu, "
                                 f"<neuron>+bimu), not {self.model!r}")
        if self.readout_lambda is not None:
            check_magnitude(self.readout_lambda, "--readout-lambda")
            if not KIND_SETTINGS["readout_lambda"](self.model):
                raise ValueError(f"--readout-lambda applies to models with BiMU synapses (bimu, <neuron>+bimu), "
                                 f"not {self.model!r}")
        if self.eval_samples is not None and not KIND_SETTINGS["eval_samples"](self.model):
            raise ValueError(f"--eval-samples applies to models that evaluate on weight samples "
                             f"({', '.join(SAMPLED_EVALUATION)}); {self.model!r} predicts with one weight per synapse")
        published = published_settings(self.model)
        if self.memory_window is None and published is not None and published["N"] < self.batch_size:
            raise ValueError(f"--batch-size {self.batch_size}: model {self.model!r} keeps a memory window of "
                             f"{published['N']:g} training samples, under one step; use --batch-size <= "
                             f"{published['N']:g} or --memory-window >= {self.batch_size}")
        if not isinstance(self.standardize, bool):
            raise ValueError(f"--standardize is a switch (true or false), got {self.standardize!r}")
        if self.samples_per_task is not None and self.scenario != "permuted":
            raise ValueError(f"--samples-per-task applies to --scenario permuted only, not {self.scenario!r}")
        listed = isinstance(self.hidden, (tuple, list))
        if not listed or not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                                for h in self.hidden):
            given = list(self.hidden) if listed else repr(self.hidden)
            raise ValueError(f"--hidden must list positive integer layer widths (a tuple, one per layer), got {given}")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        self._check_optimizer_settings()
        TrainerConfig(batchnorm=self.batchnorm, optimizer=self.optimizer)  # validates the modes
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        check_device(self.device, "--device")  # (CUDA present, and the device index within its count)
        self._check_baseline()
        self._check_freezing()
        if len(self.name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"the run's folder name would be {len(self.name.encode())} bytes ({self.name[:60]}...), "
                             f"more than a file name may hold ({MAX_NAME_BYTES}): it lists each --dataset and each "
                             "--meta value; give fewer")

    def _hold_python_numbers(self) -> None:
        """Hold the real-valued settings given as another kind of real number (a ``Fraction``, a numpy number) as
        Python numbers (:func:`stored_setting`), which the run's name and ``config.json`` can format."""
        for key in (*_FLOAT_SETTINGS, "meta"):
            object.__setattr__(self, key, stored_setting(key, getattr(self, key)))

    def _check_optimizer_settings(self) -> None:
        """The gradient optimizer's settings (:data:`OPTIMIZER_SETTINGS`): ``None`` for a kind whose optimizer does not
        take one (whatever was given: ``metaspike train`` refuses such a flag), the kind's default where not given, and
        each in range."""
        kind = optimizer_kind(self.model)
        for key, users in OPTIMIZER_SETTINGS.items():
            if kind not in users:
                object.__setattr__(self, key, None)
        if kind not in DEFAULT_LR:
            return
        if kind == "metaplastic-adam":
            layers = weight_layer_count(self.model, self.hidden)  # (None: a registered neuron model, counted once built)
            if self.meta is None:
                object.__setattr__(self, "meta", default_meta(layers) if layers else (DEFAULT_META,))
            if not isinstance(self.meta, (tuple, list)):
                one = f" (meta=({self.meta!r},) for one)" if is_finite_number(self.meta) else ""
                raise ValueError(f"--meta takes one value or one per layer, as a tuple of numbers{one}, got "
                                 f"{self.meta!r}")
            if not self.meta:
                raise ValueError("--meta needs one value, or one per layer")
            object.__setattr__(self, "meta", tuple(self.meta))
            for m in self.meta:
                check_meta(m, "--meta")
            if layers is not None and len(self.meta) not in (1, layers):
                raise ValueError(
                    f"--meta takes one value or one per layer ({layers} for --hidden "
                    f"{' '.join(map(str, self.hidden))}), got {len(self.meta)}"
                )
            if self.rule is None:
                object.__setattr__(self, "rule", DEFAULT_RULE)
            try:
                get_rule(self.rule)
            except ValueError as err:
                raise ValueError(f"{err}{self._import_hint()}") from None
        for key, default in (("lr", DEFAULT_LR[kind]), ("weight_decay", 0.0)):
            if getattr(self, key) is None:
                object.__setattr__(self, key, default)
            finite_number(flag_name(key), getattr(self, key), positive=key == "lr")
        if self.weight_decay > MAX_WEIGHT_DECAY:  # type: ignore[operator]
            raise ValueError(f"--weight-decay must be in [0, {MAX_WEIGHT_DECAY:g}], got {self.weight_decay!r}: the decay "
                             "term weight_decay * w is added to the gradient, and beyond this it drowns the loss's")
        if not FLOAT32_TINY <= self.lr <= MAX_LR:  # type: ignore[operator]
            adam = (" (a binary network's hidden weights start within ±0.05 and Adam moves each by about lr per step)"
                    if kind == "metaplastic-adam" else "")
            raise ValueError(f"--lr must be in [{FLOAT32_TINY:g}, {MAX_LR:g}], got {self.lr!r}: a smaller rate is 0 or "
                             f"loses its digits in float32, and a larger one overshoots at every step{adam}")

    def _check_freezing(self) -> None:
        """``freeze_unconsolidated``: ``None``, or a number of tasks after which a task is left to train, on a scenario
        whose tasks train one after another (a new run or comparison of model kinds with nothing besides their synapses
        is refused by :func:`refuse_freezing_nothing`, and such a kind runs without it in a comparison of several:
        :meth:`for_model`)."""
        after = self.freeze_unconsolidated
        if after is None:
            return
        if self.scenario in ("stream", "joint"):
            why = "has no task boundaries" if self.scenario == "stream" else "trains its tasks as one"
            raise ValueError(f"--freeze-unconsolidated: --scenario {self.scenario} {why}, so no task ends before the "
                             "last to freeze after; use a scenario of tasks in turn, or leave the flag out")
        if self.tasks < 2:
            raise ValueError("--freeze-unconsolidated needs --tasks 2 or more: it freezes after a task, and one must "
                             "follow")
        if isinstance(after, bool) or not isinstance(after, int) or not 1 <= after < self.tasks:
            raise ValueError(f"--freeze-unconsolidated must be an integer in 1..{self.tasks - 1} (the tasks the "
                             f"unconsolidated parameters learn during; at least one of the {self.tasks} --tasks must "
                             f"follow), got {after!r}")

    def _check_baseline(self) -> None:
        """The baseline settings: a known baseline, for a model trained by gradient steps, on a scenario with tasks;
        its strength and EWC-Online's decay in range, filled in with their defaults."""
        if self.baseline is None:
            for key in ("baseline_strength", "baseline_gamma"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{flag_name(key)} applies to a --baseline; name one "
                                     f"({', '.join(BASELINE_STRENGTHS)})")
            return
        if self.baseline not in BASELINE_STRENGTHS:
            raise ValueError(f"--baseline must be one of {', '.join(BASELINE_STRENGTHS)}, got {self.baseline!r}")
        kind = optimizer_kind(self.model)
        if kind in BAYESIAN_OPTIMIZERS:
            raise ValueError(f"--baseline {self.baseline}: model {self.model!r} consolidates through its own Bayesian "
                             f"synapses ({kind}); a baseline regularises the weights of models trained by gradient "
                             "steps (bnn, bnn-layernorm, mlp, the spiking neuron models)")
        if self.scenario == "stream":
            raise ValueError(f"--baseline {self.baseline}: --scenario stream has no task boundaries, where a baseline "
                             "takes the importances of what was learned; use a scenario with tasks")
        if self.scenario == "joint" or self.tasks == 1:
            one = "--scenario joint trains its tasks as one" if self.scenario == "joint" else "the run has one task"
            raise ValueError(f"--baseline {self.baseline}: {one}, so no earlier task is left for its penalty to protect; "
                             "use two or more tasks")
        if self.baseline != "ewc-online":
            if self.baseline_gamma is not None:
                raise ValueError(f"--baseline-gamma is EWC-Online's decay of its running Fisher; --baseline "
                                 f"{self.baseline} takes none")
        else:
            gamma = EWC_ONLINE_GAMMA if self.baseline_gamma is None else self.baseline_gamma
            object.__setattr__(self, "baseline_gamma", number_in("--baseline-gamma", gamma, 0.0, 1.0))
        meaning, _ = BASELINE_STRENGTHS[self.baseline]
        strength = (default_baseline_strength(self.baseline, kind, self.lr, self.tasks, self.baseline_gamma)
                    if self.baseline_strength is None else self.baseline_strength)
        object.__setattr__(self, "baseline_strength", number_in(f"--baseline-strength ({self.baseline}'s {meaning})",
                                                                strength, 0.0, FLOAT32_MAX))

    def _import_hint(self) -> str:
        """What to say after an unknown model or rule name: :func:`import_hint` of the run's own modules."""
        return import_hint(self.imports)

    def for_model(self, model: str) -> "RunConfig":
        """These settings for model kind ``model``, without those it does not take (:data:`KIND_SETTINGS`, and
        ``freeze_unconsolidated`` for a kind with nothing besides its synapses): what a comparison of several kinds runs
        each kind with. A kind trained by another optimizer starts from its own
        optimizer's defaults (a learning rate, or a baseline's strength, means a different step to Adam and to SGD).

        Example:
            >>> RunConfig(model="bimu", batch_size=1, readout_lambda=1.0).for_model("mlp").readout_lambda is None
            True
            >>> RunConfig(model="bnn", lr=0.01).for_model("mlp").lr, RunConfig(model="bnn", lr=0.01).for_model("leaky").lr
            (0.05, 0.01)
            >>> ewc = RunConfig(model="bnn", baseline="ewc")
            >>> ewc.baseline_strength, ewc.for_model("mlp").baseline_strength  # (each optimizer's own default)
            (5000.0, 20.0)
        """
        unset = {key: None for key, takes in KIND_SETTINGS.items()
                 if getattr(self, key) is not None and not takes(model)}
        if self.freeze_unconsolidated is not None and not has_unconsolidated_parameters(model,
                                                                                       self.batchnorm_kept_per_task):
            unset["freeze_unconsolidated"] = None  # (nothing to freeze)
        if optimizer_kind(model) != optimizer_kind(self.model):
            unset.update(dict.fromkeys(OPTIMIZER_SETTINGS))
            if self.baseline != "si":  # (SI's c has one default for every optimizer: one given holds for all)
                unset["baseline_strength"] = None
        return replace(self, model=model, **unset)

    @property
    def name(self) -> str:
        """The run folder's name: scenario, datasets, model (when not ``bnn``), meta and rule (for models
        trained by MetaplasticAdam), seed.

        Example:
            >>> RunConfig(model="bimu", batch_size=1).name
            'permuted-mnist5k-bimu-seed1'
            >>> RunConfig(model="leaky", num_steps=4, meta=(10.0,)).name  # (time steps other than the default 8)
            'permuted-mnist5k-leaky-T4-meta10-seed1'
        """
        model = ("" if self.model == "bnn" else f"-{self.model}") + ("-standardized" if self.standardize else "")
        if self.spiking and self.num_steps != DEFAULT_NUM_STEPS:
            model += f"-T{self.num_steps}"
        if optimizer_kind(self.model) != "metaplastic-adam":
            window = "" if self.memory_window is None else f"-N{self.memory_window:g}"
            ensemble = "" if self.eval_samples is None else f"-eval{self.eval_samples}"
            readout = "" if self.readout_lambda is None else f"-readout{self.readout_lambda:g}"
            return (f"{self.scenario}-{'-'.join(self.datasets)}{model}{window}{readout}{ensemble}"
                    f"{self.baseline_part()}{self.freezing_part()}-seed{self.seed}")
        def named(meta: str) -> str:
            return (f"{self.scenario}-{'-'.join(self.datasets)}{model}-meta{meta}{self.rule_part()}"
                    f"{self.baseline_part()}{self.freezing_part()}-seed{self.seed}")

        name = named("-".join(f"{m:g}" for m in self.meta))  # type: ignore[union-attr]
        if len(name.encode()) <= MAX_NAME_BYTES:
            return name
        # (one m per layer of a deep network: a value repeated k times is written once, "30x89", only where the
        # whole list would not fit, so that every name that fits stays as it was)
        runs = [(m, len(list(group))) for m, group in itertools.groupby(self.meta)]  # type: ignore[arg-type]
        return named("-".join(f"{m:g}" + (f"x{count}" if count > 1 else "") for m, count in runs))

    @property
    def applied_split_mode(self) -> str:
        """The split mode the scenario is made with: ``split_mode`` for ``--scenario split``, else ``"task"`` (the
        command line refuses another for the other scenarios; a run recorded with one never applied it).

        Example:
            >>> RunConfig(scenario="split", split_mode="class").applied_split_mode, RunConfig().applied_split_mode
            ('class', 'task')
        """
        return self.split_mode if self.scenario == "split" else "task"

    @property
    def batchnorm_kept_per_task(self) -> bool:
        """Whether the run keeps a BatchNorm state per task: ``--batchnorm per-task`` on a scenario whose tasks have
        boundaries and are known at test (:attr:`~metaspike.continual.Scenario.per_task_batchnorm`: permuted,
        sequence, a task-incremental split).

        Example:
            >>> split = RunConfig(scenario="split", split_mode="class")
            >>> RunConfig().batchnorm_kept_per_task, split.batchnorm_kept_per_task
            (True, False)
        """
        return self.batchnorm == "per-task" and self.scenario in ("permuted", "sequence", "split") and (
            self.applied_split_mode == "task")

    def stream_part(self) -> str:
        """The stream a comparison's folder is named after: the scenario, a split's mode where it is not
        task-incremental, the datasets. (Runs keep the names they had before the modes were named, so that a
        comparison written then still finds its runs on ``--resume``; their ``config.json`` says the mode.)

        Example:
            >>> RunConfig(scenario="split", split_mode="class-growing", datasets=("digits",)).stream_part()
            'split-class-growing-digits'
        """
        mode = f"-{self.split_mode}" if self.scenario == "split" and self.split_mode != "task" else ""
        return f"{self.scenario}{mode}-{'-'.join(self.datasets)}"

    def rule_part(self) -> str:
        """The run name's part for the consolidation rule where it is not the default: ``"-cascade"``, or nothing.

        Example:
            >>> RunConfig(rule="cascade").rule_part(), RunConfig().rule_part(), RunConfig(model="mlp").rule_part()
            ('-cascade', '', '')
        """
        return "" if self.rule in (None, DEFAULT_RULE) else f"-{self.rule}"

    def freezing_part(self) -> str:
        """The run name's part for ``freeze_unconsolidated``: ``"-freeze1"``, or nothing.

        Example:
            >>> RunConfig(tasks=3, freeze_unconsolidated=1).name
            'permuted-mnist5k-meta5-30-30-freeze1-seed1'
        """
        return "" if self.freeze_unconsolidated is None else f"-freeze{self.freeze_unconsolidated}"

    def baseline_part(self, strength: bool = True) -> str:
        """The run name's part for the baseline: ``"-ewc5000"``, ``"-ewc-online100-gamma0.9"``, or nothing
        (``strength=False``: without the strength, for a comparison whose kinds take different ones).

        Example:
            >>> RunConfig(baseline="ewc").baseline_part(), RunConfig(baseline="ewc").baseline_part(strength=False)
            ('-ewc5000', '-ewc')
        """
        if self.baseline is None:
            return ""
        gamma = "" if self.baseline_gamma is None else f"-gamma{self.baseline_gamma:g}"
        return f"-{self.baseline}{f'{self.baseline_strength:g}' if strength else ''}{gamma}"

    @property
    def rule_setting(self) -> str:
        """The consolidation rule as a table names it where it is not the default (``"rule=cascade"``), or ``""``.

        Example:
            >>> RunConfig(rule="cascade").rule_setting, RunConfig().rule_setting, RunConfig(model="mlp").rule_setting
            ('rule=cascade', '', '')
        """
        return f"rule={self.rule}" if self.rule_part() else ""

    @property
    def baseline_setting(self) -> str:
        """The baseline as a table names it (``"ewc-online lambda=100 gamma=0.9"``), or ``""`` without one.

        Example:
            >>> RunConfig(baseline="si").baseline_setting
            'si c=0.1'
        """
        if self.baseline is None:
            return ""
        gamma = "" if self.baseline_gamma is None else f" gamma={self.baseline_gamma:g}"
        return f"{self.baseline} {BASELINE_STRENGTHS[self.baseline][0]}={self.baseline_strength:g}{gamma}"

    @property
    def freezing_setting(self) -> str:
        """``freeze_unconsolidated`` as a table names it (``"freeze after 1"``), or ``""``.

        Example:
            >>> RunConfig(tasks=3, freeze_unconsolidated=2).freezing_setting
            'freeze after 2'
        """
        return "" if self.freeze_unconsolidated is None else f"freeze after {self.freeze_unconsolidated}"

    def freezing_plugins(self) -> list[Plugin]:
        """A new :class:`~metaspike.continual.freezing.FreezeUnconsolidated` for ``freeze_unconsolidated``, or none.

        Example:
            >>> [type(p).__name__ for p in RunConfig(tasks=2, freeze_unconsolidated=1).freezing_plugins()]
            ['FreezeUnconsolidated']
        """
        return [] if self.freeze_unconsolidated is None else [FreezeUnconsolidated(self.freeze_unconsolidated)]

    def baseline_plugins(self) -> list[Plugin]:
        """A new plugin of this run's baseline (:func:`metaspike.continual.baselines.make_baseline`), or none.

        Example:
            >>> [type(p).__name__ for p in RunConfig(baseline="si").baseline_plugins()]
            ['SynapticIntelligence']
        """
        if self.baseline is None:
            return []
        return [make_baseline(self.baseline, self.baseline_strength, self.baseline_gamma, seed=self.seed)]

    def trainer_config(self) -> TrainerConfig:
        """The :class:`TrainerConfig` of this run.

        Example:
            >>> RunConfig(eval_every=10, eval_tasks=20).trainer_config().eval_tasks
            20
        """
        return TrainerConfig(
            epochs=self.epochs, batch_size=self.batch_size, batchnorm=self.batchnorm, optimizer=self.optimizer,
            seed=self.seed, device=self.device, eval_every=self.eval_every, eval_tasks=self.eval_tasks,
        )

    def make_optimizer(self, model: nn.Module) -> Optimizer | ChainedOptimizer:
        """The optimizer this run's model kind is trained with (:func:`metaspike.app.models.build_optimizer`).

        Example:
            >>> from metaspike.app.models import build_model
            >>> config = RunConfig(model="mlp", hidden=(8,), batch_size=1)
            >>> type(config.make_optimizer(build_model("mlp", [8], (1, 28, 28), 10))).__name__
            'SGD'
        """
        metas: float | Sequence[float] = 0.0 if self.meta is None else self.meta[0] if len(self.meta) == 1 else self.meta
        return build_optimizer(self.model, model, self.lr, metas, self.rule or DEFAULT_RULE, self.weight_decay or 0.0,
                               self.batch_size, self.memory_window)

    @property
    def spiking(self) -> bool:
        """Whether the model is a spiking network (then ``num_steps`` matters)."""
        return is_spiking(self.model)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record written to ``config.json`` (a single ``meta`` as a number).

        Example:
            >>> RunConfig(model="mlp").to_dict()["meta"], RunConfig(meta=(10.0,)).to_dict()["meta"]
            (None, 10.0)
        """
        meta = None if self.meta is None else self.meta[0] if len(self.meta) == 1 else list(self.meta)
        return {**asdict(self), "meta": meta}

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the fields (the keys of :meth:`to_dict`)."""
        return [f.name for f in fields(cls)]
