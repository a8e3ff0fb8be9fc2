"""The TRL side of ``bench_grpo_step.py``: ``GRPOTrainer`` on the same checkpoint, prompts and settings."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from grpo_bench_common import LORA_TARGETS, LR, TARGET, Timer, model_config, perturb_lora  # noqa: E402

from lit3drft.models.build import lora_target_regex, resolve_checkpoint  # noqa: E402
from lit3drft.rewards import RewardConfig, score_completions  # noqa: E402


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
