"""The run schema and the only YAML reader.

A run config is one closed, typed schema (``RunConfig``, dataclasses through ``OmegaConf.structured``).
YAML files only override it; ``inherit:`` composes files (paths relative to the including file, applied
in order, the including file last); CLI overrides are dotted ``key=value`` pairs applied last. Unknown
keys and bad values fail at load time with the dotted key, the file and the valid choices.

Example:
    >>> cfg = load_config(None, ["grpo.beta=0.04", "stages=[{kind: sft, max_steps: 5}]"])
    >>> cfg.grpo.beta, cfg.stages[0].kind, cfg.stages[0].max_steps
    (0.04, 'sft', 5)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lit3drft.algorithms.config import GRPOConfig
from lit3drft.data.config import DataConfig
from lit3drft.data.perception import PretrainConfig
from lit3drft.models.config import ModelConfig
from lit3drft.rewards.config import RewardConfig


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names key, file and choices."""


@dataclass
class TrainerConfig:
    """Arguments for ``lightning.Trainer`` shared by every stage."""

    accelerator: str = "auto"
    """Lightning accelerator: ``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``."""
    devices: str = "1"
    """Device count or list as Lightning parses it: ``1``, ``2``, ``auto``, ``0,1``."""
    num_nodes: int = 1
    """Number of nodes for multi-node strategies."""
    strategy: str = "auto"
    """Any Lightning strategy name: ``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``, ``deepspeed_stage_2``..."""
    precision: str = "auto"
    """``auto`` = ``bf16-mixed`` on a GPU with bf16, ``32-true`` on CPU; or any Lightning precision string."""
    log_every_n_steps: int = 5
    """Logging interval in optimiser steps."""
    val_every_n_steps: int = 0
    """Run validation every N optimiser steps inside a stage (0 = only at the end of each stage)."""
    limit_val_batches: float = 1.0
    """Fraction (<= 1.0) or number (> 1) of validation batches."""
    checkpoint_every_n_steps: int = 50
    """Save ``last.ckpt`` every N optimiser steps (and at the end of a stage)."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower)."""
    progress_bar: bool = True
    """Show the rich progress bar."""


@dataclass
class StageConfig:
    """One training stage; a run is a list of them, each starting from the previous stage's weights."""

    kind: Literal["sft", "grpo", "pretrain"] = "sft"
    """``sft`` (answer-token cross-entropy), ``grpo`` (RL on verifiable rewards) or ``pretrain`` (perception
    pretraining on rooms rendered on the fly with dense per-token losses, see ``pretrain``; saves an HF directory)."""
    name: str = ""
    """Stage name in logs and directories (default: ``<index>-<kind>``)."""
    max_steps: int = 100
    """Optimiser steps (GRPO: rollout batches, one optimiser step each per iteration)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Linear warm-up as a share of ``max_steps``; cosine decay to ``min_lr_ratio`` after it."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a share of ``lr``."""
    batch_size: int = 0
    """Prompts per optimiser step (GRPO: each sampled ``grpo.num_generations`` times); 0 = ``data.batch_size``."""
    accumulate_grad_batches: int = 1
    """SFT gradient accumulation (GRPO chunks with ``grpo.micro_batch_size`` instead)."""
    gradient_clip_val: float = 1.0
    """Gradient norm clip (0 = none)."""
    sources: list[str] | None = None
    """Names of ``data.sources`` this stage trains on (None = all); the data-mix ablation sets it."""


@dataclass
class EvalConfig:
    """Validation and test decoding."""

    max_new_tokens: int = 256
    """Greedy decoding budget per answer."""
    splits: list[str] = field(default_factory=lambda: ["val", "test"])
    """Splits evaluated at the end of the run (written to ``metrics.json``)."""
    write_predictions: bool = True
    """Write ``predictions.jsonl`` with completions, parsed answers and per-sample rewards."""
    after_stages: bool = False
    """Also test every stage but the last as it ends (metrics under ``<stage name>/test/...`` in ``metrics.json``,
    kept in the stage directory so ``--resume`` does not redo them); fit prints the stages' tables side by side."""


@dataclass
class RunConfig:
    """A whole experiment: data, policy, rewards, GRPO settings, trainer and the list of stages."""

    experiment: str = "default"
    """Experiment name: runs land in ``<output_dir>/<experiment>/<run_name>``."""
    run_name: str = ""
    """Run name (default: derived from the swept keys, or ``run``)."""
    output_dir: str = "runs"
    """Root of run directories."""
    seed: int = 0
    """Global seed (data order, init of new weights, sampling)."""
    init_from: str = ""
    """Start from another run's weights: a run directory (its last finished stage) or a ``trainable.pt``."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets, data mix and loaders."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy: checkpoint or tiny preset, adapters, geometry prior."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights and options (shared by GRPO and the metrics)."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO algorithm settings used by every ``grpo`` stage."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Perception pretraining settings used by every ``pretrain`` stage (``experiments/pretrain_tiny.yaml``)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation/test decoding."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """Training stages in order: ``[sft]``, ``[sft, sft]``, ``[sft, grpo]``, ``[grpo]``..."""
    sweep: dict[str, Any] | None = None
    """Grid: dotted key -> list of values (cartesian product; ``seed`` included). See ``lit3drft.sweep``."""


# ----------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load ``path`` (with its ``inherit:`` chain) over the schema defaults, then apply dotted overrides."""
    merged = OmegaConf.structured(RunConfig)
    layers = _file_layers(Path(path)) if path else []
    for source, layer in layers:
        merged = _merge(merged, layer, source)
    for item in overrides or []:
        merged = _apply_override(merged, item)
    try:
        cfg = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"invalid config: {err}") from err
    _validate(cfg, "")
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only ``true``/``false`` are booleans, so ``off``, ``on``, ``yes`` and ``no`` stay the
    strings that settings such as ``grpo.dynamic_sampling: off`` mean (YAML 1.1 would read ``off`` as False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))  # fmt: skip


def load_yaml(text: str) -> Any:
    """Parse YAML text as config files and ``key=value`` overrides are read (``_Loader``: YAML 1.2 booleans).

    Example:
        >>> load_yaml("a: off\\nb: true\\nc: [on, no]")
        {'a': 'off', 'b': True, 'c': ['on', 'no']}
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """``[(source, layer), ...]`` for ``path`` and the files it inherits, parents first."""
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"inherit cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parents = raw.pop("inherit", None) or []
    parents = [parents] if isinstance(parents, str) else parents
    layers = []
    for parent in parents:
        layers += _file_layers(path.parent / parent, (*seen, path))
    return [*layers, (str(path), OmegaConf.create(raw))]


def _apply_override(merged: DictConfig, item: str) -> DictConfig:
    """Apply one dotted ``key=value`` (value parsed as YAML; list items addressed as ``stages.0.lr``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    node: Any = merged
    for depth, part in enumerate(key.split(".")):
        here = ".".join(key.split(".")[:depth]) or "the top level"
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                raise ConfigError(f"override {item!r}: '{here}' is a list of {len(node)} items, no item {part!r}")
            node = node[int(part)]
        elif isinstance(node, DictConfig) and not node._is_none():
            if part not in node:
                if node._is_typed() or depth == 0:
                    valid = ", ".join(str(k) for k in node)
                    raise ConfigError(f"command line: unknown key '{key}' (valid keys under {here}: {valid})")
                break  # free-form mapping (e.g. sweep): new keys are fine
            node = node._get_node(part)
        else:
            break
    try:
        OmegaConf.update(merged, key, value, merge=True)
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None) or key
        raise ConfigError(f"command line: bad value at '{where}': {str(err).splitlines()[0]}") from err
    return merged


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: unknown key '{key}': {msg}{_choices_hint(key)}") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value at '{key}': {msg}") from err


def _choices_hint(dotted: str) -> str:
    """' (valid keys here: ...)' for the dataclass that should hold ``dotted``."""
    cls: Any = RunConfig
    parts = [p for p in dotted.split(".") if p and not p.isdigit()]
    for part in parts[:-1]:
        hints = _type_hints(cls)
        if part not in hints:
            break
        cls = _dataclass_in(hints[part])
        if cls is None:
            return ""
    if not dataclasses.is_dataclass(cls):
        return ""
    names = [f.name for f in dataclasses.fields(cls)]
    last = parts[-1] if parts else ""
    if last in names:
        return ""
    return f" (valid keys of {cls.__name__}: {', '.join(names)})"


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (itself, ``X | None``, ``list[X]``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _validate(obj: Any, prefix: str) -> None:
    """Check ``Literal`` fields (OmegaConf does not) recursively; name the key and the choices."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            _validate(item, f"{prefix}{i}.")
        return
    if not dataclasses.is_dataclass(obj):
        return
    hints = _type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        choices = _literal_choices(hints[f.name])
        if choices is not None and value not in choices and not (value is None and _is_optional(hints[f.name])):
            raise ConfigError(
                f"bad value {value!r} for '{prefix}{f.name}'; valid choices: {', '.join(map(str, choices))}"
            )
        _validate(value, f"{prefix}{f.name}.")


def _literal_choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            choices = _literal_choices(arg)
            if choices is not None:
                return choices
    return None


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def check_paths(cfg: RunConfig) -> None:
    """Fail before any work when ``init_from`` or ``model.pretrained`` (with ``model.preset: ''``) points nowhere.

    Not part of ``load_config``: grids and ``--print-config`` load configs whose ``init_from`` run is made later.

    Example:
        >>> check_paths(load_config(None, ["init_from=runs/no/such/run"]))
        Traceback (most recent call last):
        ...
        lit3drft.config.ConfigError: init_from: runs/no/such/run does not exist (a run directory, trainable.pt or .ckpt)
    """
    if cfg.init_from:
        path = Path(cfg.init_from).expanduser()
        if not path.exists():
            raise ConfigError(f"init_from: {cfg.init_from} does not exist (a run directory, trainable.pt or .ckpt)")
        if path.is_dir() and not any((path / "stages").glob("*/trainable.pt")):
            raise ConfigError(
                f"init_from: {cfg.init_from} is a directory without a finished stage (stages/*/trainable.pt)"
            )
    if not cfg.model.preset:
        path = Path(cfg.model.pretrained).expanduser()
        if not cfg.model.pretrained:
            raise ConfigError("model.pretrained is empty and model.preset is '': set one of them")
        if not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise ConfigError(
                f"model.pretrained: {cfg.model.pretrained} {what} (a local Hugging Face checkpoint directory)"
            )


# ------------------------------------------------------------------------------------- saving, docs


def run_dir_of(cfg: RunConfig) -> Path:
    """``<output_dir>/<experiment>/<run_name or "run">``: where a run writes everything."""
    return Path(cfg.output_dir) / cfg.experiment / (cfg.run_name or "run")


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what ``config.yaml`` in a run directory holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def flatten(d: dict[str, Any] | DictConfig | ListConfig, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of dicts indexed ``stages.0.lr``)."""
    out: dict[str, Any] = {}
    items = d.items() if isinstance(d, dict | DictConfig) else enumerate(d)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict | DictConfig) or (
            isinstance(value, list | ListConfig) and value and isinstance(value[0], dict | DictConfig)
        ):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """``[(dotted key, default, doc), ...]`` for every field of the schema (``fit --help-config``)."""
    rows = []
    docs = field_docs(cls)
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_in(hints[f.name])
        key = f"{prefix}{f.name}"
        if sub is not None and typing.get_origin(hints[f.name]) is not list:
            rows += describe(sub, f"{key}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((key, repr(default), docs.get(f.name, "")))
    return rows
