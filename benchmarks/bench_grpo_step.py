"""One GRPO step of lit3drft against TRL's ``GRPOTrainer`` (HF generate path) at equal settings (issue 8).

Both sides load the same tiny Qwen2.5-VL checkpoint directory (the ``tiny`` preset) with the same processor,
get LoRA r=8 (alpha 32, no dropout) on q/k/v/o of the language model, and train on the same 2 prompts of
4 frames (112x112) each: G=8 completions per prompt, exactly 64 new tokens (lit3drft: no stop token; TRL:
``min_new_tokens=64``), temperature 1, vision special tokens suppressed, beta 0 and 0.04, mu=1, the dapo loss,
AdamW, grad-norm clip 1.0, fp32, no gradient checkpointing, ``torch.set_num_threads(--threads)``.

- lit3drft: the real ``GRPOModule.training_step`` (generate_group -> score_completions -> group_advantages
  -> micro-batched sequence_logprobs, reference under ``policy.reference()`` when beta > 0 -> grpo_loss ->
  backward -> clip -> AdamW), driven without a Lightning Trainer: the four Lightning hooks it calls
  (``optimizers``, ``lr_schedulers``, ``manual_backward``, ``clip_gradients``) and ``log_dict`` are bound to
  plain torch equivalents on the instance. Micro-batch ``--micro-batch`` (default 8, the GRPOConfig default).
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
``no-lm-head-checkpoint`` (no activation checkpoint around the LM-head chunk). All four of the first together
with ``--micro-batch 4`` reproduce the step as it was before issue 8's changes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py --only lit3drft --betas 0.04 --lever no-shared-prefix
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_step.py --no-rss --micro-batch 4 \
        --lever no-shared-prefix no-visual-reuse no-merge ref-micro-batch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import make_samples  # noqa: E402

from lit3drft.algorithms import GRPOConfig, grpo_loss  # noqa: E402
from lit3drft.config import EvalConfig, StageConfig  # noqa: E402
from lit3drft.models import ModelConfig, build_policy  # noqa: E402
from lit3drft.models.build import lora_target_regex, resolve_checkpoint  # noqa: E402
from lit3drft.rewards import RewardConfig, score_completions  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGET = {"task": "spatial", "mode": "da", "ground_truth": 3.0, "question_type": "object_counting"}
LR = 1e-5
PHASES = ("generation", "rewards", "logprobs", "rest")


def peak_rss_mb() -> float:
    """Peak resident set size of this process: ``VmHWM`` (``ru_maxrss`` survives fork + exec, so a subprocess
    would report its parent's size; the high-water mark of the address space does not)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_config(args: argparse.Namespace, finetune: str = "lora") -> ModelConfig:
    if args.preset == "3b":
        return ModelConfig(preset="", pretrained=str(build_3b_checkpoint(args)), finetune=finetune, lora_r=8,
                           lora_alpha=32, lora_target_modules=LORA_TARGETS, dtype="bfloat16")  # fmt: skip
    return ModelConfig(preset="tiny", finetune=finetune, lora_r=8, lora_alpha=32, lora_target_modules=LORA_TARGETS,
                       dtype="float32")  # fmt: skip


def perturb_lora(model: torch.nn.Module, seed: int = 0) -> None:
    """Small random LoRA B (it starts at zero), so the policy differs from the reference and the KL is not 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02).to(p))


class Timer:
    """Accumulates wall time per phase; ``wrap`` times every call of a function."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = defaultdict(float)
        self.tokens = 0

    def wrap(self, fn, phase: str):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.acc[phase] += time.perf_counter() - t

        return timed

    def split(self, total: float) -> dict[str, float]:
        out = {p: self.acc.get(p, 0.0) for p in PHASES[:3]}
        out["rest"] = total - sum(out.values())
        self.acc.clear()
        return out


# ---------------------------------------------------------------------------------------------------- lit3drft
class LitSide:
    """The real ``GRPOModule`` with its Lightning hooks bound to plain torch (no Trainer)."""

    def __init__(self, args: argparse.Namespace, beta: float, samples: list) -> None:
        from lit3drft.models import generation
        from lit3drft.modules import grpo as grpo_module

        self.args, self.samples = args, samples
        self.timer = Timer()
        policy = build_policy(model_config(args, args.finetune))
        if args.finetune != "qlora":  # a 4-bit model is placed by from_pretrained's device_map
            policy.to(args.device)
        perturb_lora(policy.model)
        policy.stop_token_ids = []  # no stop token: every completion is exactly --new-tokens long (equal work)
        policy.train()
        cfg = GRPOConfig(num_generations=args.generations, beta=beta, num_iterations=1, loss_type="dapo",
                         max_new_tokens=args.new_tokens, micro_batch_size=args.micro_batch, top_k=None)  # fmt: skip
        stage = StageConfig(kind="grpo", max_steps=1000, lr=LR, warmup_ratio=0.0, gradient_clip_val=1.0)
        module = grpo_module.GRPOModule(grpo_cfg=cfg, policy=policy, stage=stage, reward_cfg=RewardConfig(),
                                        eval_cfg=EvalConfig(), detection_classes=[])  # fmt: skip
        opt_cfg = module.configure_optimizers()
        opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
        module.optimizers = lambda: opt
        module.lr_schedulers = lambda: sched
        module.manual_backward = lambda loss: loss.backward()
        module.clip_gradients = lambda o, gradient_clip_val, gradient_clip_algorithm: torch.nn.utils.clip_grad_norm_(
            module.trainable_parameters(), gradient_clip_val
        )
        self.logged: dict[str, Any] = {}
        module.log_dict = lambda d, **k: self.logged.update(d)
        self.module, self.policy, self.cfg = module, policy, cfg
        # phase timers: on the instance / the module namespace the step looks them up in
        policy.generate_group = self.timer.wrap(policy.generate_group, "generation")
        policy.sequence_logprobs = self.timer.wrap(policy.sequence_logprobs, "logprobs")
        self._score = grpo_module.score_completions
        grpo_module.score_completions = self.timer.wrap(score_completions, "rewards")
        self.captured: list[dict[str, Any]] | None = None
        self._grpo_module, self._generation = grpo_module, generation

    def batch(self) -> dict[str, Any]:
        return {"samples": self.samples, "targets": [TARGET] * len(self.samples)}

    def step(self, lever: list[str] | None = None) -> dict[str, float]:
        """One ``GRPOModule.training_step``, timed by phase; ``lever`` (default ``--lever``) patched in meanwhile."""
        self.timer.acc.clear()
        self.timer.tokens = 0
        with levers(self, self.args.lever if lever is None else lever):
            t, c = time.perf_counter(), time.process_time()
            self.module.training_step(self.batch(), 0)
            total, cpu = time.perf_counter() - t, time.process_time() - c
        out = {"total": total, **self.timer.split(total), "cpu": cpu}
        out["tokens"] = float(self.logged["train/completion_length"]) * len(self.samples) * self.args.generations
        return out

    def check_loss(self, lever: list[str] | None = None) -> dict[str, float]:
        """Run one step recording every ``grpo_loss`` call; the micro-batch losses must sum to the full-batch loss."""
        calls: list[dict[str, Any]] = []
        rollouts: list[Any] = []
        real_loss, real_gen = self._grpo_module.grpo_loss, self.policy.generate_group

        def spy_loss(logp, old, ref, adv, mask, cfg, num_tokens=None, num_sequences=None):
            loss, st = real_loss(logp, old, ref, adv, mask, cfg, num_tokens, num_sequences)
            calls.append({"logp": logp.detach().clone(), "old": None if old is None else old.detach().clone(),
                          "ref": None if ref is None else ref.clone(), "adv": adv.clone(), "mask": mask.clone(),
                          "loss": loss.detach().clone()})  # fmt: skip
            return loss, st

        def spy_gen(*a, **k):
            rollouts.append(real_gen(*a, **k))
            return rollouts[-1]

        self._grpo_module.grpo_loss, self.policy.generate_group = spy_loss, spy_gen
        try:
            self.step(lever)
        finally:
            self._grpo_module.grpo_loss, self.policy.generate_group = real_loss, real_gen
        cat = {
            k: torch.cat([c[k] for c in calls]) if calls[0][k] is not None else None for k in calls[0] if k != "loss"
        }
        reference, _ = grpo_loss(cat["logp"], cat["old"], cat["ref"], cat["adv"], cat["mask"], self.cfg)
        step_loss = torch.stack([c["loss"] for c in calls]).sum()
        torch.testing.assert_close(step_loss, reference, rtol=1e-5, atol=1e-7)
        # the rollout's sampling-time log-probs vs the training forward's (before the optimiser step)
        rollout = rollouts[-1]
        m = rollout.completion_mask.bool()
        sample_gap = (rollout.logprobs - cat["logp"])[m].abs().max().item()
        return {"step_loss": step_loss.item(), "reference_loss": reference.item(), "micro_batches": len(calls),
                "max_abs_sampling_vs_forward_logp": sample_gap}  # fmt: skip

    def check_lever(self, lever: list[str]) -> dict[str, float]:
        """Log-probs and LoRA gradients of one micro-batch with and without ``lever``, on the same rollout."""
        policy = self.policy
        with torch.no_grad():
            rollout = policy.generate_group(self.samples, num_generations=self.args.generations,
                                            max_new_tokens=self.args.new_tokens)  # fmt: skip
        rows = list(range(min(self.args.micro_batch, len(rollout.texts))))
        params = [p for p in policy.parameters() if p.requires_grad]

        def run():
            logp = policy.sequence_logprobs(rollout, rows=rows)
            weights = torch.linspace(-1, 1, logp.numel(), device=logp.device).view_as(logp)
            return logp.detach(), torch.autograd.grad((logp * weights).sum(), params)

        base_logp, base_grad = run()
        with levers(self, lever):
            logp, grad = run()
        rel = max(((a - b).norm() / b.norm().clamp(min=1e-30)).item() for a, b in zip(grad, base_grad))
        return {"max_abs_logp_diff": (logp - base_logp).abs().max().item(), "max_rel_grad_diff": rel}


@contextlib.contextmanager
def levers(side: LitSide, names: list[str]):
    """lit3drft's step with some of its fast paths switched off (ablations), undone on exit; module docstring."""
    gen, module, policy = side._generation, side.module, side.policy
    undo: list[tuple[Any, str, Any, bool]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        undo.append((obj, name, getattr(obj, name), name in vars(obj)))
        setattr(obj, name, value)

    for lever in names:
        if lever == "no-lm-head-checkpoint":
            patch(gen, "checkpoint", lambda fn, *a, use_reentrant=False: fn(*a))
        elif lever == "no-shared-prefix":

            def full_forward(*a, _real=policy.sequence_logprobs, **k):
                return _real(*a, **{**k, "shared_prefix": False})

            patch(policy, "sequence_logprobs", full_forward)
        elif lever == "no-visual-reuse":

            def drop_features(*a, _real=policy.generate_group, **k):
                rollout = _real(*a, **k)
                rollout.visual_features = None  # the training passes encode the frames again
                return rollout

            patch(policy, "generate_group", drop_features)
        elif lever == "no-merge":
            patch(module.grpo_cfg, "merge_adapter_for_sampling", False)
        elif lever == "ref-micro-batch":
            patch(module, "no_grad_chunk_factor", 1)
        elif lever:
            raise ValueError(f"unknown lever {lever!r}")
    try:
        yield
    finally:
        for obj, name, value, own in reversed(undo):
            if own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)


# --------------------------------------------------------------------------------------------------------- TRL
def trl_dataset(samples: list, rows: int):
    from datasets import Dataset

    def prompt(s):
        return [
            {"role": "user", "content": [*({"type": "image"} for _ in s.frames), {"type": "text", "text": s.prompt}]}
        ]

    data = [{"prompt": prompt(s), "images": s.frames, "target": json.dumps(TARGET)} for s in samples]
    return Dataset.from_list([data[i % len(data)] for i in range(rows)])


def reward_fn(prompts, completions, target, **kwargs) -> list[float]:
    """lit3drft's ``score_completions`` in TRL's reward-function signature (conversational completions)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return score_completions(texts, [json.loads(t) for t in target], RewardConfig()).total.tolist()


def build_trl(args: argparse.Namespace, beta: float, samples: list, steps: int, callbacks: list):
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from lit3drft.models.build import load_processor

    mcfg = model_config(args)
    path = resolve_checkpoint(mcfg)
    processor = load_processor(path, mcfg)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    vocab = processor.tokenizer.get_vocab()
    suppress = sorted(vocab[t] for t in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                         "<|video_pad|>") if t in vocab)  # fmt: skip
    n = len(samples) * args.generations
    cfg = TRLConfig(
        output_dir=str(Path(args.tmp) / "trl"),
        use_cpu=args.device == "cpu",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=args.generations,
        max_completion_length=args.new_tokens,
        num_iterations=1,
        beta=beta,
        loss_type="dapo",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        learning_rate=LR,
        max_grad_norm=1.0,
        max_steps=steps,
        use_vllm=False,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        generation_kwargs={"min_new_tokens": args.new_tokens, "suppress_tokens": suppress},
    )
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=lora_target_regex(LORA_TARGETS),
                      task_type="CAUSAL_LM")  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=cfg, train_dataset=trl_dataset(samples, steps * n),
                          processing_class=processor, peft_config=lora, callbacks=callbacks)  # fmt: skip
    perturb_lora(trainer.model)
    return trainer


def trl_timed(trainer, timer: Timer) -> None:
    """Phase timers on the trainer instance (its methods are looked up through ``self``)."""
    real_generate = trainer._generate

    def generate(prompts):
        out = real_generate(prompts)
        timer.tokens += sum(len(c) for c in out[1])  # completion_ids: one list per completion
        return out

    trainer._generate = timer.wrap(generate, "generation")
    trainer._calculate_rewards = timer.wrap(trainer._calculate_rewards, "rewards")
    trainer._get_per_token_logps_and_entropies = timer.wrap(trainer._get_per_token_logps_and_entropies, "logprobs")


def make_callback(on_step):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            on_step(time.perf_counter() - self.t, time.process_time() - self.c)

    return StepTimer()


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


# ------------------------------------------------------------------------------------------------ 3B preset
def build_3b_checkpoint(args: argparse.Namespace) -> Path:
    """A Qwen2.5-VL-3B-shaped checkpoint with random bf16 weights and the tiny preset's processor (cached)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from lit3drft.models.build import load_processor
    from lit3drft.models.tiny import SPECIAL_TOKENS, tiny_model_config

    tiny = ModelConfig(preset="tiny")
    out = Path(args.tmp) / "qwen2_5_vl_3b_random"
    if (out / "config.json").exists():
        return out
    processor = load_processor(resolve_checkpoint(tiny), tiny)
    ids = {t: processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    shape = ModelConfig(preset="tiny", tiny_hidden_size=2048, tiny_layers=36, tiny_heads=16,
                        tiny_intermediate_size=11008, tiny_vision_hidden_size=1280, tiny_vision_depth=32)  # fmt: skip
    config = tiny_model_config(shape, 151936, ids)  # Qwen2.5-VL-3B: vocab 151,936, tied embeddings
    config.text_config.num_key_value_heads = 2
    config.vision_config.update({"intermediate_size": 3420, "num_heads": 16, "fullatt_block_indexes": [7, 15, 23, 31]})
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly (fp32 would be 15 GB)
    try:
        with torch.device(args.device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


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
