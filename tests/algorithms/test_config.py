"""GRPOConfig: a closed OmegaConf schema with a docstring under every field."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from lit3drft.algorithms import config as config_module
from lit3drft.algorithms.config import GRPOConfig
from lit3drft.config import ConfigError, load_config


def test_every_field_has_a_default_and_a_docstring():
    tree = ast.parse(inspect.getsource(config_module))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GRPOConfig"]
    documented = set()
    for node, nxt in zip(cls.body, cls.body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            documented.add(node.target.id)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert fields == documented
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(GRPOConfig))
    required = {"num_generations", "scale_rewards", "loss_type", "epsilon", "epsilon_high", "importance_sampling_level",
                "beta", "num_iterations", "temperature", "top_p", "top_k", "max_new_tokens",
                "mask_truncated_completions", "dynamic_sampling", "micro_batch_size"}  # fmt: skip
    assert required <= fields


def test_omegaconf_round_trip_and_choices_are_closed():
    schema = OmegaConf.structured(GRPOConfig)
    merged = OmegaConf.merge(schema, {"loss_type": "dr_grpo", "epsilon_high": 0.28, "top_k": 50})
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, GRPOConfig) and cfg.loss_type == "dr_grpo" and cfg.clip_high == 0.28
    assert GRPOConfig().clip_high == GRPOConfig().epsilon
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, {"loss_type": "ppo"})
    with pytest.raises(ValidationError):
        OmegaConf.merge(schema, {"dynamic_sampling": "sometimes"})


@pytest.mark.parametrize(
    "bad",
    [
        {"num_generations": 1},
        {"epsilon": -0.1},
        {"num_iterations": 0},
        {"micro_batch_size": 0},
        {"beta": -1.0},
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": 0},
    ],
)
def test_invalid_values_raise(bad):
    with pytest.raises(ValueError):
        GRPOConfig(**bad)


@pytest.mark.parametrize("override", ["grpo.temperature=0", "grpo.top_p=0", "grpo.top_p=1.2", "grpo.top_k=0"])
def test_bad_sampling_settings_fail_at_load_time_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])
