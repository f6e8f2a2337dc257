"""Typed run configuration: frozen dataclasses, config files (TOML/YAML/JSON), ``--set`` overrides.

Every key is validated before anything runs; unknown keys and wrong types are ConfigErrors that
name the valid keys. The run hash identifies a configuration (a run directory) independently of
where it is written or on which device it runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """Dataset and loading. ``root`` falls back to $SPARSETRAIN_DATA, then ./data."""

    name: str = "digits"
    root: Optional[str] = None
    download: bool = False
    val_size: int = 0
    augment: bool = True
    batch_size: int = 64
    eval_batch_size: int = 512
    workers: int = 0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """Registered model name; ``width`` scales hidden sizes (Small-Dense)."""

    name: str = "mlp"
    width: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (the RigL paper's recipe by default).

    ``warmup_epochs`` and ``milestones`` (epochs) scale with the training multiplier.
    """

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    decay_bias_and_norm: bool = False
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: Tuple[float, ...] = ()
    gamma: float = 0.1
    grad_clip: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)


#: Layer distribution of each method's source paper, used when ``sparsity.distribution`` is not
#: given: GMP (Zhu & Gupta 2018; the RigL paper's pruning rows, after Gale et al. 2019), SNIP (the
#: RigL paper's SNIP baseline, per layer) and edge-popup (Ramanujan et al. 2020, the same top-k% in
#: every layer) run uniform; every other method the RigL paper's ERK. docs/methods.md lists them.
PAPER_DISTRIBUTIONS = {"gmp": "uniform", "snip": "uniform", "edge_popup": "uniform"}
DEFAULT_DISTRIBUTION = "erk"


def default_distribution(method: str) -> str:
    """The layer distribution method ``method`` defaults to (its source paper's)."""
    return PAPER_DISTRIBUTIONS.get(method, DEFAULT_DISTRIBUTION)


@dataclass(frozen=True)
class SparsityConfig:
    """Sparse-training method and layer distribution; ``options`` are the method's own
    hyper-parameters (e.g. ``delta_t``, ``alpha``, ``end_fraction``).

    ``backend``: "masked" (dense weights times masks, every device) or "sparse" (CPU only: large
    Linear layers at low density are stored as CSR and trained with sparse kernels, see
    docs/performance.md); ``backend_options`` go to the compressed storage policy (``sparsetrain.sparsity.storage.BackendPolicy``)
    (``max_density``, ``min_size``, ``overrides``, ``cache_transpose``, ``block_elems``, ``kernel``).
    ``build``: how a sparse-backend run constructs its model: "sparse" (the layers the policy
    compresses are created compressed, never dense: construction memory follows the nonzeros),
    "dense" (built dense, then compressed) or "auto" (sparse where the method starts from random
    masks and the model's init is known module by module, else dense; the log says which).

    ``distribution`` left out (None) becomes the method's paper default
    (:func:`default_distribution`) as the config is built, so the stored and hashed value is
    always a concrete name."""

    method: str = "rigl"
    sparsity: float = 0.9
    distribution: Optional[str] = None
    dense_first: Optional[bool] = None
    dense_last: bool = False
    include: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    custom: Dict[str, float] = field(default_factory=dict)
    erk_power: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)
    backend: str = "masked"
    backend_options: Dict[str, Any] = field(default_factory=dict)
    pattern: str = "unstructured"
    pattern_overrides: Dict[str, str] = field(default_factory=dict)
    build: str = "auto"

    def __post_init__(self):
        if self.distribution is None:  # frozen: resolve the default once, as the config is built
            object.__setattr__(self, "distribution", default_distribution(self.method))


@dataclass(frozen=True)
class TrainConfig:
    """Length, evaluation, checkpointing, device. ``steps`` > 0 overrides ``epochs``;
    ``multiplier`` is the extended-training factor (2×, 5×). ``init_from``: a run directory whose
    final weights (and masks, if both runs are sparse) this run starts from.
    ``threads``: CPU intra-op threads; 0 = automatic: one thread for models under 1M parameters
    (their matrix products gain nothing from more, and spinning OpenMP threads on a busy machine
    made the default job 12x slower), PyTorch's default otherwise.
    """

    epochs: float = 100.0
    steps: int = 0
    multiplier: float = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    device: str = "auto"
    amp: Any = "off"
    progress: str = "auto"
    tensorboard: bool = False
    deterministic: bool = True
    init_from: Optional[str] = None
    threads: int = 0
    callbacks: Tuple[str, ...] = ()
    trackers: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "amp", amp_mode(self.amp))


AMP_MODES = ("off", "bf16", "fp16")


def amp_mode(value: Any) -> str:
    """``train.amp``: ``off``, ``bf16`` or ``fp16``; true/false (the older boolean, true meaning
    fp16 with GradScaler on CUDA) are accepted."""
    if isinstance(value, bool):
        return "fp16" if value else "off"
    text = str(value).lower() if isinstance(value, (str, int)) else None
    legacy = {"true": "fp16", "false": "off", "1": "fp16", "0": "off", "none": "off", "no": "off"}
    text = legacy.get(text, text)
    if text not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {value!r}")
    return text


@dataclass(frozen=True)
class RunConfig:
    """A whole run. ``out_dir`` holds run directories named by method, sparsity and hash."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    out_dir: str = "runs"


# keys that do not change what is computed, so they stay out of the run hash
_UNHASHED = {"out_dir", "data.root", "data.download", "data.workers", "train.device",
             "train.progress", "train.tensorboard", "data.eval_batch_size", "train.checkpoint_every", "train.threads",
             "train.trackers"}


def to_dict(cfg) -> Dict[str, Any]:
    """Plain nested dict (tuples become lists) for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flat_items(d: Mapping[str, Any], prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not key.endswith("options") and key not in ("sparsity.custom", "sparsity.pattern_overrides"):
            yield from flat_items(v, key + ".")
        else:
            yield key, v


# keys added later: left out of the hash while at their default, so older run directories keep theirs
_HASHED_UNLESS = {"train.init_from": None, "sparsity.backend": "masked", "sparsity.backend_options": {},
                  "sparsity.pattern": "unstructured", "sparsity.pattern_overrides": {}, "train.callbacks": [],
                  "sparsity.build": "auto"}
# values hashed as their older spelling, so that runs written before keep their directories
_HASHED_AS = {("train.amp", "off"): False, ("train.amp", "fp16"): True}


def run_hash(cfg: RunConfig) -> str:
    """Short stable hash of everything that changes the result."""
    items = sorted((k, _HASHED_AS.get((k, v), v) if isinstance(v, str) else v)
                   for k, v in flat_items(to_dict(cfg))
                   if k not in _UNHASHED and not (k in _HASHED_UNLESS and v == _HASHED_UNLESS[k]))
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()[:10]


# --- building from dicts -------------------------------------------------------------------
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the dataclass field type ``tp`` or raise a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            out = tp(value) if tp is float else int(str(value)) if not isinstance(value, float) else value
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        if tp is int and isinstance(out, float):
            if not out.is_integer():
                raise ConfigError(f"{key} must be an integer, got {value!r}")
            out = int(out)
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    if origin in (tuple, typing.Tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        if len(args) == 2 and args[1] is not Ellipsis:
            if len(value) != 2:
                raise ConfigError(f"{key} must have 2 entries, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        return tuple(v if inner is Any else _coerce(v, inner, key) for v in value)
    if origin in (dict, typing.Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table/mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {str(k): v if inner is Any else _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    return value


def coerce_fields(cls, data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``data``'s values converted to the field types of dataclass ``cls`` (nested dataclasses are
    built with :func:`from_dict`); keys are named ``prefix + name`` in errors. Unknown keys are
    ConfigErrors. The one coercion of config values: RunConfig sections and method options."""
    fields = [f.name for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + u for u in unknown]}; valid keys in "
                          f"'{prefix.rstrip('.') or 'root'}': {', '.join(fields)}")
    out = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            out[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            out[name] = _coerce(value, tp, prefix + name)
    return out


def from_dict(cls, data: Mapping[str, Any], prefix: str = ""):
    """Build dataclass ``cls`` from a (possibly partial) nested mapping; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"section '{prefix.rstrip('.') or 'root'}' must be a table, got {data!r}")
    return cls(**coerce_fields(cls, data, prefix))


def parse_value(text: str) -> Any:
    """``--set`` value: JSON if it parses (numbers, true/false, lists, tables), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(data: Dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` to the nested dict ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value (e.g. sparsity.sparsity=0.95), got '{assignment}'")
    key, text = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set got an empty key in '{assignment}'")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = parse_value(text)


def read_file(path: str | Path) -> Dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing .toml/.yaml/.json file")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            return tomllib.loads(text)
        if p.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                raise ConfigError("YAML configs need PyYAML: pip install 'sparsetrain[yaml]'") from None
            return yaml.safe_load(text) or {}
        if p.suffix == ".json":
            return json.loads(text)
    except ConfigError:
        raise
    except Exception as e:  # parser errors of three libraries
        raise ConfigError(f"cannot parse config file '{p}': {e}".splitlines()[0]) from None
    raise ConfigError(f"config file '{p}' must end in .toml, .yaml, .yml or .json")


def merge(base: Dict[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge, ``extra`` wins."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def load_config(path: Optional[str] = None, overrides: Tuple[str, ...] = (),
                base: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """Defaults ← ``base`` ← config file ← ``--set`` overrides, validated."""
    data: Dict[str, Any] = dict(base or {})
    if path:
        data = merge(data, read_file(path))
    for a in overrides:
        apply_override(data, a)
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


#: the largest integer a config key may hold (torch and NumPy take 64-bit integers)
MAX_INT = 2**63 - 1
#: NumPy's seed range (seed_everything seeds torch, random and NumPy with ``seed``)
MAX_SEED = 2**32 - 1


def _check_numbers(cfg: RunConfig) -> None:
    """Every number in the config (lists included, method options aside) is finite and fits 64 bits."""
    for key, value in flat_items(to_dict(cfg)):
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be a finite number, got {v}")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise ConfigError(f"{key} is out of range (at most {MAX_INT} in size), got {v}")


def validate(cfg: RunConfig) -> None:
    """Value checks that need no data or model."""
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}] (2**32 - 1), got {cfg.seed}")
    _check_numbers(cfg)
    checks = [
        (cfg.sparsity.distribution != "custom" or bool(cfg.sparsity.custom),
         "sparsity.distribution=custom needs the table sparsity.custom of layer name -> density, e.g. "
         "--set 'sparsity.custom={\"layers.0.weight\": 0.05}' (an unknown name is an error that lists them)"),
        (0.0 <= cfg.sparsity.sparsity < 1.0, f"sparsity.sparsity must be in [0, 1), got {cfg.sparsity.sparsity}"),
        (cfg.data.batch_size > 0, f"data.batch_size must be positive, got {cfg.data.batch_size}"),
        (cfg.data.val_size >= 0, f"data.val_size must be >= 0, got {cfg.data.val_size}"),
        (cfg.train.epochs > 0 or cfg.train.steps > 0, "set train.epochs > 0 or train.steps > 0"),
        (cfg.train.steps >= 0, f"train.steps must be >= 0, got {cfg.train.steps}"),
        (cfg.train.threads >= 0, f"train.threads must be >= 0 (0 = automatic), got {cfg.train.threads}"),
        (cfg.sparsity.backend in ("masked", "sparse"),
         f"sparsity.backend must be masked or sparse, got '{cfg.sparsity.backend}'"),
        (cfg.sparsity.build in ("auto", "sparse", "dense"),
         f"sparsity.build must be auto, sparse or dense, got '{cfg.sparsity.build}'"),
        (cfg.sparsity.build != "sparse" or cfg.sparsity.backend == "sparse",
         "sparsity.build=sparse needs sparsity.backend=sparse (a masked run holds dense weights); remove it"),
        (cfg.train.multiplier > 0, f"train.multiplier must be positive, got {cfg.train.multiplier}"),
        (cfg.optim.lr > 0, f"optim.lr must be positive, got {cfg.optim.lr}"),
        (cfg.optim.name in ("sgd", "adam", "adamw"), f"optim.name must be sgd, adam or adamw, got '{cfg.optim.name}'"),
        (cfg.optim.schedule in ("constant", "step", "cosine"),
         f"optim.schedule must be constant, step or cosine, got '{cfg.optim.schedule}'"),
        (cfg.train.progress in ("auto", "on", "off"), f"train.progress must be auto, on or off, got '{cfg.train.progress}'"),
        (0.0 <= cfg.optim.label_smoothing < 1.0, f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}"),
        (cfg.data.eval_batch_size > 0, f"data.eval_batch_size must be positive, got {cfg.data.eval_batch_size}"),
        (cfg.train.epochs >= 0, f"train.epochs must be >= 0, got {cfg.train.epochs}"),
        (min(cfg.train.eval_every, cfg.train.checkpoint_every) >= 0,
         "train.eval_every and train.checkpoint_every must be >= 0 (0: once per epoch)"),
        (min(cfg.optim.weight_decay, cfg.optim.grad_clip, cfg.optim.warmup_epochs, cfg.optim.momentum) >= 0,
         "optim.weight_decay, optim.grad_clip, optim.warmup_epochs and optim.momentum must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _type_name(tp: Any) -> str:
    """Readable type for --help: ``str or null``, ``list of float``, ``table``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (dict, typing.Dict):
        return "table" if not args or args[1] is Any else f"table of {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def key_type(key: str, cls=RunConfig) -> Any:
    """Field type of the dotted config ``key`` (e.g. ``sparsity.dense_first``: ``Optional[bool]``);
    None for a key inside a table (``sparsity.options.delta_t``: the method's own option)."""
    parts = key.split(".")
    for i, name in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if name not in hints:
            raise ConfigError(f"unknown config key '{key}'")
        cls = hints[name]
        if not dataclasses.is_dataclass(cls):
            return cls if i == len(parts) - 1 else None
    raise ConfigError(f"'{key}' is a section, not a config key")


#: what each key means, with its unit (shown by ``sparsetrain train --help``)
KEY_MEANINGS: Dict[str, str] = {
    "data.name": "dataset (sparsetrain list)",
    "data.root": "dataset directory; null: $SPARSETRAIN_DATA, else ./data",
    "data.download": "let torchvision download a missing dataset",
    "data.val_size": "training examples held out for validation (count)",
    "data.augment": "the dataset's standard augmentation on training batches",
    "data.batch_size": "training examples per step, over all processes",
    "data.eval_batch_size": "examples per evaluation batch (speed only)",
    "data.workers": "DataLoader worker processes for evaluation (0: in this process)",
    "data.options": "the dataset's own options (sparsetrain list)",
    "model.name": "model (sparsetrain list), or torchvision:NAME, timm:NAME, package.module:factory (model.options are its keyword arguments)",
    "model.width": "factor on hidden sizes (Small-Dense narrows it)",
    "model.options": "the model's own options",
    "optim.name": "sgd, adam or adamw",
    "optim.lr": "peak learning rate",
    "optim.momentum": "SGD momentum",
    "optim.nesterov": "Nesterov momentum (SGD)",
    "optim.weight_decay": "L2 weight decay",
    "optim.decay_bias_and_norm": "also decay biases and normalisation weights",
    "optim.label_smoothing": "label smoothing of the cross-entropy, in [0, 1)",
    "optim.schedule": "constant, step or cosine learning-rate schedule",
    "optim.warmup_epochs": "linear warm-up length in epochs (scaled by train.multiplier)",
    "optim.milestones": "step schedule: epochs at which lr is multiplied by gamma",
    "optim.gamma": "step schedule: factor at each milestone",
    "optim.grad_clip": "clip the gradient norm to this (0: no clipping)",
    "optim.betas": "Adam/AdamW betas",
    "sparsity.method": "sparse-training method (sparsetrain list)",
    "sparsity.sparsity": "fraction of zero weights over the sparsified layers, in [0, 1); each layer of N "
                         "weights at sparsity s keeps N - floor(s*N) (so density can exceed 1 - s by < 1/N)",
    "sparsity.distribution": "uniform, er, erk or custom: how sparsity is spread over layers",
    "sparsity.dense_first": "keep the first layer dense (null: true for uniform only)",
    "sparsity.dense_last": "keep the last layer dense",
    "sparsity.include": "fnmatch patterns of parameter names to sparsify (empty: every weight matrix)",
    "sparsity.exclude": "fnmatch patterns of parameter names to keep dense",
    "sparsity.custom": "layer name -> density; required by distribution=custom",
    "sparsity.erk_power": "exponent on the ER/ERK layer score",
    "sparsity.options": "the method's own options, e.g. {\"delta_t\": 100} (see docs/methods.md)",
    "sparsity.backend": "masked (every device) or sparse (CSR on CPU)",
    "sparsity.backend_options": "options of the sparse backend",
    "sparsity.build": "sparse backend: auto, sparse (compressed layers created compressed) or dense (built dense, "
                      "then compressed)",
    "sparsity.pattern": "sparsity pattern of every sparsified layer: unstructured, N:M (e.g. 2:4, fixes "
                        "sparsity at 1-N/M), block:RxC (e.g. block:4x4) or channel (whole output channels)",
    "sparsity.pattern_overrides": "fnmatch pattern of weight names -> sparsity pattern, first match wins, "
                                  "e.g. {\"layers.4.weight\": \"unstructured\"}",
    "train.epochs": "training length in epochs (train.steps > 0 wins)",
    "train.steps": "training length in steps (0: use train.epochs)",
    "train.multiplier": "extended-training factor on the length (2, 5, ...)",
    "train.eval_every": "evaluate every N steps (0: once per epoch) and at the end",
    "train.checkpoint_every": "write checkpoint.pt every N steps (0: once per epoch), at the end and "
                              "on SIGTERM/SIGINT",
    "train.device": "auto, cpu, cuda or cuda:N (not hashed)",
    "train.amp": "mixed precision: off, bf16 (autocast, CPU and CUDA) or fp16 (autocast + GradScaler, CUDA only)",
    "train.callbacks": "user callbacks, 'package.module:Class' each (built with no arguments; hooks on_start, on_step_end, on_end)",
    "train.trackers": "experiment trackers receiving each metrics.jsonl record: wandb, mlflow",
    "train.progress": "auto (bar on a terminal, a plain line every minute in a log), on, off",
    "train.tensorboard": "also write TensorBoard scalars to RUN_DIR/tb",
    "train.deterministic": "deterministic cuDNN kernels",
    "train.init_from": "run directory whose final weights (and masks) this run starts from",
    "train.threads": "CPU intra-op threads (0: one for models under 1M parameters, else PyTorch's "
                     "default); recorded, and a resume must use the same count",
    "seed": "random seed of data order, initialisation and masks, in [0, 2**32 - 1]",
    "out_dir": "where run directories are created",
}


def describe_keys(cls=RunConfig, prefix: str = "", meanings: bool = False) -> list[str]:
    """``key (type) = default`` lines for every config key, for --help; with ``meanings``,
    followed by ``: what it means`` (:data:`KEY_MEANINGS`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe_keys(tp, f"{prefix}{f.name}.", meanings)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            name = _type_name(tp)
            line = f"{prefix}{f.name} ({name}) = {default!r}"
            key = prefix + f.name
            lines.append(f"{line}: {KEY_MEANINGS[key]}" if meanings and key in KEY_MEANINGS else line)
    return lines
