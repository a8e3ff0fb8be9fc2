"""One GRPO step of lit3drft against TRL's ``GRPOTrainer`` (HF generate path) at equal settings (issue 8).

Both sides load the same tiny Qwen2.5-VL checkpoint directory (the ``tiny`` preset) with the same processor,
get LoRA r=8 (alpha 32, no dropout) on q/k/v/o of the language model, and train on the same 2 prompts of
4 frames (112x112) each: G=8 completions per prompt, exactly 64 new tokens (lit3drft: no stop token; TRL:
``min_new_tokens=64``), temperature 1, vision special tokens suppressed, beta 0 and 0.04, mu=1, the dapo loss,
AdamW, grad-norm clip 1.0, fp32, no gradient checkpointing, ``torch.set_num_threads(--threads)``.

- lit3drft: the real ``GRPOModule`` (generate_group -> score_completions -> group_advantages -> micro-batched
  sequence_logprobs, reference under ``policy.reference()`` when beta > 0 -> grpo_loss -> backward -> clip ->
  AdamW) fitted by a real ``lightning.Trainer`` in a worker thread: a callback (``StepBaton``) lets it take one
  batch at a time and times it from ``on_train_batch_start`` to ``on_train_batch_end``, so what is timed is
  what users run. Micro-batch ``--micro-batch`` (default 8, the GRPOConfig default).
- TRL: ``GRPOTrainer.train()`` with ``per_device_train_batch_size = generation_batch_size = prompts*G``, so
  one optimiser step = one rollout batch. A callback times each step (``on_step_begin`` -> ``on_step_end``)
  and then runs one lit3drft step, so the two alternate inside one process after ``--warmup`` steps each.

Phases (both sides): generation, rewards, log-probs (every log-prob forward: reference and the forward that is
backpropagated), and the rest (backward, optimiser, bookkeeping). Peak RSS of each side comes from a separate
subprocess per side (``--only``) so the peaks do not mix; ``--memory-sweep`` runs lit3drft's step at G=4/8/16
with a fixed micro-batch, one subprocess each. The lit3drft loss on the first step is checked against
``grpo_loss`` on the whole batch's tensors (the micro-batch losses must sum to it), and sampling-time log-probs
against a fresh ``sequence_logprobs`` pass.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py                    # timing + RSS, tiny
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py --memory-sweep 4 8 16 --sweep-sides lit3drft trl
    .venv/bin/python benchmarks/bench_grpo_step.py --preset 3b --device cuda             # GPU only: step time, memory

Levers (``--lever``, lit3drft side only): the fast paths are library code and on by default; a lever switches
one off for the benchmark process (an ablation). With ``--only lit3drft`` the library-default steps and the
lever steps alternate in one process, and the lever's log-probs and LoRA gradients are compared with the
default's on one rollout: ``no-shared-prefix`` (one forward over prompt + completion per row instead of the
prompt once per distinct prompt of a micro-batch with the completions through its KV cache),
``no-visual-reuse`` (the training passes encode the frames again instead of reusing the features kept from
sampling), ``no-merge`` (sample through the unmerged LoRA layers), ``ref-micro-batch`` (the no-grad reference
pass in micro-batches instead of ``GRPOModule.no_grad_chunk_factor`` micro-batches per forward),
``no-merged-reference`` (the reference pass through the unmerged reference adapter instead of folded into the
base weights), ``no-lm-head-checkpoint`` (no activation checkpoint around the LM-head chunk). All four of the first together
with ``--micro-batch 4`` reproduce the step as it was before issue 8's changes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py --only lit3drft --betas 0.04 --lever no-shared-prefix
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py --no-rss --micro-batch 4 \
        --lever no-shared-prefix no-visual-reuse no-merge ref-micro-batch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lit3drft.algorithms import GRPOConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import make_samples  # noqa: E402
from grpo_bench_common import PHASES, Timer, build_3b_checkpoint, peak_rss_mb, rss_mb  # noqa: E402
from grpo_bench_lit import LitSide  # noqa: E402
from grpo_bench_trl import build_trl, make_callback, trl_timed  # noqa: E402


# --------------------------------------------------------------------------------------------------- runners
def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    out = {"median_step_s": round(med["total"], 3), "min_step_s": round(min(r["total"] for r in rows), 3)}
    out["median_cpu_s"] = round(med["cpu"], 3)  # process CPU time: steadier than wall time on a shared machine
    out.update({f"{p}_s": round(med[p], 3) for p in PHASES})
    out["tokens_per_step"] = med["tokens"]
    gen = statistics.median(r["tokens"] / r["generation"] for r in rows)
    out["generated_tok_per_s"] = round(gen, 1)
    out["steps"] = len(rows)
    return out


def timed_row(timer: Any, total: float, cpu: float) -> dict[str, float]:
    """One TRL step's row (wall split by phase, CPU time, generated tokens); resets the timer's token count."""
    split = timer.split(total)
    tokens, timer.tokens = timer.tokens, 0
    return {"total": total, **split, "cpu": cpu, "tokens": float(tokens)}


def run_both(args: argparse.Namespace, beta: float, samples: list) -> dict[str, Any]:
    lit = LitSide(args, beta, samples)
    check = lit.check_loss()  # also the first lit3drft warm-up step
    trl_timer = Timer()
    lit_rows, trl_rows = [], []
    state = {"step": 0}

    def on_step(trl_total: float, trl_cpu: float) -> None:
        row = timed_row(trl_timer, trl_total, trl_cpu)
        if state["step"] >= args.warmup:
            trl_rows.append(row)
        row = lit.step()  # alternate: one lit3drft step after every TRL step
        if state["step"] >= args.warmup:
            lit_rows.append(row)
        state["step"] += 1

    trainer = build_trl(args, beta, samples, args.warmup + args.steps, [make_callback(on_step)])
    trl_timed(trainer, trl_timer)
    trainer.train()
    lit.close()
    res = {"beta": beta, "lit3drft": summarise(lit_rows), "trl": summarise(trl_rows), "loss_check": check}
    res["ratio"] = round(res["lit3drft"]["median_step_s"] / res["trl"]["median_step_s"], 3)
    res["ratio_min"] = round(res["lit3drft"]["min_step_s"] / res["trl"]["min_step_s"], 3)
    res["ratio_cpu"] = round(res["lit3drft"]["median_cpu_s"] / res["trl"]["median_cpu_s"], 3)
    return res


def run_only(args: argparse.Namespace, beta: float, samples: list) -> dict[str, Any]:
    """One side alone (for its peak RSS, or a lever's before/after): warm-up then timed steps."""
    rss0 = rss_mb()
    rows: list[dict[str, float]] = []
    if args.only == "lit3drft":
        lit = LitSide(args, beta, samples)
        rss_setup = rss_mb()
        extra: dict[str, Any] = {"loss_check": lit.check_loss()}
        alternate = bool(args.lever) and not args.no_alternate
        if alternate:  # before/after in one process: baseline and lever steps alternate
            extra["lever_loss_check"] = lit.check_loss(args.lever)
            extra["lever_vs_baseline"] = lit.check_lever(args.lever)
            base_rows: list[dict[str, float]] = []
        for i in range(args.warmup - 1 + args.steps):
            if alternate:
                row = lit.step([])
                if i >= args.warmup - 1:
                    base_rows.append(row)
            row = lit.step()
            if i >= args.warmup - 1:
                rows.append(row)
        if alternate:
            extra["baseline"] = summarise(base_rows)
            extra["lever_over_baseline"] = round(statistics.median(r["total"] for r in rows)
                                                 / extra["baseline"]["median_step_s"], 3)  # fmt: skip
            extra["lever_over_baseline_cpu"] = round(statistics.median(r["cpu"] for r in rows)
                                                     / extra["baseline"]["median_cpu_s"], 3)  # fmt: skip
        lit.close()
    else:
        timer = Timer()
        state = {"step": 0}

        def on_step(total: float, cpu: float) -> None:
            row = timed_row(timer, total, cpu)
            if state["step"] >= args.warmup:
                rows.append(row)
            state["step"] += 1

        trainer = build_trl(args, beta, samples, args.warmup + args.steps, [make_callback(on_step)])
        trl_timed(trainer, timer)
        rss_setup = rss_mb()
        trainer.train()
        extra = {}
    return {"side": args.only, "beta": beta, "G": args.generations, "micro_batch": args.micro_batch,
            "lever": args.lever, **summarise(rows), "rss_start_mb": round(rss0), "rss_after_setup_mb": round(rss_setup),
            "peak_rss_mb": round(peak_rss_mb()), **extra}  # fmt: skip


def subprocess_run(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--steps", str(args.rss_steps), "--warmup", "1",
           "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens), "--frames", str(args.frames),
           "--size", str(args.size), "--tmp", args.tmp, *extra]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_3b(args: argparse.Namespace, samples: list) -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        raise SystemExit("--preset 3b needs a CUDA GPU and torch.cuda.is_available() is False on this machine; "
                         "run it where a GPU is lent (with --device cuda), or use --preset tiny on the CPU.")  # fmt: skip
    if not args.device.startswith("cuda"):
        raise SystemExit("--preset 3b runs on the GPU only: pass --device cuda")
    import gc

    build_3b_checkpoint(args)  # first, so the build is not counted in the peak memory below
    gc.collect()
    torch.cuda.empty_cache()
    results = []
    for finetune in args.finetunes:
        for beta in args.betas:
            args.finetune = finetune
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            lit = LitSide(args, beta, samples)
            try:  # bf16 on a GPU: report the check instead of stopping the timing on a tolerance
                check: dict[str, Any] = lit.check_loss()
            except AssertionError as err:
                check = {"loss_check_failed": str(err)[-400:]}
            rows = []
            for i in range(args.warmup - 1 + args.steps):
                torch.cuda.synchronize()
                row = lit.step()
                torch.cuda.synchronize()
                if i >= args.warmup - 1:
                    rows.append(row)
            results.append({"preset": "3b", "finetune": finetune, "beta": beta, "G": args.generations,
                            **summarise(rows), "check": check, "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)})  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
            lit.close()
            del lit
            gc.collect()
    return results


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["tiny", "3b"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--micro-batch", type=int, default=GRPOConfig().micro_batch_size,
                    help="lit3drft completions per forward/backward chunk")  # fmt: skip
    ap.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.04])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side and beta")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["lit3drft", "trl"], help="one side alone (subprocess mode)")
    ap.add_argument("--lever", nargs="*", default=[], help="lit3drft variants to measure (see module docstring)")
    ap.add_argument("--no-alternate", action="store_true", help="with --only lit3drft --lever: lever steps only")
    ap.add_argument("--finetune", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--finetunes", nargs="+", choices=["lora", "qlora"], default=["lora", "qlora"],
                    help="--preset 3b: the fine-tuning modes measured")  # fmt: skip
    ap.add_argument("--memory-sweep", type=int, nargs="*", default=None, help="G values for lit3drft's peak RSS")
    ap.add_argument("--sweep-sides", nargs="+", choices=["lit3drft", "trl"], default=["lit3drft"])
    ap.add_argument("--no-rss", action="store_true", help="skip the per-side peak-RSS subprocesses")
    ap.add_argument("--rss-steps", type=int, default=3)
    ap.add_argument("--tmp", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lit3drft_bench_grpo"))
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samples = make_samples(args.prompts, args.frames, args.size)
    info = {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": torch.__version__, "load_avg": os.getloadavg(), "prompts": args.prompts, "G": args.generations,
            "new_tokens": args.new_tokens, "frames": args.frames, "size": args.size, "micro_batch": args.micro_batch}  # fmt: skip
    if args.preset == "3b":
        results: Any = run_3b(args, samples)
    elif args.only:
        results = [run_only(args, beta, samples) for beta in args.betas]
        print(json.dumps(results[0] if len(results) == 1 else results))
        return
    elif args.memory_sweep is not None:
        lever = ["--lever", *args.lever, "--no-alternate"] if args.lever else []
        results = [subprocess_run(args, ["--only", side, "--generations", str(g), "--micro-batch", str(args.micro_batch),
                                         "--betas", str(b), *(lever if side == "lit3drft" else [])])  # fmt: skip
                   for side in args.sweep_sides for g in args.memory_sweep or [4, 8, 16] for b in args.betas]  # fmt: skip
        for r in results:
            print(f"{r['side']} G={r['G']:>2} beta={r['beta']:<5} micro-batch {r['micro_batch']} lever {r['lever']}: "
                  f"peak RSS {r['peak_rss_mb']} MB (after set-up {r['rss_after_setup_mb']} MB), "
                  f"step {r['median_step_s']} s")  # fmt: skip
    else:
        results = [run_both(args, beta, samples) for beta in args.betas]
        if not args.no_rss:
            for res in results:
                for side in ("lit3drft", "trl"):
                    r = subprocess_run(args, ["--only", side, "--betas", str(res["beta"]), "--generations",
                                              str(args.generations), "--micro-batch", str(args.micro_batch)])  # fmt: skip
                    res[side]["peak_rss_mb"] = r["peak_rss_mb"]
                    res[side]["rss_after_setup_mb"] = r["rss_after_setup_mb"]
        print_table(results)
    info["load_avg_end"] = os.getloadavg()
    payload = {"info": info, "results": results}
    print(json.dumps(payload))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=1))


def print_table(results: list[dict[str, Any]]) -> None:
    head = "| beta | side | median step s | min | CPU s | generation | rewards | log-probs | rest | gen tok/s | peak RSS MB |"
    print(head + "\n|" + "---|" * 11)
    for res in results:
        for side in ("lit3drft", "trl"):
            r = res[side]
            print(f"| {res['beta']} | {side} | {r['median_step_s']} | {r['min_step_s']} | {r['median_cpu_s']} | "
                  f"{r['generation_s']} | {r['rewards_s']} | "
                  f"{r['logprobs_s']} | {r['rest_s']} | {r['generated_tok_per_s']} | {r.get('peak_rss_mb', '-')} |")  # fmt: skip
        print(
            f"| {res['beta']} | ratio lit3drft/TRL | {res['ratio']} | {res['ratio_min']} | {res['ratio_cpu']} "
            "| | | | | | |"
        )
    for res in results:
        print(f"beta={res['beta']} loss check: {json.dumps(res['loss_check'])}")


if __name__ == "__main__":
    main()
