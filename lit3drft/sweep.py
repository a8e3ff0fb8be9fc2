"""``python -m lit3drft.sweep EXPERIMENT.yaml [key=value ...] [--scale smoke|small|medium|full] [--jobs N]``.

Expands the config's ``sweep:`` block (cartesian product, seeds included) into runs with stable names,
skips finished runs (a run directory with ``metrics.json``, or a row already in ``runs.csv``: delete
the row to run the point again), resumes interrupted ones, and after each run appends one row to
``results/<experiment>/runs.csv`` (swept keys, final metrics, wall time, commit, device), written
atomically and de-duplicated by run name, so a kill never loses or duplicates a row.

A sweep key is either a dotted config key with a list of values (``grpo.beta: [0, 0.04]``) or a *named
variant group*: a name that is not a config key, mapping variant names to override mappings, e.g.::

    sweep:
      strategy:
        sft: {stages: [{kind: sft, max_steps: 60}]}
        sft_rl: {stages: [{kind: sft, max_steps: 40}, {kind: grpo, max_steps: 20}]}
      seed: [0, 1, 2]

``key=value`` overrides that pin swept keys (``strategy=sft_rl seed=1``) select part of the grid.

Runs whose first stages are the same (``lit3drft.shared_stages``: the SFT stage of SFT, SFT -> SFT and SFT -> RL
of one seed) train them once and start from the saved result; the saving is printed when the grid starts, the
branch's row names the shared stages (``shared_*`` columns), and ``--no-share`` turns it off.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from lit3drft.config import ConfigError, RunConfig, load_config, run_dir_of, to_yaml
from lit3drft.shared_stages import adopt, plan_prefixes, prefix_overrides, provenance, saving_note

SCALES = ("smoke", "small", "medium", "full")

SCALE_OVERRIDES: dict[str, dict[str, Any]] = {
    # The grids' files describe the "full" scale; smaller scales shrink steps and data, never the grid.
    "smoke": {"steps": 0.02, "min_steps": 2, "overrides": ["data.max_eval_samples=8", "eval.max_new_tokens=64"]},
    # small: the grids' CPU scale; test split only (a sweep selects nothing on val, and val would double the
    # greedy evaluation, the second cost of a run after GRPO sampling)
    "small": {"steps": 0.5, "min_steps": 4, "overrides": ["data.max_eval_samples=96", "eval.splits=[test]"]},
    # medium: as small, but a leading SFT stage (the warm-up) keeps its full length: at small the tiny base's
    # 250-step warm-up leaves VSI-Bench at ~16 against 48 after 500 (issue 17); the stages after it still halve,
    # so arms that differ after a common warm-up keep equal extra steps
    "medium": {
        "steps": 0.5,
        "warmup_steps": 1.0,
        "min_steps": 4,
        "overrides": ["data.max_eval_samples=96", "eval.splits=[test]"],
    },
    "full": {"steps": 1.0, "min_steps": 1, "overrides": []},
}
"""Per scale: factor on every stage's ``max_steps`` (at least ``min_steps``; ``warmup_steps``: the factor of a first
stage that is SFT in a run without ``init_from``, when given) and extra overrides."""


def expand_grid(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of the grid as ``{sweep key: value or variant name}``, in a stable order.

    Example:
        >>> expand_grid({"grpo.beta": [0, 0.04], "seed": [0, 1]})
        [{'grpo.beta': 0, 'seed': 0}, {'grpo.beta': 0, 'seed': 1}, {'grpo.beta': 0.04, 'seed': 0}, {'grpo.beta': 0.04, 'seed': 1}]
    """
    keys = list(sweep)
    axes = []
    for key in keys:
        values = sweep[key]
        if isinstance(values, dict):
            axes.append(list(values))  # named variants
        elif isinstance(values, list) and values:
            axes.append(values)
        else:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values or a mapping of named variants")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def run_name(point: dict[str, Any]) -> str:
    """Stable, readable run name: ``beta=0.04__seed=1`` (full dotted key when the last part is ambiguous).

    Example:
        >>> run_name({"grpo.beta": 0.04, "strategy": "sft_rl", "data.tasks": ["detection", "spatial"]})
        'beta=0.04__strategy=sft_rl__tasks=detection+spatial'
    """
    lasts = [k.split(".")[-1] for k in point]
    parts = []
    for key, value in point.items():
        short = key.split(".")[-1]
        label = short if lasts.count(short) == 1 else key
        text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{label}={text}".replace("/", "_").replace(" ", ""))
    return "__".join(parts)


def point_overrides(sweep: dict[str, Any], point: dict[str, Any]) -> list[str]:
    """Dotted ``key=value`` overrides that realise one grid point (variants expanded)."""
    out = []
    for key, value in point.items():
        spec = sweep[key]
        if isinstance(spec, dict):
            for k, v in flatten_variant(spec[value]).items():
                out.append(f"{k}={_yaml_value(v)}")
        else:
            out.append(f"{key}={_yaml_value(value)}")
    return out


def flatten_variant(mapping: dict[str, Any]) -> dict[str, Any]:
    """Nested variant overrides -> dotted keys, keeping lists whole (``stages`` stays one value)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flatten_variant(value).items()})
        else:
            out[key] = value
    return out


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def select_points(sweep: dict[str, Any], overrides: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Grid points matching the overrides that pin swept keys, and the remaining (non-swept) overrides."""
    pins: dict[str, str] = {}
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key in sweep:
            pins[key] = value
        else:
            rest.append(item)
    points = [p for p in expand_grid(sweep) if all(_yaml_value(p[k]) == v or str(p[k]) == v for k, v in pins.items())]
    if pins and not points:
        raise ConfigError(f"no grid point matches {pins}; sweep keys and values: {sweep}")
    return points, rest


def scale_overrides(cfg: RunConfig, scale: str) -> list[str]:
    """Overrides that shrink ``cfg`` to ``scale`` (steps of every stage, evaluation data)."""
    if scale not in SCALES:
        raise ConfigError(f"bad --scale {scale!r}; valid choices: {', '.join(SCALES)}")
    spec = SCALE_OVERRIDES[scale]
    out = list(spec["overrides"])
    for i, stage in enumerate(cfg.stages):
        warm_up = i == 0 and stage.kind == "sft" and not cfg.init_from  # an SFT after init_from continues one
        factor = spec.get("warmup_steps", spec["steps"]) if warm_up else spec["steps"]
        steps = max(spec["min_steps"], int(round(stage.max_steps * factor)))
        out.append(f"stages.{i}.max_steps={steps}")
    return out


# ----------------------------------------------------------------------------------------------- results


def results_file(cfg: RunConfig, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / cfg.experiment / "runs.csv"


def append_row(path: Path, row: dict[str, Any]) -> bool:
    """Add ``row`` to ``path`` unless a row with the same ``run`` exists; atomic rewrite. True if added.

    A lock file serialises sweeps of the same experiment running side by side (read-modify-write).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _append_row_locked(path, row)


def _append_row_locked(path: Path, row: dict[str, Any]) -> bool:
    rows = read_rows(path)
    if any(r.get("run") == row["run"] for r in rows):
        return False
    rows.append({k: "" if v is None else v for k, v in row.items()})
    _write_rows(path, rows)
    return True


def order_rows(path: Path, names: list[str]) -> None:
    """Rewrite ``path`` with the rows of ``names`` in that order (the grid's), after any other rows: concurrent
    jobs append in the order they finish, and a table's row order should not depend on which run was faster."""
    if not path.exists():
        return
    with open(path.parent / ".runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(path)
        rank = {n: i for i, n in enumerate(names)}
        ordered = sorted(rows, key=lambda r: (r.get("run") in rank, rank.get(r.get("run"), 0)))
        if ordered != rows:
            _write_rows(path, ordered)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".runs.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def result_row(cfg: RunConfig, point: dict[str, Any], metrics_payload: dict[str, Any],
               scale: str | None = None) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {"run": cfg.run_name}
    row.update({k: v for k, v in point.items()})
    if scale is not None:
        row["scale"] = scale
    row.update(metrics_payload.get("metrics", {}))
    for key in ("wall_time_s", "commit", "device"):
        row[key] = metrics_payload.get(key)
    return row


SCALED_KEYS = ("data.max_eval_samples", "eval.splits", "eval.max_new_tokens")
"""Config keys a scale may change besides the stages' ``max_steps`` (``SCALE_OVERRIDES``)."""


def _scaled_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings a scale changes, from a config as plain containers (``config.yaml`` read without the schema, so a
    run saved under an older schema is still comparable)."""
    out: dict[str, Any] = {f"stages.{i}.max_steps": (st or {}).get("max_steps")
                           for i, st in enumerate(cfg.get("stages") or [])}  # fmt: skip
    for key in SCALED_KEYS:
        section, name = key.split(".")
        out[key] = (cfg.get(section) or {}).get(name)
    return out


def check_scale(cfgs: list[RunConfig], scale: str, results_dir: str | Path) -> None:
    """Refuse to reuse a run recorded or trained at another scale: run names do not carry the scale, so a
    ``--scale medium`` sweep would otherwise take a ``small`` run's row (or finished directory) as its own.
    A recorded row with a ``scale`` column that differs, or a run directory whose ``config.yaml`` differs in the
    scaled settings (steps per stage, evaluation subset), raises a ConfigError naming the row or directory."""
    for cfg in cfgs:
        rows_file = results_file(cfg, results_dir)
        for row in read_rows(rows_file):
            if row.get("run") == cfg.run_name and row.get("scale") and row["scale"] != scale:
                raise ConfigError(f"{rows_file}: run {cfg.run_name} is recorded at --scale {row['scale']}, this sweep "
                                  f"is at --scale {scale}; move that runs.csv and {run_dir_of(cfg).parent}/ aside (or "
                                  "pass --results-dir and output_dir=...) to run the grid at another scale")  # fmt: skip
        saved = run_dir_of(cfg) / "config.yaml"
        if saved.is_file():
            try:
                old = _scaled_settings(yaml.safe_load(saved.read_text()) or {})
            except Exception as err:  # noqa: BLE001 - any unreadable file is named, not a traceback
                raise ConfigError(f"{saved}: cannot be read to check its scale ({err}); move that run aside") from err
            new = _scaled_settings(yaml.safe_load(to_yaml(cfg)))  # the same writer as config.yaml's
            diff = [f"{k}: {old.get(k)} there, {v} here" for k, v in new.items() if old.get(k) != v]
            diff += [f"{k}: {v} there, absent here" for k, v in old.items() if k not in new]
            if diff:
                raise ConfigError(f"{saved} was run with other scaled settings than this sweep (--scale {scale}): "
                                  f"{'; '.join(diff)}; move {run_dir_of(cfg).parent}/ and its runs.csv aside (or "
                                  "pass output_dir=... and --results-dir) to run the grid at another scale")  # fmt: skip


# ----------------------------------------------------------------------------------------------- running


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def child_threads(jobs: int, env: dict[str, str] | None = None) -> int:
    """Intra-op threads for each of ``jobs`` concurrent runs: ``OMP_NUM_THREADS`` if set to a positive integer,
    else available cores // jobs (at least 1).

    Torch starts every process with one thread per core, so N concurrent runs would ask N x cores threads of
    the machine and slow each other down (measured: 2 runs on 2 cores, ~30 s per GRPO step instead of ~13 s).

    Example:
        >>> child_threads(4, {"OMP_NUM_THREADS": "3"})
        3
        >>> child_threads(10**6, {"OMP_NUM_THREADS": "0"})  # not a positive integer: cores // jobs, at least 1
        1
    """
    env = os.environ if env is None else env
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value.isdecimal() and value.isascii() and int(value) > 0:
        return int(value)
    return max(1, available_cores() // max(1, jobs))


def run_point(path: str, overrides: list[str], resume: bool = True, quiet: bool = False, jobs: int = 1) -> int:
    """Run one grid point in a child process (isolation: memory, threads, a crash ends one run only)."""
    cmd = [sys.executable, "-m", "lit3drft.fit", path, *overrides, "--point"]
    if resume:
        cmd.append("--resume")
    out = subprocess.DEVNULL if quiet else None
    env = {**os.environ, "OMP_NUM_THREADS": str(child_threads(jobs))}
    return subprocess.run(cmd, stdout=out, stderr=None, env=env).returncode


def sweep(
    path: str,
    overrides: list[str] | None = None,
    scale: str = "full",
    jobs: int = 1,
    results_dir: str | Path = "results",
    share: bool = True,
    plan_only: bool = False,
) -> list[dict[str, Any]]:
    """Run (or skip, or resume) every selected grid point; return the rows of ``runs.csv`` for them. ``share``:
    stages that runs have in common are trained once (``lit3drft.shared_stages``). ``plan_only``: print the runs
    and the shared stages, run nothing."""
    overrides = list(overrides or [])
    grid = _sweep_of(path)
    if not grid:
        raise ConfigError(f"{path} has no sweep: block; run it with python -m lit3drft.fit")
    bad = [o for o in overrides if o.split("=")[0] == "sweep" or o.startswith("sweep.")]
    if bad:
        raise ConfigError(f"{bad[0]!r}: the grid comes from the file; pin swept keys instead (e.g. seed=0)")
    # the other overrides apply to each point *after* its variant (a variant may add stages they refer to):
    # check every point's config before running any
    tasks = list(zip(select_points(grid, overrides)[0], point_configs(path, overrides, scale)))
    cfgs = [load_config(path, ov) for _, ov in tasks]
    print(f"[sweep] {path}: {len(tasks)} runs at scale {scale}, {jobs} at a time, {child_threads(jobs)} thread(s) each")
    check_scale(cfgs, scale, results_dir)
    finished = {i for i, c in enumerate(cfgs) if (run_dir_of(c) / "metrics.json").exists()
                or any(r.get("run") == c.run_name for r in read_rows(results_file(c, results_dir)))}  # fmt: skip
    groups = plan_prefixes(cfgs, skip=finished) if share else []
    print(f"[sweep] {saving_note(groups, cfgs, skip=finished)}" if share else "[sweep] shared stages: off")
    if plan_only:
        for g in groups:
            names = ", ".join(cfgs[i].run_name for i in g.members)
            print(f"[sweep] shared {g.key}: first {g.stages} stage(s), {g.steps} steps, for {names}")
        return []
    group_of = {i: g for g in groups for i in g.members}
    locks = {g.key: threading.Lock() for g in groups}

    def shared(i: int, ov: list[str]) -> dict[str, Any]:
        """Train the stages run ``i`` shares (once, whichever thread comes first), copy them into its run."""
        group = group_of[i]
        prefix_ov = [*ov, *prefix_overrides(cfgs[i], group)]
        prefix_dir = run_dir_of(load_config(path, prefix_ov))
        with locks[group.key]:
            if not (prefix_dir / "metrics.json").exists():
                start = time.time()
                code = run_point(path, prefix_ov, resume=True, quiet=jobs > 1, jobs=jobs)
                status = "finished" if code == 0 and (prefix_dir / "metrics.json").exists() else f"FAILED (exit {code})"
                print(f"[sweep] shared stages {prefix_dir.name} ({group.stages} stage(s), {len(group.members)} runs): "
                      f"{status} ({time.time() - start:.0f} s)", flush=True)  # fmt: skip
                if not (prefix_dir / "metrics.json").exists():
                    raise RuntimeError(f"the shared stages in {prefix_dir} failed")
        return provenance(prefix_dir, adopt(prefix_dir, cfgs[i], group))

    def one(i: int, point: dict[str, Any], ov: list[str]) -> dict[str, Any] | None:
        cfg = cfgs[i]
        metrics_file = run_dir_of(cfg) / "metrics.json"
        start = time.time()
        recorded = [r for r in read_rows(results_file(cfg, results_dir)) if r.get("run") == cfg.run_name]
        if recorded and not metrics_file.exists():
            # the row is the record (runs/ is not committed): a grid continues on another machine
            print(f"[sweep] {i + 1}/{len(tasks)} {cfg.run_name}: row in runs.csv, skipped", flush=True)
            return recorded[0]
        status, origin = "done earlier", {}
        if not metrics_file.exists():
            try:
                origin = shared(i, ov) if i in group_of else {}
                code = run_point(path, ov, resume=True, quiet=jobs > 1, jobs=jobs)
            except RuntimeError as err:
                print(f"[sweep] {cfg.run_name}: {err}", file=sys.stderr, flush=True)
                code = -1
            status = "finished" if code == 0 and metrics_file.exists() else f"FAILED (exit {code})"
        print(f"[sweep] {i + 1}/{len(tasks)} {cfg.run_name}: {status} ({time.time() - start:.0f} s)", flush=True)
        if not metrics_file.exists():
            return None
        row = {**result_row(cfg, point, json.loads(metrics_file.read_text()), scale), **origin}
        append_row(results_file(cfg, results_dir), row)
        return row

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows = list(pool.map(lambda t: one(t[0], *t[1]), enumerate(tasks)))
    if cfgs:
        order_rows(results_file(cfgs[0], results_dir), [c.run_name for c in cfgs])
    failed = sum(r is None for r in rows)
    if failed:
        print(f"[sweep] {failed} run(s) failed; re-run the same command to retry them", file=sys.stderr)
    return [r for r in rows if r is not None]


def point_configs(path: str, overrides: list[str], scale: str = "full") -> list[list[str]]:
    """For every grid point the overrides select: the full override list that realises it as one run."""
    grid = _sweep_of(path) or {}
    points, rest = select_points(grid, overrides)
    out = []
    for p in points:
        own = [*point_overrides(grid, p), *rest]
        # the scale shrinks *this point's* stages (variants may differ in stages and steps); full changes nothing
        extra = scale_overrides(load_config(path, [*own, "sweep=null"]), scale) if scale != "full" else []
        # The scale's steps are computed from this point's stages *with* the user's overrides (a `stages=[..]` list
        # included), so they go after them: a user's stages list is shrunk like the file's. An explicit
        # `stages.N.max_steps=` of the user is exact and wins; so does any other explicit setting (the scale's
        # evaluation settings go before the user's overrides).
        pinned = {o.partition("=")[0] for o in rest}
        steps = [o for o in extra if o.startswith("stages.") and o.partition("=")[0] not in pinned]
        general = [o for o in extra if not o.startswith("stages.")]
        out.append([*point_overrides(grid, p), *general, *rest, *steps, f"run_name={run_name(p)}", "sweep=null"])
    return out


def _sweep_of(path: str) -> dict[str, Any] | None:
    cfg = load_config(path)
    return cfg.sweep


def has_sweep(path: str) -> bool:
    """True when the file (with its inherit chain) declares a ``sweep:`` block."""
    return bool(_sweep_of(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit3drft.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--scale", default="full", choices=SCALES)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--no-share", action="store_true", help="run every point's stages itself (no shared stages)")
    parser.add_argument("--plan", action="store_true", help="print the runs and the shared stages; run nothing")
    args = parser.parse_intermixed_args(argv)
    try:
        rows = sweep(args.config, args.overrides, args.scale, args.jobs, args.results_dir, share=not args.no_share,
                     plan_only=args.plan)  # fmt: skip
        if args.plan:
            return 0
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    first = point_configs(args.config, args.overrides, args.scale)  # `experiment=` may be overridden
    experiment = load_config(args.config, first[0] if first else []).experiment
    print(
        f"[sweep] {len(rows)} runs in {args.results_dir}/{experiment}/runs.csv; tables: python -m lit3drft.collect {experiment}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
