"""The policy: a Qwen-VL model (LoRA/QLoRA/full) + its processor + the optional geometry prior.

``Policy`` is a plain ``nn.Module`` that the SFT and GRPO LightningModules hold. It owns every detail of
how samples become model inputs and how visual tokens are positioned, so consumers never touch
``mm_token_type_ids``, mrope positions or ``rope_deltas``:

- ``collate(samples, with_answer)``: chat template + the real processor; frames as a list of images
  (VG-LLM: ``frame_labels[i]`` before frame i, then the prompt) or as one video. Rows are left-padded.
  With an answer, ``labels`` hold the answer tokens and the final ``<|im_end|>``; -100 elsewhere.
- ``forward(batch)``: logits (and HF's shifted CE ``loss`` when ``labels`` are given).
- ``generate`` / ``generate_group`` / ``sequence_logprobs``: see ``lit3drft.models.generation``.
- ``reference()``: context in which every forward runs the reference policy (adapter disabled under
  LoRA/QLoRA: no second copy; a frozen copy under full fine-tuning).

Positions are always computed here with the model's own ``get_rope_index`` over the whole sequence and
passed explicitly, so HF's cached ``rope_deltas`` (stale after ``generate``, see the notes) are never used.
The ``mm_encoder_outputs`` hook of HF's forward carries visual features computed once per prompt (and
the geometry prior's addition) into the language model.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lit3drft.data.sample import Sample
from lit3drft.models import generation
from lit3drft.models.config import SAMPLING, ModelConfig
from lit3drft.models.geometry import depth_ray_map, geometry_patches, point_map

VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
"""Tokens that must never appear in a completion (they break the next forward's visual bookkeeping)."""

REFERENCE_ADAPTER = "reference"
"""Name of the frozen adapter that holds the KL reference under LoRA/QLoRA (``Policy.snapshot_reference``)."""

MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "pixel_values_videos",
              "image_grid_thw", "video_grid_thw", "second_per_grid_ts")  # fmt: skip


class Policy(nn.Module):
    """A Qwen-VL policy with its processor; see the module docstring for the API."""

    def __init__(self, model: nn.Module, processor: Any, cfg: ModelConfig, geometry: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.model = model  # peft.PeftModel under lora/qlora, the HF model under full fine-tuning
        self.geometry = geometry
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.reference_model: nn.Module | None = None  # frozen copy (full fine-tuning), made on demand
        self.reference_geometry: nn.Module | None = None  # frozen copy of a trainable geometry prior, at a snapshot
        self._in_reference = False  # inside reference() with a full-FT copy: hf_model is the copy
        self._reference_active = False  # inside reference(), any mode: encode_visual uses reference_geometry
        tok = self.tokenizer
        self.pad_token_id = (
            tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        )
        stops = {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        eos = getattr(self.hf_model.generation_config, "eos_token_id", None)
        stops |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        stops |= {tok.eos_token_id} if tok.eos_token_id is not None else set()
        self.stop_token_ids = sorted(i for i in stops if i is not None and i >= 0)
        vocab = tok.get_vocab()
        self.suppressed_token_ids = sorted(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)

    # ------------------------------------------------------------------ train / eval
    def train(self, mode: bool = True) -> Policy:
        """``nn.Module.train``, except that frozen parts (every module whose parameters are all frozen: the vision
        tower and merger when frozen, peft's base layers, the reference copy) stay in eval mode.

        Hugging Face's ``from_pretrained`` returns a model in eval mode and Lightning keeps the modes it finds, so
        without this a whole run trained in eval mode, where transformers' activation checkpointing is off
        (``model.gradient_checkpointing`` then saved no memory).
        """
        super().train(mode)
        if mode:
            for module in frozen_modules(self):
                module.eval()
        return self

    # ------------------------------------------------------------------ model access
    @property
    def reuses_visual_features(self) -> bool:
        """Whether visual features can be computed once and handed to HF (Qwen2-VL / Qwen2.5-VL: one tensor
        per frame). Qwen3-VL also injects deepstack features inside the LLM; it takes the raw-pixel path."""
        return getattr(self.hf_model.config, "model_type", "") in ("qwen2_vl", "qwen2_5_vl")

    @property
    def uses_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    @property
    def visual_frozen(self) -> bool:
        """Whether the visual features depend on the pixels only: no trainable parameter in the vision tower,
        its merger or the geometry prior (then features computed while sampling stay valid for the whole step,
        for the policy and the reference alike)."""
        modules = [getattr(self.core, "visual", None), self.geometry]
        return not any(p.requires_grad for m in modules if m is not None for p in m.parameters())

    @property
    def hf_model(self) -> nn.Module:
        """The HF ``*ForConditionalGeneration`` that runs now (LoRA layers are injected into it in place)."""
        if self._in_reference and self.reference_model is not None:
            return self.reference_model
        return self.model.get_base_model() if self.uses_adapter else self.model

    @property
    def core(self) -> nn.Module:
        """The HF ``*Model`` (vision tower + language model, no LM head)."""
        return self.hf_model.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Run the reference policy inside the block: the policy as ``snapshot_reference`` froze it.

        LoRA/QLoRA: the frozen ``reference`` adapter once a snapshot exists (the SFT policy in an SFT -> GRPO run),
        else the adapter disabled (the base, which is where a fresh adapter starts). Full fine-tuning: a frozen copy,
        taken at the first call if no snapshot exists. A trainable geometry prior is the frozen copy the snapshot
        took (without a snapshot, under LoRA, its current weights: a fresh adapter's reference is the base).
        """
        self._reference_active = True
        try:
            yield from self._reference_weights()
        finally:
            self._reference_active = False

    def _reference_weights(self) -> Iterator[None]:
        if self.uses_adapter:
            if REFERENCE_ADAPTER not in self.model.peft_config:
                with self.model.disable_adapter():
                    yield
                return
            active = self.model.active_adapter
            self.model.set_adapter(REFERENCE_ADAPTER)
            try:
                yield
            finally:
                self.model.set_adapter(active)  # peft's set_adapter also makes `active` trainable again
                self._freeze_reference_adapter()
            return
        if self.reference_model is None:
            self.snapshot_reference()
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False

    @contextlib.contextmanager
    def merged_adapter(self) -> Iterator[None]:
        """Inside the block the LoRA update is folded into the base weights and the adapter is disabled, so a
        forward costs one matmul per projection (for sampling; no gradients reach the adapter meanwhile).

        The merged weights are new tensors; on exit the original base tensors are put back untouched (no
        ``W + dW - dW`` rounding drift, which would move the reference). Costs one transient copy of the
        adapted base weights. A no-op without an adapter, inside ``reference()``, and for anything but plain
        LoRA on float ``nn.Linear`` weights (QLoRA's 4-bit weights, DoRA, LoRA bias).
        """
        layers = self._mergeable_lora_layers()
        if not layers:
            yield
            return
        saved = []
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                merged = weight.data.clone()
                for name in layer.active_adapters:
                    if name in layer.lora_A:
                        merged += layer.get_delta_weight(name).to(merged.dtype)
                saved.append((weight, weight.data))
                weight.data = merged
        try:
            with self.model.disable_adapter():
                yield
        finally:
            for weight, data in saved:
                weight.data = data

    def _mergeable_lora_layers(self) -> list[nn.Module]:
        if not self.uses_adapter:
            return []
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        for m in layers:
            names = [n for n in m.active_adapters if n in m.lora_A]
            plain = isinstance(m, LoraLinear) and not m.merged and not m.disable_adapters
            plain = plain and isinstance(m.get_base_layer(), nn.Linear)
            plain = plain and m.get_base_layer().weight.dtype.is_floating_point
            plain = plain and not any(m.lora_variant.get(n) or m.lora_bias.get(n) for n in names)
            if not plain:
                return []
        return layers

    def snapshot_reference(self) -> None:
        """Make the current weights the reference (the GRPO stage calls it at its start, i.e. after SFT).

        Full FT: a frozen copy of the model. LoRA and QLoRA: a second, frozen adapter named ``reference`` holding a
        copy of the active adapter's weights; ``reference()`` switches to it. Costs one adapter's memory (a few
        percent of the base at usual ranks) and no second model. Merging the SFT adapter into the base instead
        would be lossy under QLoRA (4-bit weights) and would make a stage's ``trainable.pt`` (adapter only)
        meaningless without the merged base, so the run directory could no longer be evaluated from its files.
        """
        trainable_prior = self.geometry is not None and any(p.requires_grad for p in self.geometry.parameters())
        geo = copy.deepcopy(self.geometry).eval().requires_grad_(False) if trainable_prior else None
        object.__setattr__(self, "reference_geometry", geo)  # not a submodule: stays out of state_dict
        if not self.uses_adapter:
            ref = copy.deepcopy(self.model).eval().requires_grad_(False)
            object.__setattr__(self, "reference_model", ref)  # not a submodule: stays out of state_dict
            return
        from peft.tuners.lora import LoraLayer

        active = self.model.active_adapter
        if REFERENCE_ADAPTER not in self.model.peft_config:
            self.model.add_adapter(REFERENCE_ADAPTER, copy.deepcopy(self.model.peft_config[active]))
            self.model.set_adapter(active)
        # a plain tensor copy per layer: peft's set_peft_model_state_dict loads through the whole model's
        # load_state_dict, which under QLoRA moved the 4-bit layers' outputs (logits by 0.03, measured)
        with torch.no_grad():
            for m in self.model.modules():
                if isinstance(m, LoraLayer) and REFERENCE_ADAPTER in m.lora_A:
                    for weights in (m.lora_A, m.lora_B):
                        ref, src = weights[REFERENCE_ADAPTER].weight, weights[active].weight
                        ref.data = src.detach().clone()
        self._freeze_reference_adapter()

    def _freeze_reference_adapter(self) -> None:
        for name, p in self.model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in name:
                p.requires_grad_(False)

    # ------------------------------------------------------------------ inputs
    def _messages(self, sample: Sample) -> list[dict[str, Any]]:
        content: list[dict[str, str]] = []
        if self.cfg.frames_as == "video":
            content.append({"type": "video"})
        else:
            for i in range(len(sample.frames)):
                if sample.frame_labels:
                    content.append({"type": "text", "text": sample.frame_labels[i]})
                content.append({"type": "image"})
        content.append({"type": "text", "text": sample.prompt})
        return [{"role": "user", "content": content}]

    def collate(self, samples: list[Sample], with_answer: bool = False) -> dict[str, Tensor]:
        """Model inputs for ``samples`` (left-padded); ``labels`` (answer + ``<|im_end|>``) when ``with_answer``.

        Extra keys beside the HF inputs: ``image_counts`` / ``video_counts`` ``(B,)`` (entries per sample,
        to slice ``pixel_values`` by sample) and ``geometry_values`` when the depth prior is on.
        """
        prompts = [self.processor.apply_chat_template(self._messages(s), tokenize=False, add_generation_prompt=True)
                   for s in samples]  # fmt: skip
        video = self.cfg.frames_as == "video"
        framed = [bool(s.frames) for s in samples]
        if not any(framed):  # a text-only batch (pretraining's copy samples): no visual inputs at all
            batch = dict(self.processor.tokenizer(prompts, padding=True, return_tensors="pt"))
            batch["mm_token_type_ids"] = torch.zeros_like(batch["input_ids"])
            return {**batch, **self._append_answers(batch, [s.answer for s in samples])} if with_answer else batch
        if not all(framed):
            raise ValueError(f"a batch mixes samples with and without frames ({[s.id for s in samples if not s.frames]}"
                             " have none): text-only samples are collated on their own")  # fmt: skip
        kwargs: dict[str, Any] = {"videos": [s.frames for s in samples]} if video else {
            "images": [f for s in samples for f in s.frames]}  # fmt: skip
        batch = dict(self.processor(text=prompts, padding=True, return_tensors="pt", **kwargs))
        batch.pop("video_metadata", None)
        counts = torch.tensor([1 if video else len(s.frames) for s in samples])
        batch["video_counts" if video else "image_counts"] = counts
        if "second_per_grid_ts" in batch:
            batch["second_per_grid_ts"] = torch.as_tensor(batch["second_per_grid_ts"], dtype=torch.float32)
        if with_answer:
            batch.update(self._append_answers(batch, [s.answer for s in samples]))
        if self.cfg.geometry != "none":
            batch.update(self._geometry_inputs(samples, batch))
        return batch

    def _append_answers(self, batch: dict[str, Tensor], answers: list[str]) -> dict[str, Tensor]:
        """Prompt rows + answer tokens + ``<|im_end|>``, re-left-padded; labels on the appended tokens only."""
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        rows, types, labels = [], [], []
        for i, answer in enumerate(answers):
            keep = batch["attention_mask"][i].bool()
            ans = torch.tensor(self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [end])
            rows.append(torch.cat([batch["input_ids"][i][keep], ans]))
            types.append(torch.cat([batch["mm_token_type_ids"][i][keep], torch.zeros_like(ans)]))
            labels.append(torch.cat([torch.full((int(keep.sum()),), -100), ans]))
        width = max(len(r) for r in rows)

        def left_pad(xs: list[Tensor], value: int) -> Tensor:
            return torch.stack([torch.cat([torch.full((width - len(x),), value, dtype=x.dtype), x]) for x in xs])

        ids = left_pad(rows, self.pad_token_id)
        mask = left_pad([torch.ones_like(r) for r in rows], 0)
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": left_pad(types, 0),
                "labels": left_pad(labels, -100)}  # fmt: skip

    def _geometry_inputs(self, samples: list[Sample], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ip = self.processor.image_processor
        video = self.cfg.frames_as == "video"
        grid = batch["video_grid_thw" if video else "image_grid_thw"]
        if self.cfg.geometry == "vggt":
            if video:
                raise ValueError("geometry=vggt supports frames_as=images only")
            frames = [torch.from_numpy(np.asarray(f.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                      for s in samples for f in s.frames]  # fmt: skip
            size = [(h * ip.patch_size, w * ip.patch_size) for _, h, w in grid.tolist()]
            resized = [nn.functional.interpolate(f[None], size=s, mode="bilinear")[0] for f, s in zip(frames, size)]
            return {"geometry_frames": torch.stack(resized)}
        entries = []
        for s in samples:
            if s.depth is None or s.intrinsics is None:
                raise ValueError(
                    f"geometry={self.cfg.geometry} needs Sample.depth and Sample.intrinsics; sample {s.id} has none (VG-LLM rows: "
                    "depths + cam2img; VSI-Bench rows: depth_dir + cam2img; an embedded benchmark rendered before "
                    "2026-11-26 lacks them: python dev/add_vsibench_depth.py DATA_ROOT)"
                )
            if self.cfg.geometry in ("points", "points_own"):
                if s.cam2world is None or len(s.cam2world) != len(s.depth):
                    raise ValueError(
                        f"geometry={self.cfg.geometry} needs Sample.cam2world, one pose per frame; sample {s.id} has "
                        f"{'none' if s.cam2world is None else len(s.cam2world)} for {len(s.depth)} depth maps "
                        "(VG-LLM rows: cam2global; VSI-Bench rows: pose_dir; an embedded benchmark rendered before "
                        "2026-12-02 lacks VSI-Bench poses: delete its directory and run again, data.generate re-renders it)"
                    )
                own = self.cfg.geometry == "points_own"
                maps = [point_map(d, s.intrinsics, c2w, s.cam2world[0], own) for d, c2w in zip(s.depth, s.cam2world)]
            else:
                maps = [depth_ray_map(d, s.intrinsics) for d in s.depth]
            entries.extend([maps] if video else [[m] for m in maps])
        rows = geometry_patches(entries, grid, ip.patch_size, ip.merge_size, ip.temporal_patch_size)
        return {"geometry_values": rows}

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ forward pieces
    def positions(self, input_ids: Tensor, mm_token_type_ids: Tensor, attention_mask: Tensor,
                  batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:  # fmt: skip
        """mrope positions ``(3, B, L)`` and ``rope_deltas`` ``(B, 1)`` from the model's own ``get_rope_index``."""
        kw = {
            k: batch[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if batch.get(k) is not None
        }
        return self.core.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=attention_mask, **kw
        )

    def encode_visual(self, batch: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """Per-entry visual embeddings ``{"image"|"video": [(tokens_i, D), ...]}`` (+ the geometry prior)."""
        out: dict[str, list[Tensor]] = {}
        for kind, pix, grid in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            if batch.get(pix) is None:
                continue
            get = self.core.get_image_features if kind == "image" else self.core.get_video_features
            feats = list(get(batch[pix], batch[grid], return_dict=True).pooler_output)
            geometry = self.reference_geometry if self._reference_active else None
            geometry = geometry if geometry is not None else self.geometry
            if geometry is not None:
                geo_in = {k: batch[k] for k in ("geometry_values", "geometry_frames") if k in batch}
                add = geometry(grid_thw=batch[grid], **geo_in).to(feats[0].dtype)  # (sum tokens_i, D)
                feats = list(torch.cat(feats).add(add).split([len(f) for f in feats]))
            out[kind] = feats
        return out

    @staticmethod
    def encoder_outputs(feats: dict[str, list[Tensor]]) -> dict[str, BaseModelOutputWithPooling]:
        return {k: BaseModelOutputWithPooling(pooler_output=tuple(v)) for k, v in feats.items()}

    def visual_kwargs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """What HF's forward takes for the frames: raw pixels (plain model) or precomputed features (prior)."""
        keys = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw")
        if self.geometry is None or not any(batch.get(k) is not None for k in keys):  # plain model, or text only
            return {k: batch[k] for k in keys if batch.get(k) is not None}
        return {"mm_encoder_outputs": self.encoder_outputs(self.encode_visual(batch))}

    def forward(self, batch: dict[str, Tensor]) -> Any:
        """HF output with ``logits`` ``(B, L, V)`` (and ``loss`` when ``batch`` has ``labels``)."""
        batch = self.to_device(batch)
        pos, _ = self.positions(batch["input_ids"], batch["mm_token_type_ids"], batch["attention_mask"], batch)
        return self.hf_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=pos,
            labels=batch.get("labels"),
            use_cache=False,
            **self.visual_kwargs(batch),
        )

    # ------------------------------------------------------------------ generation (lit3drft.models.generation)
    def generate(self, samples: list[Sample], max_new_tokens: int = SAMPLING.max_new_tokens,
                 greedy: bool = True) -> list[str]:  # fmt: skip
        """Greedy (or sampled at the default temperature) completions, one per sample, for validation and test."""
        return generation.generate_texts(self, samples, max_new_tokens, greedy)

    def generate_group(self, samples: list[Sample] | dict[str, Tensor], num_generations: int = 8,
                       temperature: float = SAMPLING.temperature, top_p: float = SAMPLING.top_p,
                       top_k: int | None = SAMPLING.top_k, max_new_tokens: int = SAMPLING.max_new_tokens,
                       merge_adapter: bool = False) -> generation.Rollout:  # fmt: skip
        """G sampled completions per prompt (``lit3drft.models.generation.generate_group``)."""
        return generation.generate_group(self, samples, num_generations, temperature, top_p, top_k, max_new_tokens,
                                         merge_adapter)  # fmt: skip

    def sequence_logprobs(self, rollout: generation.Rollout, rows: list[int] | Tensor | None = None,
                          temperature: float | None = None, chunk_size: int = 64,
                          shared_prefix: bool | None = None) -> Tensor:  # fmt: skip
        """Per-token log-probs ``(len(rows), T)`` of the rollout's completions (0 where masked)."""
        return generation.sequence_logprobs(self, rollout, rows, temperature, chunk_size, shared_prefix)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, path: str) -> None:
        """Adapter (LoRA) or full weights, the processor and the geometry prior into ``path``."""
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        if self.geometry is not None:
            torch.save(self.geometry.state_dict(), f"{path}/geometry_prior.pt")

    def load_adapter(self, path: str) -> None:
        """Load LoRA weights saved by ``save_pretrained`` into the active adapter (and the geometry prior)."""
        from pathlib import Path

        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(Path(path) / "adapter_model.safetensors")))
        if self.geometry is not None and (Path(path) / "geometry_prior.pt").exists():
            self.geometry.load_state_dict(torch.load(Path(path) / "geometry_prior.pt", map_location="cpu"))


def frozen_modules(root: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``root`` that hold parameters, none of them trainable (their children
    included): what stays in eval mode while ``root`` trains."""
    out: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    for child in root.children():
        visit(child)
    return out
