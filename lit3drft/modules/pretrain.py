"""Perception pretraining of the embedded base: detection answers + dense per-token losses on rendered rooms.

The batch's visual features are computed once (``Policy.encode_visual``, with gradients), read by a dense head,
and handed to the language model through HF's ``mm_encoder_outputs`` hook; a second head reads the language
model's last hidden state at the visual positions. Validation greedily decodes held-out clips and logs what
tells whether the policy sees: class-agnostic mIoU, label accuracy, centre error, the benchmark's detection
F1 and the **image-swap gap** (answer cross-entropy with the next sample's frames minus with its own).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half

from lit3drft.algorithms.dense import (
    BOX_SCALE,
    DenseHead,
    answer_box_positions,
    box2d_probe,
    dense_losses,
    detection_probe,
    token_mean_ratio,
)
from lit3drft.algorithms.sft import answer_only_cross_entropy
from lit3drft.data.perception import (
    NUM_CLASSES,
    PretrainConfig,
    box2d_sample,
    category_sample,
    copy_text_sample,
    framed_copy_sample,
    grounding_sample,
)
from lit3drft.models.decode import language_model
from lit3drft.modules.base import PolicyModule
from lit3drft.rewards.grounding import grounding_scores

POINTER_DIM = 64
"""Width of ``pretrain.pointer_weight``'s query and key projections."""


class PretrainModule(PolicyModule):
    """``kind: pretrain`` stages; batches come from ``lit3drft.data.perception.collate_perception``."""

    def __init__(self, pretrain_cfg: PretrainConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pretrain_cfg = pretrain_cfg
        width = self.policy.core.config.text_config.hidden_size
        self.heads = torch.nn.ModuleDict(
            {"vision": DenseHead(width, NUM_CLASSES), "llm": DenseHead(width, NUM_CLASSES)}
        )
        if pretrain_cfg.answer_box_weight > 0:  # only then: older checkpoints resume with the same heads
            self.heads["answer"] = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 6))
        if pretrain_cfg.pointer_weight > 0:  # likewise: only then
            self.heads["pointer_q"] = torch.nn.Sequential(
                torch.nn.LayerNorm(width), torch.nn.Linear(width, POINTER_DIM)
            )
            self.heads["pointer_k"] = torch.nn.Sequential(
                torch.nn.LayerNorm(width), torch.nn.Linear(width, POINTER_DIM)
            )
        self.image_token_id = self.policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self._digit_ids: Tensor | None = None  # token ids whose text holds a digit (attend_weight's positions)
        if pretrain_cfg.attend_weight > 0:
            self._attend_module()  # a bad layer or head fails here, naming the key
        self._val: dict[str, list[tuple[float, int]]] = {}
        self.last_val: dict[str, float] = {}
        self._last_step_at: float | None = None

    # ------------------------------------------------------------------ forward
    def _forward(self, batch: dict[str, Any], vision_only: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Answer CE and the dense losses of one batch (``vision_*`` and ``llm_*``); ``vision_only`` skips the
        language model (CE 0)."""
        policy = self.policy
        b = policy.to_device(batch["inputs"])
        d = {k: v.to(policy.device) for k, v in batch["dense"].items()}
        feats = policy.encode_visual(b)  # {"image": [(tokens_i, D), ...]}
        probe = self.pretrain_cfg.dense_weight == 0  # heads as linear probes: no gradient into the policy
        vis = torch.cat(feats["image"])  # (sum tokens, D), the order of the dense targets
        vis = vis.detach() if probe else vis
        heads = self.heads
        center = token_mean_ratio(vis)
        losses = {f"vision_{k}": v for k, v in dense_losses(heads["vision"](vis), d["cls"], d["depth"], d["own"],
                                                            d["has_obj"]).items()}  # fmt: skip
        losses["vision_center"] = center
        if vision_only:
            return vis.new_zeros(()), losses
        answer_box = self.pretrain_cfg.answer_box_weight > 0
        pointer = self.pretrain_cfg.pointer_weight > 0
        captured: dict[str, Any] = {}
        with self._capture_attention(captured):
            out = self._language_model(b, feats, hidden=self.pretrain_cfg.dense_on_llm or answer_box or pointer)
        if captured:
            losses["attend"], losses["attend_mass"] = self._attend_loss(captured, b, batch["samples"], d["owner"])
        ce = answer_only_cross_entropy(out.logits, b["labels"])
        if answer_box:
            losses["answer_box"] = self._answer_box_loss(out.hidden_states[-1], b["labels"], batch["targets"])
        if pointer:
            losses["pointer"], losses["pointer_acc"] = self._pointer_loss(out.hidden_states[-1], b, batch["samples"],
                                                                          d["owner"])  # fmt: skip
        if self.pretrain_cfg.dense_on_llm:
            hidden = out.hidden_states[-1][b["input_ids"] == self.image_token_id]  # (sum tokens, D)
            hidden = hidden.detach() if probe else hidden
            llm = dense_losses(heads["llm"](hidden), d["cls"], d["depth"], d["first"], d["has_obj"])
            losses.update({f"llm_{k}": v for k, v in llm.items()})
        return ce, losses

    def _language_model(self, b: dict[str, Tensor], feats: dict[str, list[Tensor]], hidden: bool) -> Any:
        """The language model's forward on batch ``b`` with visual features ``feats`` already encoded (through HF's
        ``mm_encoder_outputs`` hook); ``hidden``: also return every layer's hidden states."""
        policy = self.policy
        pos, _ = policy.positions(b["input_ids"], b["mm_token_type_ids"], b["attention_mask"], b)
        return policy.hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=pos,
                               use_cache=False, output_hidden_states=hidden,
                               mm_encoder_outputs=policy.encoder_outputs(feats))  # fmt: skip

    def _answer_box_loss(self, hidden: Tensor, labels: Tensor, targets: list[dict]) -> Tensor:
        """``pretrain.answer_box_weight``'s loss: the box being written, from the state before each of its tokens
        (``answer_box_at=first``: before its first one only; a detection answer's boxes in the first camera; a
        grounding answer's box in its answered frame's camera)."""
        rows, cols, boxes = [], [], []
        for r, target in enumerate(targets):
            box = target.get("answer_bbox_3d") or target.get("bbox_3d")  # the box a grounding answer writes
            gt = target.get("boxes") or ([box] if target.get("task") == "grounding" else [])
            for col, k in self._box_states(labels[r], len(gt), self.pretrain_cfg.answer_box_at == "first"):
                rows.append(r)
                cols.append(col)
                boxes.append(gt[k][:6])
        if not rows:
            return hidden.sum() * 0.0
        pred = self.heads["answer"](hidden[rows, cols].float())
        scale = BOX_SCALE.to(pred.device)
        return (pred / scale - torch.tensor(boxes, device=pred.device) / scale).abs().mean()

    def _box_states(self, labels: Tensor, n_boxes: int, first: bool) -> list[tuple[int, int]]:
        """``(position, k)``: the states that predict the numbers of answer box ``k`` (of ``n_boxes``) in the answer
        tokens of ``labels`` (one row, -100 outside the answer; after its think, if any); ``first``: only each box's
        first number's."""
        row = labels.tolist()
        where = [j for j, t in enumerate(row) if t != -100]
        tok = self.policy.tokenizer
        pieces = [tok.decode([row[j]]) for j in where]
        text = "".join(pieces)
        if "</think>" in text:  # the answer's boxes, not those a think lists (``grounding_think=listing``)
            end = text.index("</think>") + len("</think>")
            cut = next(n for n, e in enumerate(itertools.accumulate(map(len, pieces)), 1) if e >= end)
            where, pieces = where[cut:], pieces[cut:]
        pairs = answer_box_positions(pieces, n_boxes)
        if first:
            pairs = [(i, k) for n, (i, k) in enumerate(pairs) if n == 0 or pairs[n - 1][1] != k]
        return [(where[i] - 1, k) for i, k in pairs]  # the state that predicts answer token where[i]

    def _grounding_clips(self, b: dict[str, Tensor], samples: list, owner: Tensor) -> Iterator[tuple]:
        """``(row, sample, its grounding meta, the owner of each of its visual tokens, its visual-token mask)`` for
        the batch's grounding clips (``owner``: the dense targets' object ids, in the visual tokens' order)."""
        is_img = b["input_ids"] == self.image_token_id  # (B, L)
        per_sample = torch.split(owner, is_img.sum(1).tolist())
        for r, s in enumerate(samples):
            g = (s.meta or {}).get("grounding")
            if s.task == "grounding" and g is not None:
                yield r, s, g, per_sample[r], is_img[r]

    def _pointer_loss(
        self, hidden: Tensor, b: dict[str, Tensor], samples: list, owner: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``pretrain.pointer_weight``'s loss and accuracy over the batch's grounding clips whose referred object owns
        a visual token: ``-log`` of the softmax mass on its tokens (loss 0 and accuracy NaN when there is none)."""
        losses, hits = [], []
        for r, _, g, tokens, is_img in self._grounding_clips(b, samples, owner):
            mask = tokens == int(g["object"])
            answer = torch.nonzero(b["labels"][r] != -100)
            if not mask.any() or len(answer) == 0:
                continue
            q = self.heads["pointer_q"](hidden[r, int(answer[0]) - 1].float())  # the state that starts the answer
            k = self.heads["pointer_k"](hidden[r][is_img].float())  # (T, POINTER_DIM)
            logits = k @ q / POINTER_DIM**0.5
            losses.append(torch.logsumexp(logits, 0) - torch.logsumexp(logits[mask], 0))
            hits.append(mask[logits.argmax()].float())
        if not losses:
            return hidden.sum() * 0.0, hidden.new_tensor(float("nan"))
        return torch.stack(losses).mean(), torch.stack(hits).mean()

    # ------------------------------------------------------------------ attention supervision (attend_weight)
    def _attend_module(self) -> torch.nn.Module:
        """The attention module of ``pretrain.attend_layer``; a layer or head out of range fails naming the key."""
        c = self.pretrain_cfg
        layers = language_model(self.policy.hf_model).layers
        if not -len(layers) <= c.attend_layer < len(layers):
            raise ValueError(f"pretrain.attend_layer={c.attend_layer}: the language model has {len(layers)} layers")
        attn = layers[c.attend_layer].self_attn
        if not 0 <= c.attend_head < attn.config.num_attention_heads:
            raise ValueError(f"pretrain.attend_head={c.attend_head}: the layer has "
                             f"{attn.config.num_attention_heads} query heads")  # fmt: skip
        return attn

    @contextlib.contextmanager
    def _capture_attention(self, captured: dict[str, Any]) -> Iterator[None]:
        """With ``pretrain.attend_weight``, record the input (hidden states, rotary cos/sin) of the supervised layer's
        attention during the forward inside (``captured``: ``hidden``, ``cos``, ``sin``); otherwise nothing."""
        if self.pretrain_cfg.attend_weight <= 0:
            yield
            return

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            captured["cos"], captured["sin"] = kwargs["position_embeddings"]

        handle = self._attend_module().register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _attend_probs(self, captured: dict[str, Any], r: int, queries: Tensor, valid: Tensor) -> Tensor:
        """Log-softmax attention of the supervised head, row ``r``, from positions ``queries`` over every position
        (the layer's own projections and rotary embedding, causal, ``valid`` keys only): ``(len(queries), L)``."""
        attn, h = self._attend_module(), self.pretrain_cfg.attend_head
        hd, groups = attn.head_dim, attn.num_key_value_groups
        x, cos, sin = captured["hidden"][r], captured["cos"][r], captured["sin"][r]  # (L, D), (L, hd)
        q = torch.nn.functional.linear(x[queries], attn.q_proj.weight[h * hd:(h + 1) * hd],
                                       attn.q_proj.bias[h * hd:(h + 1) * hd])  # fmt: skip
        kv = h // groups
        k = torch.nn.functional.linear(x, attn.k_proj.weight[kv * hd:(kv + 1) * hd],
                                       attn.k_proj.bias[kv * hd:(kv + 1) * hd])  # fmt: skip
        q = q * cos[queries] + rotate_half(q) * sin[queries]
        k = k * cos + rotate_half(k) * sin
        scores = (q @ k.T).float() * attn.scaling
        pos = torch.arange(len(x), device=x.device)
        allowed = (pos[None, :] <= queries[:, None]) & valid[None, :]
        return torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), -1)

    def _attend_loss(self, captured: dict[str, Any], b: dict[str, Tensor], samples: list, owner: Tensor
                     ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``pretrain.attend_weight``'s loss and mean attention mass over the batch's grounding clips whose referred
        object owns a visual token in the answered frame: at each answer position ``attend_at`` names, ``-log`` of
        the supervised head's mass on those tokens (loss 0 and mass NaN when there is none)."""
        if self._digit_ids is None:
            tok = self.policy.tokenizer
            digits = [i for i in range(len(tok)) if any(ch.isdigit() for ch in tok.decode([i]))]
            self._digit_ids = torch.tensor(digits, dtype=torch.long)
        losses, masses = [], []
        for r, s, g, tokens, is_img in self._grounding_clips(b, samples, owner):
            per_frame = len(tokens) // max(len(s.frames), 1)
            frame_of = torch.arange(len(tokens), device=tokens.device) // max(per_frame, 1)
            mask = (tokens == int(g["object"])) & (frame_of == int(g["frame"]))
            labels = b["labels"][r]
            if self.pretrain_cfg.attend_at == "digits":
                writes = (labels != -100) & torch.isin(labels, self._digit_ids.to(labels.device))
                cols = torch.nonzero(writes).flatten() - 1  # the states that predict those tokens
            else:  # the answer box's numbers, or its first one
                states = self._box_states(labels, 1, self.pretrain_cfg.attend_at == "first")
                cols = torch.tensor([c for c, _ in states], dtype=torch.long, device=labels.device)
            if not mask.any() or len(cols) == 0:
                continue
            logp = self._attend_probs(captured, r, cols, b["attention_mask"][r].bool())
            target = torch.nonzero(is_img).flatten()[mask]
            per_pos = torch.logsumexp(logp[:, target], -1)  # log of the mass on the object's tokens
            losses.append(-per_pos.mean())
            masses.append(per_pos.exp().mean())
        if not losses:
            return captured["hidden"].sum() * 0.0, captured["hidden"].new_tensor(float("nan"))
        return torch.stack(losses).mean(), torch.stack(masses).mean().detach()

    def _total(self, ce: Tensor, losses: dict[str, Tensor]) -> Tensor:
        c = self.pretrain_cfg
        center = losses["vision_center"] * (c.center_weight if c.dense_weight else 0.0)
        extra = ("answer_box", "pointer", "attend")  # weighted on their own
        dense = center + sum(v for k, v in losses.items()
                             if not k.endswith(("_acc", "_center", "_mass")) and k not in extra)  # fmt: skip
        answer_box = c.answer_box_weight * losses["answer_box"] if "answer_box" in losses else 0.0
        pointer = c.pointer_weight * losses["pointer"] if "pointer" in losses else 0.0
        attend = c.attend_weight * losses["attend"] if "attend" in losses else 0.0
        # dense_weight 0: the heads are probes on detached tokens, trained at weight 1
        return c.answer_weight * ce + (c.dense_weight or 1.0) * dense + answer_box + pointer + attend

    def _text_copy_ce(self, step: int, n: int, seed: int) -> Tensor:
        """Answer cross-entropy of ``n`` text-only copy samples (``copy_text_sample``) of stream ``seed``, the ones
        of training step ``step`` (every step its own, the same on resume and on every rank)."""
        start = (step * self.trainer.world_size + self.global_rank) * n
        samples = [copy_text_sample(seed, start + i, self.pretrain_cfg.text_gap) for i in range(n)]
        b = self.policy.to_device(self.policy.collate(samples, with_answer=True))
        return answer_only_cross_entropy(self.policy(b).logits, b["labels"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        c = self.pretrain_cfg
        vision_only = self.global_step < c.vision_warmup_steps
        ce, losses = self._forward(batch, vision_only=vision_only)
        loss = self._total(ce, losses)
        n = len(batch["samples"])
        if c.text_weight > 0 and not vision_only:
            text = self._text_copy_ce(self.global_step, c.text_batch, c.seed)
            loss = loss + c.text_weight * text
            self.log("train/text_copy_ce", text, batch_size=c.text_batch)
        now = time.perf_counter()
        if self._last_step_at is not None:  # seconds per training step (rendering included, validation not)
            self.log("time/step_s", now - self._last_step_at, batch_size=n)
        self._last_step_at = now
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/answer_ce", ce, batch_size=n)
        self.log_dict({f"train/dense/{k}": v for k, v in losses.items() if torch.isfinite(v)}, batch_size=n)
        return loss

    def on_train_start(self) -> None:
        """Standardise the merger's output once, before the first step of a fresh stage, and give a fresh geometry
        prior its starting scale (``geometry_init_ratio``); not on resume: the checkpoint holds both already."""
        c = self.pretrain_cfg
        fold = c.center_weight > 0 and c.dense_weight > 0
        if self.global_step > 0 or not (fold or c.geometry_init_ratio > 0):
            return
        batch = next(iter(self.trainer.datamodule.train_dataloader()))  # a separate loader: the fit's is untouched
        if fold:
            ratio = standardise_merger(self.policy, batch["inputs"])
            if ratio is not None:
                print(f"[lit3drft] merger output standardised (token mean ratio was {ratio:.1f})")
        if c.geometry_init_ratio > 0:
            norms = scale_geometry_prior(self.policy, batch["inputs"], c.geometry_init_ratio)
            if norms is not None:
                print(f"[lit3drft] geometry prior starts at token norm {norms[1]:.2f} (visual tokens {norms[0]:.2f})")

    # ------------------------------------------------------------------ optimiser: vision parts may get a larger lr
    def param_groups(self) -> list[dict[str, Any]]:
        """The language model at ``stage.lr``; the vision tower, merger and dense heads at ``vision_lr_scale`` x it;
        the geometry prior at ``vision_lr_scale`` x ``geometry_lr_scale`` x it (a group of its own only when the
        latter is not 1, so that runs without it keep their optimiser layout)."""
        c = self.pretrain_cfg
        params = self.trainable_parameters()
        names = {id(p): n for n, p in self.policy.named_parameters() if p.requires_grad}
        split = c.geometry_lr_scale != 1.0
        geometry = {i for i, n in names.items() if n.startswith("geometry.")} if split else set()
        vision = {i for i, n in names.items() if "visual" in n or n.startswith("geometry.")} - geometry
        fast = [p for p in params if id(p) in vision] + list(self.heads.parameters())
        groups = [{"params": [p for p in params if id(p) not in vision | geometry]},
                  {"params": fast, "lr": self.stage.lr * c.vision_lr_scale}]  # fmt: skip
        if split:
            groups.append({"params": [p for p in params if id(p) in geometry],
                           "lr": self.stage.lr * c.vision_lr_scale * c.geometry_lr_scale})  # fmt: skip
        return groups

    # ------------------------------------------------------------------ validation: does it see?
    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        samples, targets = batch["samples"], batch["targets"]
        was_training = self.policy.training
        self.policy.eval()
        ce, losses = self._forward(batch)
        ce_swap = self._answer_ce(samples, self.policy.to_device(batch["inputs"])["labels"], swap=True)
        completions = self.policy.generate(samples, max_new_tokens=self.eval_cfg.max_new_tokens)
        row = {}
        if self.pretrain_cfg.box2d_share > 0:  # the same clips asked for the first frame's 2D boxes
            flat = [box2d_sample(s) for s in samples]
            row["box2d/swap_gap"] = self._swap_gap(flat)[1]
            out2 = self.policy.generate(flat, max_new_tokens=self.eval_cfg.max_new_tokens)
            row.update({f"box2d/{k}": v for k, v in box2d_probe(out2, [s.target for s in flat]).items()})
        losses = {k: v for k, v in losses.items() if not k.startswith(("pointer", "attend"))}  # scored below
        if self.pretrain_cfg.grounding_share > 0:
            row.update(self._grounding_validation(samples, batch))
        if self.pretrain_cfg.text_weight > 0:  # held-out copy samples (seed + 1): can it read its prompt back?
            copies = [copy_text_sample(self.pretrain_cfg.seed + 1, batch_idx * len(samples) + i, self.pretrain_cfg.text_gap)
                      for i in range(len(samples))]  # fmt: skip
            row["copy/answer_ce"], row["copy/question_swap_gap"] = self._swap_gap(copies, swap="prompt")
        if self.pretrain_cfg.category_share > 0:
            row.update(self._category_validation(samples))
        if self.pretrain_cfg.copy_share > 0:  # the same, asked after the held-out clips' frames
            framed = [framed_copy_sample(s, self.pretrain_cfg.seed + 1, batch_idx * len(samples) + i,
                                         self.pretrain_cfg.text_gap) for i, s in enumerate(samples)]  # fmt: skip
            row["copy_frames/answer_ce"], row["copy_frames/question_swap_gap"] = self._swap_gap(framed, swap="prompt")
        self.policy.train(was_training)
        self.val_metrics.update(completions, targets)
        row.update({"answer_ce": ce.item(), "swap_gap": (ce_swap - ce).item(),
                    **{f"dense/{k}": v.item() for k, v in losses.items()}, **detection_probe(completions, targets)})  # fmt: skip
        for k, v in row.items():
            self._val.setdefault(k, []).append((v, len(samples)))

    def _category_validation(self, samples: list) -> dict[str, float]:
        """Held-out clips with two categories or more asked for the first one's boxes: answer CE, and the
        **category-swap gap** (the same answer's CE under the question naming the clip's other category minus under
        its own; same frames): how much the answer owes to the question's category word."""
        two = [s for s in samples if len(set(s.target["labels"])) >= 2]
        if not two:
            return {}
        own, other = [], []
        for s in two:
            first, second = list(dict.fromkeys(s.target["labels"]))[:2]
            asked = category_sample(s, first)
            own.append(asked)
            other.append(replace(asked, prompt=category_sample(s, second).prompt))
        ce_own, ce_other = self._answer_ce(own), self._answer_ce(other)
        return {"category/answer_ce": ce_own.item(), "category/swap_gap": (ce_other - ce_own).item()}

    def _grounding_validation(self, samples: list, batch: dict[str, Any]) -> dict[str, float]:
        """The held-out clips with a describable object asked the benchmark's grounding question: swap gap,
        Acc@0.25 (world-frame IoU through the answered frame's pose, as the benchmark scores it), mIoU, frame
        accuracy; with ``pretrain.pointer_weight``, the pointer's loss and accuracy on them."""
        asked = [i for i, s in enumerate(samples) if s.meta.get("grounding")]
        flat = [grounding_sample(samples[i], self.pretrain_cfg.grounding_mode) for i in asked]
        if len(flat) < 2:  # a swap needs another clip
            return {}
        row = {}
        if self.pretrain_cfg.pointer_weight > 0 or self.pretrain_cfg.attend_weight > 0:
            counts = (batch["inputs"]["input_ids"] == self.image_token_id).sum(1).tolist()
            owners = torch.split(batch["dense"]["owner"], counts)
            b = self.policy.to_device(self.policy.collate(flat, with_answer=True))
            captured: dict[str, Any] = {}
            with self._capture_attention(captured):
                out = self._language_model(b, self.policy.encode_visual(b), hidden=True)
            owner = torch.cat([owners[i] for i in asked]).to(self.policy.device)
            if self.pretrain_cfg.pointer_weight > 0:
                loss, acc = self._pointer_loss(out.hidden_states[-1], b, flat, owner)
                row.update({"grounding/pointer": loss.item(), "grounding/pointer_acc": acc.item()})
            if captured:
                loss, mass = self._attend_loss(captured, b, flat, owner)
                row.update({"grounding/attend": loss.item(), "grounding/attend_mass": mass.item()})
        swap_gap = self._swap_gap(flat)[1]
        row["grounding/question_swap_gap"] = self._swap_gap(flat, swap="prompt")[1]
        completions = self.policy.generate(flat, max_new_tokens=self.eval_cfg.max_new_tokens)
        frame_score, iou, parsed = grounding_scores(completions, [s.target for s in flat])
        return {**row, "grounding/swap_gap": swap_gap, "grounding/acc25": (iou >= 0.25).float().mean().item(),
                "grounding/miou": iou.mean().item(), "grounding/frame_acc": (frame_score == 1).float().mean().item(),
                "grounding/parsed": parsed.float().mean().item()}  # fmt: skip

    def _answer_ce(self, samples: list, labels: Tensor | None = None, swap: bool | str = False) -> Tensor:
        """Answer-only cross-entropy (nats/token) of ``samples`` (against ``labels``, default their own); with ``swap``
        (``True`` or ``"frames"``), each asked on the next sample's frames instead (the image-swap probe: what the
        answer owes to the pixels); ``"prompt"``: under the next sample's prompt (what it owes to the question)."""
        if swap:
            key = "prompt" if swap == "prompt" else "frames"
            samples = [
                replace(s, **{key: getattr(samples[(i + 1) % len(samples)], key)}) for i, s in enumerate(samples)
            ]
        b = self.policy.to_device(self.policy.collate(samples, with_answer=True))
        labels = b["labels"] if labels is None or swap == "prompt" else labels  # same answers, new positions
        return answer_only_cross_entropy(self.policy(b).logits, labels)

    def _swap_gap(self, samples: list, swap: str = "frames") -> tuple[float, float]:
        """The answer cross-entropy of ``samples`` and the swap gap: on another sample's frames (``swap="prompt"``:
        prompt) minus on the sample's own, nats/token."""
        b = self.policy.to_device(self.policy.collate(samples, with_answer=True))
        own = answer_only_cross_entropy(self.policy(b).logits, b["labels"])
        return own.item(), (self._answer_ce(samples, b["labels"], swap=swap) - own).item()

    def on_validation_epoch_end(self) -> None:
        values = {}
        for k, rows in self._val.items():
            rows = [(v, n) for v, n in rows if v == v]  # NaN: no object cell / no prediction in that batch
            if rows:
                values[f"val/{k}"] = sum(v * n for v, n in rows) / sum(n for _, n in rows)
        self._val = {}
        values.update({f"val/{k}": float(v) for k, v in self.val_metrics.compute().items()})
        self.val_metrics.reset()
        self.last_val = values  # what metrics.json of a pretraining run holds
        self._last_step_at = None
        self.log_dict(values)

    # ------------------------------------------------------------------ checkpoints keep the heads too
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        heads = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("heads.")}
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"].update(heads)


@torch.no_grad()
def scale_geometry_prior(policy: Any, inputs: dict[str, Tensor], ratio: float) -> tuple[float, float] | None:
    """Give a fresh (all-zero output layer) geometry prior a random output layer whose tokens' mean norm is
    ``ratio`` x the visual tokens' on ``inputs``; returns ``(visual norm, prior norm)``, None when there is no fresh
    prior (none configured, or trained weights loaded)."""
    geometry = getattr(policy, "geometry", None)
    last = geometry.merger.mlp[-1] if geometry is not None and hasattr(geometry, "merger") else None
    if last is None or last.weight.abs().sum() > 0 or last.bias.abs().sum() > 0:
        return None
    b = policy.to_device(inputs)
    grid = b["video_grid_thw" if "video_grid_thw" in b else "image_grid_thw"]
    visual = torch.cat(policy.encode_visual(b)["image" if "image_grid_thw" in b else "video"])  # + the prior: 0 now
    torch.nn.init.normal_(last.weight, std=1.0 / last.in_features**0.5)
    geo_in = {k: b[k] for k in ("geometry_values", "geometry_frames") if k in b}
    out = geometry(grid_thw=grid, **geo_in).float()
    v, g = float(visual.float().norm(dim=-1).mean()), float(out.norm(dim=-1).mean())
    last.weight.mul_(ratio * v / max(g, 1e-6))
    return v, ratio * v


@torch.no_grad()
def standardise_merger(policy: Any, inputs: dict[str, Tensor], threshold: float = 1.0) -> float | None:
    """Fold ``(v - mean) / std`` of the visual tokens of ``inputs`` into the merger's last linear layer when their
    ``token_mean_ratio`` exceeds ``threshold`` (the model stays an ordinary Qwen2.5-VL); returns the ratio then."""
    feats = torch.cat(policy.encode_visual(policy.to_device(inputs))["image"])  # (T, D)
    ratio = float(token_mean_ratio(feats))
    if ratio <= threshold:
        return None
    last = policy.core.visual.merger.mlp[-1]
    mean, std = feats.mean(0), feats.std(0).mean().clamp(min=1e-6)
    last.weight.div_(std)
    last.bias.sub_(mean).div_(std)
    return ratio
