"""The run schema: every shipped YAML loads, bad keys and values fail with the promised message."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from lit3drft.config import ConfigError, RunConfig, describe, field_docs, load_config, to_yaml
from lit3drft.sweep import point_configs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p for p in (ROOT / "experiments").rglob("*.yaml"))


def _dataclasses(cls: type, seen: set | None = None) -> set[type]:
    seen = seen if seen is not None else set()
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for sub in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(sub) and sub not in seen:
                _dataclasses(sub, seen)
    return seen


def test_every_field_has_a_docstring() -> None:
    for cls in _dataclasses(RunConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_yaml_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.stages, f"{path}: no stages"


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "sweep:" in p.read_text()], ids=lambda p: p.name)
def test_every_grid_point_loads(path: Path) -> None:
    points = point_configs(str(path), [])
    assert len(points) > 1
    names = set()
    for overrides in points:
        cfg = load_config(path, overrides)
        assert cfg.sweep is None and cfg.run_name
        names.add(cfg.run_name)
    assert len(names) == len(points), "run names must be unique"


def test_experiments_exist() -> None:
    names = {p.name for p in EXPERIMENTS}
    assert {"sft_tiny.yaml", "grpo_tiny.yaml", "quickstart.yaml", "ablation_kl.yaml", "ablation_strategy.yaml"} <= names


def test_unknown_key_names_key_and_valid_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  betta: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "grpo.betta" in msg and str(bad) in msg and "beta" in msg


def test_bad_choice_names_valid_choices() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["stages=[{kind: ppo}]"])
    assert "kind" in str(err.value) and "'sft', 'grpo'" in str(err.value) and "ppo" in str(err.value)


def test_bad_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="grpo.beta"):
        load_config(None, ["grpo.beta=lots"])


def test_inherit_applies_parents_first(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 3\ngrpo:\n  beta: 0.5\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\ngrpo:\n  beta: 0.1\n")
    cfg = load_config(tmp_path / "child.yaml", ["experiment=x"])
    assert (cfg.seed, cfg.grpo.beta, cfg.experiment) == (3, 0.1, "x")


def test_inherit_cycle_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["grpo.beta=0.01", "stages=[{kind: sft, max_steps: 3}, {kind: grpo, max_steps: 2}]"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(saved) == cfg


def test_describe_lists_nested_keys() -> None:
    keys = {k for k, _, _ in describe()}
    assert {"grpo.beta", "trainer.strategy", "seed", "stages"} <= keys


def test_bad_choice_in_a_file_names_file_key_and_choices(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  loss_type: ppo\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    msg = str(err.value)
    assert str(bad) in msg and "grpo.loss_type" in msg and "dapo" in msg


def test_list_items_and_free_form_keys_on_the_command_line() -> None:
    cfg = load_config(None, ["stages=[{kind: sft}, {kind: grpo}]", "stages.1.lr=0.5", "sweep={seed: [0, 1]}"])
    assert cfg.stages[1].lr == 0.5 and cfg.sweep == {"seed": [0, 1]}
    with pytest.raises(ConfigError, match="no item '2'"):
        load_config(None, ["stages=[{kind: sft}]", "stages.2.lr=1"])


# ------------------------------------------------------------------ bad input, named (issue 9, part 3)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.sources.0.task=captioning",
            r"'data\.sources\[0\]\.task': Invalid value 'captioning', expected one of \['detection', 'grounding'",
        ),
        ("data.tasks=[detection,captioning]", r"data\.tasks: unknown tasks \['captioning'\]; valid: detection"),
        (
            "data.on_bad_sample=ignore",
            r"'data\.on_bad_sample': Invalid value 'ignore', expected one of \['error', 'skip'\]",
        ),
        ("reward.matching=best", r"matching.*\['greedy', 'hungarian'\]"),
        ("pretrain.grounding_think=copy", r"'pretrain\.grounding_think': Invalid value 'copy', expected one of"),
        (
            "data.sources.1.mode=cot",
            r"'data\.sources\[1\]\.mode': Invalid value 'cot', expected one of \['', 'da', 'ta'\]",
        ),
        ("reward.task_weight=.nan", r"task_weight must be finite and >= 0, got nan"),
    ],
)
def test_unknown_task_mode_or_reward_option_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_checkpoints_fail_at_start_naming_key_and_path(tmp_path: Path) -> None:
    from lit3drft.config import check_paths
    from lit3drft.models.build import resolve_checkpoint

    missing = tmp_path / "nowhere"
    cfg = load_config(None, [f"init_from={missing}"])  # loading alone is fine: a grid may make the run later
    with pytest.raises(ConfigError, match=rf"init_from: {missing} does not exist"):
        check_paths(cfg)
    with pytest.raises(ConfigError, match=rf"init_from: {tmp_path} is a directory without a finished stage"):
        check_paths(load_config(None, [f"init_from={tmp_path}"]))
    (tmp_path / "stages" / "0-sft").mkdir(parents=True)
    (tmp_path / "stages" / "0-sft" / "trainable.pt").write_bytes(b"")
    check_paths(load_config(None, [f"init_from={tmp_path}"]))
    check_paths(load_config(None, [f"init_from={tmp_path}/stages/0-sft/trainable.pt"]))

    for path, what in ((missing, "does not exist"), (tmp_path, "has no config.json")):
        cfg = load_config(None, ["model.preset=''", f"model.pretrained={path}"])
        with pytest.raises(ConfigError, match=rf"model\.pretrained: {path} {what}"):
            check_paths(cfg)
        with pytest.raises(FileNotFoundError, match=rf"model\.pretrained='{path}' {what}"):
            resolve_checkpoint(cfg.model)
    with pytest.raises(ConfigError, match="model.pretrained is empty and model.preset is ''"):
        check_paths(load_config(None, ["model.preset=''"]))
    check_paths(load_config(None, []))  # the tiny preset needs no files


def test_off_and_on_are_strings_in_files_and_overrides(tmp_path: Path) -> None:
    """YAML 1.1 reads ``off`` as False: ``grpo.dynamic_sampling=off`` failed with "Invalid value 'False'"."""
    assert load_config(None, ["grpo.dynamic_sampling=off"]).grpo.dynamic_sampling == "off"
    f = tmp_path / "run.yaml"
    f.write_text("grpo:\n  dynamic_sampling: off\nmodel:\n  gradient_checkpointing: true\n")
    cfg = load_config(f)
    assert cfg.grpo.dynamic_sampling == "off" and cfg.model.gradient_checkpointing is True
