"""The ``tiny`` preset: a random small Qwen2.5-VL, its BPE tokenizer and processor, built offline and cached.

The preset is written as an ordinary Hugging Face directory (``save_pretrained`` of model, tokenizer and
processor) and then loaded by the same code as a downloaded checkpoint, so tests on the tiny model cover the
real loading path. The directory is keyed by a hash of every size knob, so it is built once per config and
reused by every later run (and by other processes: the build goes to a temporary directory that is renamed
into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lit3drft.models.config import ModelConfig

TINY_FORMAT_VERSION = 1
"""Bump when the build below changes, so stale cached presets are not reused."""

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""Qwen2.5-VL's special tokens, in its order (the processor and chat template need these)."""

# Qwen2.5-VL-Instruct's chat template (frames as images or video inside the user turn).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one, as Qwen does, which helps numbers in boxes).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tiny_cache_root(cfg: ModelConfig) -> Path:
    """``cfg.cache_dir``, else ``$LIT3DRFT_CACHE``, else ``~/.cache/lit3drft``."""
    root = cfg.cache_dir or os.environ.get("LIT3DRFT_CACHE", "") or "~/.cache/lit3drft"
    return Path(root).expanduser()


def tiny_key(cfg: ModelConfig) -> str:
    """Hash of everything that determines the tiny checkpoint's files."""
    knobs = {k: getattr(cfg, k) for k in sorted(vars(cfg)) if k.startswith("tiny_")}
    knobs["version"] = TINY_FORMAT_VERSION
    return hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]


def tiny_checkpoint(cfg: ModelConfig) -> Path:
    """Directory of the tiny preset for ``cfg``, building it first if it is not cached."""
    path = tiny_cache_root(cfg) / "tiny" / tiny_key(cfg)
    if (path / "config.json").exists() and (path / "processor_config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".build-"))
    try:
        build_tiny_checkpoint(cfg, tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: keep its copy
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _corpus(n: int, seed: int) -> list[str]:
    try:
        from lit3drft.data.prompts import tokenizer_corpus

        return tokenizer_corpus(n, seed)
    except ImportError:  # the data package is optional for the model layer
        return _fallback_corpus()


def _fallback_corpus() -> list[str]:
    words = "detect the 3D bounding boxes chair table bed sofa frame answer think label bbox_3d json list camera"
    lines = [f'<answer>[{{"label": "chair", "bbox_3d": [{i / 7:.2f}, -0.5, 2.1, 0.5, 0.5, 0.9, 0, 0, 0]}}]</answer>'
             for i in range(200)]  # fmt: skip
    return [words, "<think>The answer is A.</think><answer>A</answer>", *lines]


def train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE with Qwen's pre-tokenizer and special tokens, wrapped as a ``Qwen2Tokenizer``."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(QWEN_SPLIT_REGEX(), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def QWEN_SPLIT_REGEX():  # noqa: N802 - a constant built lazily (tokenizers.Regex is not picklable)
    from tokenizers import Regex

    return Regex(QWEN_SPLIT)


def tiny_model_config(cfg: ModelConfig, vocab_size: int, ids: dict[str, int]):
    """A ``Qwen2_5_VLConfig`` of the requested size; mrope sections sum to half the head size."""
    from transformers import Qwen2_5_VLConfig

    head_dim = cfg.tiny_hidden_size // cfg.tiny_heads
    half = head_dim // 2
    t = half // 4
    hw = (half - t) // 2
    sections = [t, hw, half - t - hw]
    text = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=max(1, cfg.tiny_heads // 2),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": sections},
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=cfg.tiny_vision_depth,
        hidden_size=cfg.tiny_vision_hidden_size,
        intermediate_size=cfg.tiny_vision_hidden_size * 2,
        num_heads=max(1, cfg.tiny_vision_hidden_size // 64),
        out_hidden_size=cfg.tiny_hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[cfg.tiny_vision_depth - 1],
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_checkpoint(cfg: ModelConfig, out: Path) -> None:
    """Train the tokenizer, initialise the model at random (seeded), save model + processor to ``out``."""
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(_corpus(2000, cfg.tiny_seed), cfg.tiny_vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model_cfg = tiny_model_config(cfg, len(tokenizer), ids)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.tiny_seed)
        model = Qwen2_5_VLForConditionalGeneration(model_cfg)
    size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        video_processor=Qwen2VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "lit3drft_tiny.json").write_text(json.dumps({"key": tiny_key(cfg), **vars(cfg)}, default=str, indent=1))
