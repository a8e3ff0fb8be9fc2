"""Stages that several runs of a grid share, run once (``lit3drft.sweep``).

The arms of an ablation often begin with the same stage: SFT, SFT -> SFT and SFT -> RL of one seed train a
bit-identical SFT stage, as do the four KL coefficients of ``ablation_kl`` (beta only acts in GRPO). A stage's
result depends on the run's seed, data, model, trainer and evaluation settings, the stages before it and its own
settings, and on ``grpo``/``pretrain`` only when it is of that kind; two runs whose first ``k`` stages agree on all
of that (``prefix_key``) train the same weights in them, because every stage after the first starts from a seed of
its own (``fit.stage_seed``). The sweep then trains those stages once, in a run of their own under
``<output_dir>/<experiment>/_shared/<key>``, and copies the finished stage directories (weights, logs, without
the Lightning checkpoints) into each branch before it starts: the branch's ``fit`` loads them as stages finished
earlier and goes on. ``SHARED.json`` in each copied stage directory, and the ``shared_*`` columns of the branch's
row in ``runs.csv``, say where they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lit3drft.config import RunConfig, run_dir_of, to_yaml

SHARED_DIR = "_shared"
"""Directory (under an experiment's run directory) of the runs that train shared stages."""

FINAL_ONLY = ("splits", "write_predictions")
"""``eval`` keys that only act on a run's final evaluation, never on its stages."""


def prefix_key(cfg: RunConfig, k: int) -> str:
    """Hash of everything the first ``k`` stages of ``cfg`` depend on.

    Example:
        >>> from lit3drft.config import StageConfig
        >>> sft, rl = StageConfig(kind="sft"), StageConfig(kind="grpo")
        >>> a, b = RunConfig(stages=[sft, rl]), RunConfig(stages=[sft, sft], run_name="other")
        >>> prefix_key(a, 1) == prefix_key(b, 1), prefix_key(a, 2) == prefix_key(b, 2)
        (True, False)
    """
    tree: dict[str, Any] = OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[assignment]
    for key in ("run_name", "output_dir", "sweep"):
        tree.pop(key)
    tree["stages"] = tree["stages"][:k]
    kinds = {s["kind"] for s in tree["stages"]}
    for section in ("grpo", "pretrain"):
        if section not in kinds:
            tree.pop(section)
    for key in FINAL_ONLY:
        tree["eval"].pop(key)
    return hashlib.sha1(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class SharedPrefix:
    """The first ``stages`` stages of the runs ``members`` (indices into the sweep's list), trained once."""

    key: str
    stages: int
    members: list[int]
    steps: int
    """Training steps of the shared stages (of one run)."""


def plan_prefixes(cfgs: list[RunConfig], skip: set[int] | None = None) -> list[SharedPrefix]:
    """Groups of at least two runs (those not in ``skip``) with the same first stages, longest prefixes first;
    a run belongs to one group at most. A prefix may be a whole run's stages (the ``sft`` arm of
    ``ablation_strategy``): that run then only loads them and runs its final evaluation.

    Example:
        >>> from lit3drft.config import StageConfig
        >>> sft, rl = StageConfig(kind="sft", max_steps=10), StageConfig(kind="grpo", max_steps=5)
        >>> runs = [RunConfig(stages=[sft, rl]), RunConfig(stages=[sft, sft]), RunConfig(stages=[rl]),
        ...         RunConfig(stages=[sft])]
        >>> [(p.stages, p.members, p.steps) for p in plan_prefixes(runs)]
        [(1, [0, 1, 3], 10)]
    """
    skip = skip or set()
    free = [i for i in range(len(cfgs)) if i not in skip]
    groups: list[SharedPrefix] = []
    for k in range(max((len(cfgs[i].stages) for i in free), default=0), 0, -1):
        by_key: dict[str, list[int]] = {}
        for i in free:
            if len(cfgs[i].stages) >= k:
                by_key.setdefault(prefix_key(cfgs[i], k), []).append(i)
        for key, members in by_key.items():
            if len(members) > 1:
                steps = sum(s.max_steps for s in cfgs[members[0]].stages[:k])
                groups.append(SharedPrefix(key, k, members, steps))
                free = [i for i in free if i not in members]
    return groups


def saving_note(groups: list[SharedPrefix], cfgs: list[RunConfig], skip: set[int] | None = None) -> str:
    """One line: how many training steps of the runs to do the shared stages save.

    Example:
        >>> from lit3drft.config import StageConfig
        >>> sft, rl = StageConfig(kind="sft", max_steps=10), StageConfig(kind="grpo", max_steps=5)
        >>> runs = [RunConfig(stages=[sft, rl]), RunConfig(stages=[sft, sft])]
        >>> saving_note(plan_prefixes(runs), runs)
        'shared stages: 1 prefix trained once for 2 runs, 10 of 35 training steps saved (29 %)'
    """
    skip = skip or set()
    total = sum(s.max_steps for i, c in enumerate(cfgs) if i not in skip for s in c.stages)
    saved = sum(g.steps * (len(g.members) - 1) for g in groups)
    if not groups:
        return "shared stages: none (no two runs to do begin with the same stages)"
    runs = sum(len(g.members) for g in groups)
    return (f"shared stages: {len(groups)} prefix{'es' if len(groups) > 1 else ''} trained once for {runs} runs, "
            f"{saved} of {total} training steps saved ({100 * saved / max(1, total):.0f} %)")  # fmt: skip


def prefix_run_name(group: SharedPrefix) -> str:
    return f"{SHARED_DIR}/{group.key}"


def prefix_overrides(cfg: RunConfig, group: SharedPrefix) -> list[str]:
    """Overrides that turn a member's override list into the run of the shared stages: its first stages (as
    resolved), no final evaluation, its own run name."""
    stages = OmegaConf.to_container(OmegaConf.structured(cfg).stages)[: group.stages]  # type: ignore[index]
    flow = json.dumps(stages)  # JSON is YAML: one override value
    return [f"stages={flow}", "eval.splits=[]", f"run_name={prefix_run_name(group)}"]


def adopt(prefix_dir: Path, cfg: RunConfig, group: SharedPrefix) -> list[str]:
    """Copy the finished shared stages of ``prefix_dir`` into ``cfg``'s run directory (stages it has finished
    already are left alone); returns the names of the shared stages. ``trainable.pt``, which marks a finished
    stage, is copied last and renamed into place, so a kill leaves a stage either whole or unfinished."""
    from lit3drft.fit import STAGE_DONE, stage_name  # torch and Lightning: only once a branch starts

    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():  # the branch's own config before any stage lands: a kill before its
        (run_dir / "config.yaml").write_text(to_yaml(cfg))  # fit starts still tells which scale the stages are of
    names = [stage_name(i, st) for i, st in enumerate(cfg.stages[: group.stages])]
    meta = json.loads((prefix_dir / "metrics.json").read_text())
    for name in names:
        src, dst = prefix_dir / "stages" / name, run_dir / "stages" / name
        if (dst / STAGE_DONE).exists():
            continue
        if not (src / STAGE_DONE).exists():
            raise FileNotFoundError(f"{src / STAGE_DONE}: the shared stage {name} did not finish")
        for sub in ("csv", "tb"):  # the branch's curves begin with the shared stage's
            if (prefix_dir / sub / name).exists():
                shutil.rmtree(run_dir / sub / name, ignore_errors=True)
                shutil.copytree(prefix_dir / sub / name, run_dir / sub / name)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", STAGE_DONE))
        (dst / "SHARED.json").write_text(json.dumps({"from": str(prefix_dir), "key": group.key,
                                                      "commit": meta.get("commit"),
                                                      "wall_time_s": meta.get("wall_time_s")}, indent=1))  # fmt: skip
        tmp = dst / f".{STAGE_DONE}.tmp"
        shutil.copyfile(src / STAGE_DONE, tmp)
        os.replace(tmp, dst / STAGE_DONE)
    return names


def provenance(prefix_dir: Path, names: list[str]) -> dict[str, Any]:
    """The ``shared_*`` columns of a branch's row."""
    meta = json.loads((prefix_dir / "metrics.json").read_text())
    return {"shared_stages": "+".join(names), "shared_from": str(prefix_dir), "shared_wall_time_s":
            meta.get("wall_time_s"), "shared_commit": meta.get("commit")}  # fmt: skip
