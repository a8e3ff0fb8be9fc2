"""What both sides of ``bench_grpo_step.py`` share: settings, the model config (tiny or the 3B shape), timers."""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lit3drft.models import ModelConfig  # noqa: E402
from lit3drft.models.build import resolve_checkpoint  # noqa: E402

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
