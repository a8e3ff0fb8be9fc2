"""Model configuration: which checkpoint, how it is fine-tuned, how frames enter, the geometry prior."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Finetune = Literal["lora", "qlora", "full"]
FramesAs = Literal["images", "video"]
Geometry = Literal["none", "depth", "points", "points_own", "vggt"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class SamplingDefaults:
    """The one home of the sampling defaults: ``lit3drft.models.generation``, the ``Policy`` wrappers and
    ``GRPOConfig`` all read them from ``SAMPLING``."""

    temperature: float = 1.0
    top_p: float = 1.0
    """1.0: no nucleus filtering."""
    top_k: int | None = None
    """None: no top-k filtering."""
    max_new_tokens: int = 256


SAMPLING = SamplingDefaults()


@dataclass
class ModelConfig:
    """The policy: a Qwen-VL checkpoint (or the offline ``tiny`` preset), its fine-tuning and its inputs."""

    pretrained: str = ""
    """Local directory of a Hugging Face Qwen2.5-VL (or Qwen2-VL / Qwen3-VL) checkpoint with its processor.
    Used when ``preset`` is empty; nothing is downloaded (``HF_HUB_OFFLINE``)."""
    preset: str = "tiny"
    """``tiny``: a randomly initialised small Qwen2.5-VL built offline and cached; empty string: use ``pretrained``."""
    cache_dir: str = ""
    """Where the tiny preset is built; empty = ``$LIT3DRFT_CACHE`` or ``~/.cache/lit3drft``."""

    tiny_hidden_size: int = 256
    """Tiny preset: width of the language model."""
    tiny_layers: int = 4
    """Tiny preset: decoder layers."""
    tiny_heads: int = 4
    """Tiny preset: attention heads (key/value heads = half of them, at least 1)."""
    tiny_intermediate_size: int = 1024
    """Tiny preset: MLP width of the language model."""
    tiny_vision_hidden_size: int = 256
    """Tiny preset: width of the vision tower."""
    tiny_vision_depth: int = 2
    """Tiny preset: vision transformer blocks."""
    tiny_vocab_size: int = 2048
    """Tiny preset: upper bound of the byte-level BPE vocabulary (special tokens included); the templated corpus
    of ``lit3drft.data.prompts.tokenizer_corpus`` saturates below 1,000 merges, so the real size may be smaller."""
    tiny_seed: int = 0
    """Tiny preset: seed of the random weights (part of the cache key)."""

    finetune: Finetune = "lora"
    """``lora`` (peft adapters on the LLM), ``qlora`` (4-bit nf4 base + LoRA) or ``full`` (all unfrozen weights)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input (0 keeps rollout and training forwards identical)."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """Linear layer names inside the *language model* that get adapters (vision tower never)."""
    freeze_vision: bool = True
    """Freeze the vision transformer (VG-LLM trains only the LLM). Full fine-tuning only."""
    freeze_merger: bool = True
    """Freeze the vision-to-language merger (connector). Full fine-tuning only."""
    freeze_llm: bool = False
    """Freeze the language model under full fine-tuning (e.g. to train only the geometry prior)."""
    freeze_geometry: bool = False
    """Freeze the geometry prior (encoder and merger). Trainable, it is part of the GRPO reference snapshot (the
    prior of the stage's start), and the visual features are recomputed for every pass of a step."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower)."""
    mrope_section: list[int] | None = None
    """Override the checkpoint's M-RoPE sections ``[t, h, w]`` (rotary frequency pairs per axis, highest frequencies
    first; they must sum to half the head size). Text tokens have equal t/h/w positions, so text attention does not
    change; visual tokens do. None: the checkpoint's own. The tiny preset's default ``[8, 12, 12]`` (Qwen's split)
    leaves the width axis the 12 lowest frequencies: 3 columns of a 4x4 frame differ by 5e-4 rad, so the language
    model cannot tell left from right by position (issue 14)."""
    lean_decode: bool = True
    """Sample and decode greedily with ``lit3drft.models.decode.LeanDecoder`` (preallocated KV cache, masks and
    positions computed once; same modules and maths as transformers) where the model supports it; false: one
    transformers forward per token."""
    compact_decode: bool = False
    """With ``lean_decode``: once a quarter of the rows still decoding have stopped, drop the stopped rows from the
    cache and the decode batch (rows finish at different lengths: a GRPO group's longest completion sets the loop's
    length, and detection answers run 150-400 tokens). The same tokens and log-probs up to float rounding (tested).
    Off by default, by measurement: on the embedded base's detection rollouts (16 rows, lengths 196-397) it ran at
    0.99x the speed of running every row to the end on 2 CPU threads (``dev/compact_decode_probe.py``, fifth
    session): the tiny model's decode step costs the same for 8 rows as for 16. Where a step's cost grows with the
    rows (large models, large groups) it is the switch to try."""
    dtype: Dtype = "auto"
    """Weights dtype: ``auto`` = bfloat16 on a CUDA GPU with bf16, float32 otherwise."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to ``from_pretrained``: ``sdpa``, ``eager``, ``flash_attention_2``."""

    frames_as: FramesAs = "images"
    """Frames enter as a list of images (VG-LLM) or as one video through the video processor."""
    min_pixels: int = 56 * 56
    """Smallest frame area after the processor's resize (smaller frames are upscaled to reach it)."""
    max_pixels: int = 448 * 448
    """Largest frame area after the processor's resize (VG-LLM uses about 252 tokens = 448x448 per frame)."""

    geometry: Geometry = "none"
    """3D geometry prior added to the visual tokens: ``none``, ``depth`` (depth + camera-ray maps), ``points`` (point
    maps in the first frame's camera, from depth and poses: VGGT's output, from the sensor), ``points_own`` (those and
    each pixel's point in its own frame's camera: VGGT's point and depth heads together) or ``vggt``."""
    geometry_dim: int = 64
    """Width of the depth encoder's per-patch features."""
    vggt_path: str = ""
    """Local VGGT checkpoint directory (``geometry: vggt``); needs the ``vggt`` package."""

    suppress_vision_tokens: bool = True
    """Never sample vision special tokens (``<|image_pad|>``, ``<|vision_start|>``...) in completions."""
