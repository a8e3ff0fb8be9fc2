"""``build_policy(cfg)``: checkpoint (local or the tiny preset) -> processor + model -> fine-tuning -> ``Policy``.

How torchvision is obtained: the project runs torch 2.14.1 + torchvision 0.29.1 (the CUDA wheels, which
also run on the CPU; ``make setup`` pins them). transformers 5.x only builds ``Qwen2_5_VLProcessor`` and the
video processor when torchvision imports, and no CPU torchvision exists for the lighter torch 2.13.0+cpu
here (see ../shared/NOTES-qwen-vl-cpu.md). With the real classes the tiny preset and a downloaded
checkpoint share every line of input processing (chat template, image-token expansion, video frames), and
the GRPO baseline (TRL) runs on the same stack. The cost is a ~5.5 GB venv; no custom processor subclass
or hand-written image-token expansion is needed.

Everything loads offline: a missing ``model.pretrained`` directory is an error that says what to download.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit3drft.models.config import ModelConfig
from lit3drft.models.geometry import build_geometry_encoder
from lit3drft.models.policy import Policy
from lit3drft.models.tiny import tiny_checkpoint

log = logging.getLogger(__name__)


def resolve_checkpoint(cfg: ModelConfig) -> Path:
    """The local checkpoint directory for ``cfg`` (building the tiny preset if needed)."""
    if cfg.preset == "tiny":
        return tiny_checkpoint(cfg)
    if cfg.preset:
        raise ValueError(f"unknown model.preset {cfg.preset!r}; valid choices: tiny, '' (use model.pretrained)")
    path = Path(cfg.pretrained).expanduser()
    if not cfg.pretrained or not (path / "config.json").is_file():
        what = "is empty" if not cfg.pretrained else "has no config.json" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"model.pretrained={cfg.pretrained!r} {what}: not a local Hugging Face checkpoint. Nothing is "
            "downloaded at run time: fetch one beforehand, e.g. `huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct "
            "--local-dir checkpoints/Qwen2.5-VL-3B-Instruct` (model, tokenizer and preprocessor files), and set "
            "model.pretrained to that directory; or use model.preset=tiny."
        )
    return path


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_processor(path: Path, cfg: ModelConfig) -> Any:
    """The checkpoint's processor with explicit frame-size bounds and left padding (generation prompts)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    for sub in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)):
        if sub is not None:
            sub.size = dict(size)
            for attr, value in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)):
                if hasattr(sub, attr):
                    setattr(sub, attr, value)
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(path: Path, cfg: ModelConfig) -> nn.Module:
    """``AutoModelForImageTextToText`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL); 4-bit nf4 under QLoRA."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    kwargs: dict[str, Any] = dict(
        dtype=torch_dtype(cfg), attn_implementation=cfg.attn_implementation, local_files_only=True
    )
    if cfg.finetune == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=[r".*visual", "lm_head"],  # quantise the LLM only, as QLoRA recipes for Qwen-VL do
        )
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    if cfg.mrope_section is not None:
        kwargs["config"] = with_mrope_section(path, cfg.mrope_section)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def with_mrope_section(path: Path, section: list[int]) -> Any:
    """The checkpoint's config with its text model's M-RoPE sections replaced (``model.mrope_section``)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text = getattr(config, "text_config", config)
    rope = dict(getattr(text, "rope_parameters", None) or {})
    if "mrope_section" not in rope:
        raise ValueError(f"model.mrope_section={section}: {path} has no M-RoPE (rope_parameters: {rope})")
    half = (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads) // 2
    if len(section) != 3 or sum(section) != half or min(section) < 0:
        raise ValueError(f"model.mrope_section={section}: needs 3 non-negative sizes summing to half the head size "
                         f"({half}) of {path}")  # fmt: skip
    text.rope_parameters = {**rope, "mrope_section": [int(v) for v in section]}
    return config


def lora_target_regex(names: list[str]) -> str:
    """Regex matching ``names`` inside the language model only (the vision tower has ``*_proj`` layers too).

    Example:
        >>> import re
        >>> rx = lora_target_regex(["q_proj", "down_proj"])
        >>> bool(re.fullmatch(rx, "model.language_model.layers.0.self_attn.q_proj")), bool(re.fullmatch(rx, "model.visual.blocks.0.mlp.down_proj"))
        (True, False)
    """
    return r".*language_model\..*\.(" + "|".join(names) + r")"


def apply_freezing(model: nn.Module, cfg: ModelConfig) -> None:
    """Full fine-tuning: freeze the vision tower / merger / LLM as configured."""
    for name, p in model.named_parameters():
        if ".visual.merger." in f".{name}" or name.startswith("visual.merger"):
            p.requires_grad_(not cfg.freeze_merger)
        elif "visual." in name:
            p.requires_grad_(not cfg.freeze_vision)
        else:
            p.requires_grad_(not cfg.freeze_llm)


def _enable_checkpointing(model: nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def keep_loaded_dtype(model: nn.Module, loaded: dict[str, torch.dtype]) -> int:
    """Undo ``prepare_model_for_kbit_training``'s upcast of the frozen, non-quantised weights; returns how many.

    peft casts every bf16/fp16 weight that is not 4-bit to fp32: under QLoRA of Qwen2.5-VL-3B that is the whole
    vision tower, the tied embeddings / LM head and the norms, ~1B frozen parameters. Measured on an H100 at 2
    prompts x 8 frames 448 px, G=8, 256 new tokens (``benchmarks/gpu_3b.sh``): a QLoRA GRPO step peaked at
    53.3 GiB with them in fp32 (bf16 LoRA: 31.5 GiB) and at 27.6 GiB without. They are frozen, so they go back
    to the dtype they were loaded in; the LoRA weights, created afterwards, are fp32 as peft makes them.
    """
    restored = 0
    for name, p in model.named_parameters():
        if p.dtype == torch.float32 and loaded.get(name) in (torch.bfloat16, torch.float16):
            p.data = p.data.to(loaded[name])
            restored += 1
    return restored


def keep_4bit_layout_for_training(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns the layers changed.

    On a CPU with AVX512-BF16, a ``Linear4bit`` forward in eval mode without grad (a validation pass, a rollout)
    repacks its weight for a faster kernel and never packs it back; every later forward with grad (the next
    training step) then runs that inference-only kernel and fails ("a view of a leaf Variable that requires grad
    is being used in an in-place operation"). A QLoRA run alternates the two, so the weight keeps the training
    layout. No effect on CUDA, where the repacking never happens.
    """
    changed = 0
    for m in model.modules():
        if getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def apply_finetuning(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap ``model`` for ``cfg.finetune`` (peft LoRA / QLoRA, or full with freezing) + gradient checkpointing."""
    if cfg.finetune == "full":
        apply_freezing(model, cfg)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(model)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.finetune == "qlora":
        loaded = {name: p.dtype for name, p in model.named_parameters()}
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        keep_loaded_dtype(model, loaded)
        keep_4bit_layout_for_training(model)
    elif cfg.gradient_checkpointing:
        _enable_checkpointing(model)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_policy(cfg: ModelConfig) -> Policy:
    """Load the checkpoint and processor offline, apply fine-tuning and the geometry prior.

    Example:
        >>> policy = build_policy(ModelConfig(preset="tiny"))  # doctest: +SKIP
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_checkpoint(cfg)
    processor = load_processor(path, cfg)
    model = apply_finetuning(load_model(path, cfg), cfg)
    text_cfg = getattr(model.config, "text_config", model.config)
    ip = processor.image_processor
    geometry = build_geometry_encoder(cfg.geometry, cfg.geometry_dim, text_cfg.hidden_size, ip.patch_size,
                                      ip.merge_size, cfg.vggt_path)  # fmt: skip
    if geometry is not None and getattr(model.config, "model_type", "") not in ("qwen2_vl", "qwen2_5_vl"):
        raise NotImplementedError(f"model.geometry={cfg.geometry} supports Qwen2-VL / Qwen2.5-VL checkpoints only")
    if geometry is not None:
        load_geometry_prior(geometry, path, cfg)
        geometry.to(next(model.parameters()).device)
        for name, p in geometry.named_parameters():
            p.requires_grad_(not cfg.freeze_geometry and not name.startswith("vggt."))
    elif (Path(path) / GEOMETRY_FILE).exists():
        log.warning(
            "%s holds a trained geometry prior (%s) that model.geometry=none leaves unused", path, GEOMETRY_FILE
        )
    return Policy(model, processor, cfg, geometry)


GEOMETRY_FILE = "geometry_prior.safetensors"
"""A checkpoint directory's trained geometry prior (lit3drft's addition to the HF model, e.g. the embedded base's
depth encoder); its metadata names the kind and width it was built with."""


def load_geometry_prior(geometry: nn.Module, path: str | Path, cfg: ModelConfig) -> bool:
    """Load ``GEOMETRY_FILE`` of checkpoint ``path`` into ``geometry`` when present (False when absent: a fresh prior
    starts at zero). A file made for another prior kind or width is refused with both named."""
    file = Path(path) / GEOMETRY_FILE
    if not file.exists():
        return False
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(file), "pt") as f:
        meta = f.metadata() or {}
    made = (meta.get("geometry"), meta.get("geometry_dim"))
    widened = made == ("points", str(cfg.geometry_dim)) and cfg.geometry == "points_own"
    if made != (cfg.geometry, str(cfg.geometry_dim)) and not widened:
        raise ValueError(f"{file}: a geometry prior made for model.geometry={made[0]}, geometry_dim={made[1]}; this "
                         f"run has model.geometry={cfg.geometry}, geometry_dim={cfg.geometry_dim}")  # fmt: skip
    state = {k: v.float() for k, v in load_file(str(file)).items()}
    if widened:  # the own-camera channels come after the points prior's four: their weights start at zero
        old = state["embed.0.weight"]
        new = torch.zeros_like(geometry.embed[0].weight, dtype=old.dtype)
        new[:, : old.shape[1]] = old
        state["embed.0.weight"] = new
        log.info("%s: a points prior, widened to points_own (own-camera channels start at zero)", file)
    geometry.load_state_dict(state, strict=True)
    return True


def export_pretrained(policy: Policy, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``policy`` as an ordinary Hugging Face directory (weights in ``dtype`` safetensors, processor,
    generation config) that ``model.pretrained`` loads like a downloaded checkpoint. Adapters are merged first.
    A trained ``depth`` prior is written beside it (``GEOMETRY_FILE``), which ``build_policy`` loads when the run
    has the same ``model.geometry``; a frozen ``vggt`` prior is not exported (its checkpoint is external)."""
    if policy.geometry is not None and policy.cfg.geometry not in ("depth", "points", "points_own"):
        raise NotImplementedError(f"export_pretrained: model.geometry={policy.cfg.geometry} (only depth and point-map "
                                  "priors are exported)")  # fmt: skip
    path = Path(path)
    if policy.geometry is not None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        geo = {k: v.detach().to("cpu", dtype).contiguous() for k, v in policy.geometry.state_dict().items()}
        save_file(geo, str(path / GEOMETRY_FILE),
                  metadata={"geometry": policy.cfg.geometry, "geometry_dim": str(policy.cfg.geometry_dim)})  # fmt: skip
    model = copy.deepcopy(policy.model).merge_and_unload() if policy.uses_adapter else policy.model
    state = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.save_pretrained(path, state_dict=state)
    policy.processor.save_pretrained(path)
    return path
