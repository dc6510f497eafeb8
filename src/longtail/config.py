"""Run configuration: YAML files validated against dataclasses, with ``key=value`` overrides.

A config file may start from a packaged method recipe (``method: iwb``) or from another file
(``base: other.yaml``); its own keys then override the base, recursively for mappings (lists,
such as ``stages``, are replaced whole). To change one value inside a list, a file lists
``overrides: [stages.0.loss.gamma=2.0, ...]``, the same ``key=value`` strings as the command line;
they apply after the merge (a base file's first), the command line's after them.
Unknown keys are errors that name the closest valid key.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import closest
from .scaling import apply_epoch_scale
from .schedules import SCHEDULES


def _refuse_change(*args, **kwargs):
    raise dataclasses.FrozenInstanceError(
        "a run's config is frozen once validated: keep what a stage decides in its state "
        "(StageKind.state), or change a copy of the config (thaw(config)) before the run starts")


class ReadOnlyDict(dict):
    """The mappings of a frozen config (options, loss, sampler, ...): any change raises."""

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse_change

    def __deepcopy__(self, memo):
        return ReadOnlyDict(copy.deepcopy(dict(self), memo))

    def __reduce__(self):
        return ReadOnlyDict, (dict(self),)


class Settings:
    """Base of the config dataclasses: once :func:`freeze` marks one, setting a field raises."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            _refuse_change()
        super().__setattr__(name, value)


def _freeze_value(value: Any) -> Any:
    if isinstance(value, Settings):
        for f in dataclasses.fields(value):
            object.__setattr__(value, f.name, _freeze_value(getattr(value, f.name)))
        object.__setattr__(value, "_frozen", True)
        return value
    if isinstance(value, dict):
        return ReadOnlyDict({key: _freeze_value(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze_value(item) for item in value)
    return value


def freeze(config: RunConfig) -> RunConfig:
    """A frozen deep copy of ``config``: fields, mappings and lists refuse changes (a run's config
    is settings only; what its stages decide is their state)."""
    return _freeze_value(copy.deepcopy(config))


def thaw(config: RunConfig) -> RunConfig:
    """A mutable copy of a (frozen or not) config."""
    return from_dict(RunConfig, to_dict(config))


@dataclass
class DataConfig(Settings):
    """Which dataset, how it is made long-tailed, and where it lives."""

    dataset: str = "digits"  # digits | cifar10 | cifar100 | newsgroups | text | features | prepared | splitfile | folder
    root: str = ".data"  # splitfile: the folder the lists' paths start from; folder: holds train/, test/, val/
    train_list: str | None = None  # splitfile: `path label` lists (e.g. ImageNet_LT_train.txt)
    val_list: str | None = None
    test_list: str | None = None
    image_size: int = 224  # splitfile/folder: training crop and evaluation centre crop
    workers: int = 8  # splitfile/folder: DataLoader worker processes
    imbalance_factor: float = 100.0
    profile: str = "exp"  # exp | step | explicit
    counts: list[int] | None = None  # explicit per-class counts (profile: explicit)
    selection: str = "shuffle"  # shuffle (Cao et al. 2019) | first | replacement
    selection_seed: int = 0
    val_per_class: int = 0  # balanced validation split from left-out training images
    prepared: str | None = None  # a prepared-dataset file (overrides the fields above)
    download: bool = False
    # text / features (your own data, data/user.py)
    train_file: str | None = None  # text: .csv/.tsv/.jsonl; features: .npz (features, labels[, split])
    test_file: str | None = None  # a separate test file (else split_column / the split array)
    text_column: str | int = "text"  # a column name, or a 0-based position (headerless files)
    label_column: str | int = "label"
    split_column: str | int | None = None  # values train / test
    header: bool | None = None  # csv/tsv: true | false (no header line) | null: none when the columns are positions
    unescape: bool = False  # text: turn literal \n, \t, \r, \\ escapes in the texts into the characters
    name: str | None = None  # the data's name in run names ({data}) and tables (default: train_file's stem)
    subsample: str = "none"  # text/features: none (use as it is) | profile (imbalance_factor, profile)
    class_order: str = "name"  # text/features: name (sorted labels) | count (largest first, ties by name)
    embedder: str = "minilm"  # text: minilm (packaged) or a sentence-transformers model name
    cache_dir: str = ".data/embeddings"


def data_name(data: DataConfig) -> str:
    """The data's name for run names (``{data}`` in ``name``) and tables: ``data.name``, else the
    input file's stem (text / features), else ``newsgroups_lt`` (20NG-LT) or the dataset."""
    if data.name:
        return data.name
    if data.dataset in ("text", "features") and data.train_file:
        return Path(data.train_file).stem
    return "newsgroups_lt" if data.dataset == "newsgroups" else data.dataset


@dataclass
class ModelConfig(Settings):
    encoder: str = "resnet32"  # a registered encoder, or timm:<name> (any timm model)
    pretrained: bool = False  # torchvision's or timm's ImageNet weights, where the encoder has them (needs a download)
    head: str = "linear"
    head_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig(Settings):
    """SGD (the only optimizer the seed papers use)."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    # per-parameter-group overrides: {name substring: {lr: ..., weight_decay: ...}}
    param_groups: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ScheduleConfig(Settings):
    name: str = "multistep"  # multistep | cosine | constant, or any name in longtail.schedules.SCHEDULES
    warmup_epochs: int = 0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    final_lr: float = 0.0  # cosine: value reached after the last epoch


AugmentSpec = str | dict[str, Any]  # an augment name, or {name: ..., **policy options}


@dataclass
class StageConfig(Settings):
    """One stage of a run: what is trained, on what, with which loss and schedule."""

    name: str = "stage1"
    kind: str = "supervised"  # a registered stage kind (engine.stages.STAGE_KINDS): supervised, tau_norm, ncm, posthoc_logit_adjust, method-specific kinds
    epochs: int = 200
    iterations: int = 0  # > 0: the stage lasts this many steps instead (epochs derived, last one cut short)
    batch_size: int = 128
    train: str = "all"  # all | head
    head: str | None = None  # re-initialise the head as this kind before the stage (e.g. linear, lws)
    head_options: dict[str, Any] = field(default_factory=dict)
    features: str = "cached"  # frozen-encoder stages: cached (no augmentation) | online
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "ce"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "instance"})
    # crop_flip | none | randaugment | autoaugment, or a mapping with options: {name: randaugment, num_ops: 2}
    augment: AugmentSpec = "crop_flip"
    mixing: dict[str, Any] | None = None  # {name: mixup|remix, ...}
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_norm: dict[str, Any] | None = None  # {rule: ...} MaxNorm on the head weights
    # load the model weights of this checkpoint instead of training the stage (a shared stage 1)
    init_from: str | None = None
    # train: head, features: online: the frozen encoder's BatchNorm statistics follow the stage's batches (MiSLAS)
    shift_bn: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # method-specific stage options


@dataclass
class EvalConfig(Settings):
    batch_size: int = 1000
    many_threshold: int = 100
    few_threshold: int = 20
    select: str = "last"  # last | best_val (needs data.val_per_class > 0); never the test set
    every: int = 0  # evaluate on the test set every N epochs for the curves (0: only at the end)


@dataclass
class EngineConfig(Settings):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | bool = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | on | off; on a CPU, bf16 where it computes bf16 natively (engine/device.py cpu_has_bf16), fp32 elsewhere
    channels_last: str | bool = "auto"  # auto | on | off
    cuda_graph: str | bool = "auto"  # auto | on | off
    compile: str | bool = "off"  # torch.compile the encoder of whole-network stages: auto (on with CUDA) | on | off
    cudnn_benchmark: str | bool = "off"  # cuDNN autotunes each convolution shape: auto (on with CUDA) | on | off; off: the measured setting
    checkpoint_every: int = 20  # epochs; 0 disables periodic checkpoints
    cpu_threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True
    # stop a stage whose epoch loss exceeds this x its running level (engine/trainer.py DivergenceCheck); 0/null: off
    divergence_factor: float | None = 100.0
    tensorboard: bool = False  # also write metrics.jsonl's records to <run>/tensorboard/ (pip install 'longtail[tensorboard]')
    sync_batchnorm: bool = False  # under torchrun: BatchNorm over the global batch (nn.SyncBatchNorm; CUDA only)


@dataclass
class RunConfig(Settings):
    name: str = "digits_lt_ce"
    seed: int = 0
    output_dir: str = "runs"
    method: str | None = None  # a packaged recipe this config started from (informational)
    epoch_scale: float = 1.0  # multiply the whole-network stages' epochs and epoch events (longtail/scaling.py)
    scaled_by: float = 1.0  # the scale already applied (informational; set when epoch_scale is applied)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    eval: EvalConfig = field(default_factory=EvalConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


# ---------------------------------------------------------------- building from mappings


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(value: Any, tp: Any, where: str) -> Any:
    tp = _strip_optional(tp)
    if value is None:
        return None
    if tp == AugmentSpec:  # a name, or a mapping with a name and the policy's options
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            return dict(value)
        raise ConfigError(
            f"{where} must be an augment name or a mapping with a name (e.g. {{name: randaugment, num_ops: 2}}), "
            f"got {value!r}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value) if tp is float else int(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if tp is int and float(value) != int(value):
            raise ConfigError(f"{where} must be a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls, mapping: dict[str, Any], where: str = "config"):
    """Build dataclass ``cls`` from ``mapping``; unknown keys raise with the closest valid key."""
    names = [f.name for f in dataclasses.fields(cls)]
    hints = _hints(cls)
    kwargs = {}
    for key, value in mapping.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {where}.{key}{closest(key, names)}; valid keys: {', '.join(names)}"
            )
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def to_dict(config) -> dict[str, Any]:
    """The config as plain dicts and lists (a frozen config's mappings and tuples included)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# Keys that cannot change a run's results: the run's name and the recipe it started from (the
# resolved settings are what count), where the run folder and the embedding cache are, and
# display / thread / checkpoint-cadence settings (a resumed run is bit-identical to an uninterrupted one).
RESULT_NEUTRAL_KEYS = frozenset({
    "name", "method", "output_dir", "data.cache_dir", "engine.progress", "engine.tensorboard", "engine.cpu_threads",
    "engine.checkpoint_every",
})


def result_settings(config: RunConfig) -> dict[str, Any]:
    """The config as ``{dotted key: value}`` (``stages.0.loss.name``), less :data:`RESULT_NEUTRAL_KEYS`."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif prefix not in RESULT_NEUTRAL_KEYS:
            flat[prefix] = value

    walk("", to_dict(config))
    return flat


def config_fingerprint(config: RunConfig) -> str:
    """sha256 of :func:`result_settings`: equal for two configs exactly when they give the same results."""
    text = json.dumps(result_settings(config), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """The result settings that differ, as ``key: old -> new`` (``(none)`` where a key is absent)."""
    a, b = result_settings(old), result_settings(new)

    def show(settings: dict[str, Any], key: str) -> str:
        return repr(settings[key]) if key in settings else "(none)"

    return [f"{key}: {show(a, key)} -> {show(b, key)}" for key in sorted(set(a) | set(b), key=_key_order)
            if key not in a or key not in b or a[key] != b[key]]


def _key_order(key: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def read_run_config(path: str | Path) -> RunConfig:
    """The config a run folder recorded (its ``config.yaml``), as written: already resolved, so no
    recipe, base file or epoch scale is applied again; keys added to the schema since take their
    defaults, and stage options that became stage fields move there."""
    return from_dict(RunConfig, _move_stage_options(_read_yaml(Path(path))))


# stage options that became stage fields (older configs and run folders give them as options)
MOVED_STAGE_OPTIONS = ("init_from", "shift_bn")


def _move_stage_options(raw: dict[str, Any], warn: bool = False) -> dict[str, Any]:
    """``stages.N.options.KEY`` -> ``stages.N.KEY`` for :data:`MOVED_STAGE_OPTIONS`."""
    for index, stage in enumerate(raw.get("stages") or []):
        options = stage.get("options") if isinstance(stage, dict) else None
        for key in MOVED_STAGE_OPTIONS:
            if isinstance(options, dict) and key in options:
                if warn:
                    warnings.warn(f"stages.{index}.options.{key} is now stages.{index}.{key}; "
                                  "the config was read that way (write it there)", FutureWarning, stacklevel=3)
                stage[key] = options.pop(key)
    return raw


# ---------------------------------------------------------------- files, recipes, overrides


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass the path of a .yaml file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty; write the config in it (e.g. `method: ce`), or leave out "
                          "the file to train the built-in default")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def method_names() -> list[str]:
    """Names of the packaged method recipes (``method: NAME`` in a config)."""
    folder = resources.files("longtail") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _method_mapping(name: str) -> dict[str, Any]:
    path = resources.files("longtail") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        names = method_names()
        raise ConfigError(
            f"unknown method {name!r}{closest(name, names)}; packaged methods: {', '.join(names)}"
        )
    return yaml.safe_load(path.read_text()) or {}


def _resolve(mapping: dict[str, Any], here: Path | None, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    mapping = dict(mapping)
    base_file = mapping.pop("base", None)
    base: dict[str, Any] = {}
    if base_file is not None:
        path = (here / base_file) if here is not None else Path(base_file)
        if str(path) in seen:
            raise ConfigError(f"config files include each other in a cycle: {' -> '.join(seen)}")
        base = _resolve(_read_yaml(path), path.parent, seen + (str(path),))
    method = mapping.get("method")
    if method is not None and not base_file:
        base = _merge(_resolve(_method_mapping(method), None), base)
    for text in base.pop("overrides", []):  # the base's overrides shape the base; this file's keys win over them
        _apply_override(base, *parse_override(str(text)))
    return _merge(base, mapping)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (['a', 'b', '0', 'c'], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. stages.0.epochs=10)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(mapping: dict[str, Any], path: list[str], value: Any, cls=RunConfig) -> None:
    """Set ``path`` in a raw mapping, validating each step against the dataclass schema."""
    node: Any = mapping
    tp: Any = cls
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        tp = _strip_optional(tp)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{'.'.join(path)}: index {part} is out of range (0..{len(node) - 1})")
            index = int(part)
            if last:
                node[index] = value
                return
            node, tp = node[index], typing.get_args(tp)[0] if typing.get_origin(tp) is list else Any
            continue
        if dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp)]
            if part not in names:
                raise ConfigError(
                    f"unknown key {'.'.join(path[: depth + 1])}{closest(part, names)}; valid keys: {', '.join(names)}"
                )
            child_tp = _hints(tp)[part]
        else:
            child_tp = Any
        if last:
            node[part] = value
            return
        if part not in node or node[part] is None:
            child = _strip_optional(child_tp)
            node[part] = [] if typing.get_origin(child) is list else {}
            if typing.get_origin(child) is list or (dataclasses.is_dataclass(child) and part == "stages"):
                node[part] = [to_dict(StageConfig())]
        node, tp = node[part], child_tp


def load_config(path: str | Path | None = None, overrides: list[str] = (), mapping: dict | None = None) -> RunConfig:
    """Load a config file (or a mapping, or the built-in default), apply overrides, validate.

    The built-in default (no path, no mapping) is plain cross-entropy on the scikit-learn digits
    data made long-tailed: it needs no download.
    """
    if path is not None:
        path = Path(path)
        raw = _resolve(_read_yaml(path), path.parent, (str(path),))
    else:
        raw = _resolve(mapping if mapping is not None else _method_mapping("digits_default"), None)
    if "stages" in raw:
        raw["stages"] = [
            _merge(to_dict(StageConfig()), s) if isinstance(s, dict) else s for s in raw["stages"]
        ]
    file_overrides = raw.pop("overrides", [])
    if not isinstance(file_overrides, list):
        raise ConfigError(f"overrides in a config file must be a list of key=value strings, got {file_overrides!r}")
    for text in [*file_overrides, *overrides]:
        keys, value = parse_override(str(text))
        _apply_override(raw, keys, value)
    config = from_dict(RunConfig, _move_stage_options(raw, warn=True))
    config.name = config.name.replace("{data}", data_name(config.data))
    apply_epoch_scale(config)
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Cross-field checks that a schema cannot express."""
    if not config.stages:
        raise ConfigError("a run needs at least one stage (stages: [...])")
    for i, stage in enumerate(config.stages):
        where = f"stages.{i}"
        if stage.epochs <= 0:
            raise ConfigError(f"{where}.epochs must be positive, got {stage.epochs}")
        if stage.batch_size <= 0:
            raise ConfigError(f"{where}.batch_size must be positive, got {stage.batch_size}")
        if stage.train not in ("all", "head"):
            raise ConfigError(f"{where}.train must be 'all' or 'head', got {stage.train!r}")
        if stage.features not in ("cached", "online"):
            raise ConfigError(f"{where}.features must be 'cached' or 'online', got {stage.features!r}")
        if "name" not in stage.loss:
            raise ConfigError(f"{where}.loss needs a name (e.g. loss: {{name: ce}})")
        if "name" not in stage.sampler:
            raise ConfigError(f"{where}.sampler needs a name (e.g. sampler: {{name: instance}})")
        sched = stage.schedule
        if sched.name not in SCHEDULES:
            raise ConfigError(
                f"{where}.schedule.name {sched.name!r}{closest(sched.name, SCHEDULES)} "
                f"is not one of {', '.join(SCHEDULES)}"
            )
        if stage.iterations < 0:
            raise ConfigError(f"{where}.iterations must be 0 (use epochs) or positive, got {stage.iterations}")
        bad = [] if stage.iterations else [m for m in sched.milestones if not 0 < m < stage.epochs]
        if bad:
            raise ConfigError(f"{where}.schedule.milestones {bad} lie outside 1..{stage.epochs - 1}")
    device = config.engine.device
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise ConfigError(f"engine.device must be auto, cpu, cuda or cuda:N (e.g. cuda:0), got {device!r}")
    if config.data.counts is not None and config.data.profile != "explicit":
        raise ConfigError(f"data.counts is used only with data.profile=explicit (data.profile is "
                          f"{config.data.profile!r}): add data.profile=explicit, or remove data.counts")
    factor = config.engine.divergence_factor
    if factor is not None and factor != 0 and not factor > 1:
        raise ConfigError(f"engine.divergence_factor must be more than 1, or 0 / null (off), got {factor!r}")
    if config.eval.select not in ("last", "best_val"):
        raise ConfigError(f"eval.select must be 'last' or 'best_val', got {config.eval.select!r}")
    if config.eval.select == "best_val" and config.data.val_per_class <= 0:
        raise ConfigError("eval.select: best_val needs a validation split: set data.val_per_class > 0")
