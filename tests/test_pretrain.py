"""The perception pretraining recipe (``experiments/pretrain_tiny.yaml``), a few steps of it, end to end."""

from __future__ import annotations

import json
from dataclasses import replace as replace_model
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit3drft import fit
from lit3drft.config import ConfigError, load_config
from lit3drft.data import prompts as P
from lit3drft.data.perception import PerceptionDataModule, PerceptionDataset, collate_perception
from lit3drft.models import build_policy
from lit3drft.models.config import ModelConfig
from lit3drft.modules.pretrain import PretrainModule

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "experiments" / "pretrain_tiny.yaml"


def _cfg(run_overrides: list[str], tmp_path: Path, *extra: str):
    small = ["pretrain.val_samples=2", "trainer.val_every_n_steps=0", "stages.0.warmup_ratio=0"]
    return load_config(RECIPE, [*run_overrides, f"output_dir={tmp_path}", *small, *extra])


def test_the_recipe_runs_logs_the_probes_and_exports_a_base_that_loads(run_overrides, tmp_path) -> None:
    cfg = _cfg(
        run_overrides, tmp_path, "stages.0.max_steps=3", "pretrain.vision_warmup_steps=1", "trainer.val_every_n_steps=3"
    )
    payload = fit.fit(cfg)
    run = tmp_path / "pretrain_tiny" / "run"
    for key in ("val/miou", "val/label_acc", "val/swap_gap", "val/answer_ce", "val/dense/vision_cls",
                "val/dense/llm_box", "val/detection/f1", "val/format_rate"):  # fmt: skip
        assert key in payload["metrics"], key
    assert json.loads((run / "metrics.json").read_text()) == payload
    hf = run / "stages" / "0-pretrain" / fit.PRETRAINED_DIR
    weights = load_file(hf / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    # the exported directory loads through the real-checkpoint path and holds the trained weights
    trained = torch.load(run / "stages" / "0-pretrain" / "trainable.pt")
    assert cfg.model.geometry == "points"  # the recipe trains the base's prior (experiments/base/tiny.yaml)
    base = build_policy(ModelConfig(preset="", pretrained=str(hf), finetune="full", freeze_vision=False,
                                    geometry=cfg.model.geometry))  # fmt: skip
    own = dict(base.named_parameters())
    for name, value in trained.items():
        assert torch.equal(own[name].detach(), value.to(torch.bfloat16).float()), name
    # the heads live in the checkpoint (exact resume), not in the exported base
    ckpt = torch.load(run / "stages" / "0-pretrain" / "checkpoints" / "last.ckpt", weights_only=False)
    assert any(k.startswith("heads.vision.") for k in ckpt["state_dict"])
    assert not any("heads" in k for k in weights)


@pytest.mark.parametrize("dense_weight", [1.0, 0.0])
def test_the_dense_loss_reaches_the_vision_tower_only_when_weighted(run_overrides, tmp_path, dense_weight) -> None:
    cfg = _cfg(run_overrides, tmp_path, f"pretrain.dense_weight={dense_weight}")
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 4)
    batch = collate_perception([data[0], data[1]], policy)
    _, losses = module._forward(batch)
    # the dense part alone (the answer-state box loss, on in the recipe, is its own lever with its own weight)
    sum(v for k, v in losses.items() if not k.endswith("_acc") and k != "answer_box").backward()
    vision = [p.grad for n, p in policy.named_parameters() if "visual" in n]
    reached = any(g is not None and g.abs().sum() > 0 for g in vision)
    assert reached == (dense_weight > 0)
    assert module.heads["vision"].proj.weight.grad.abs().sum() > 0  # the probes learn either way


def test_vision_warmup_steps_skip_the_language_model(run_overrides, tmp_path) -> None:
    cfg = _cfg(run_overrides, tmp_path)
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 2)
    ce, losses = module._forward(collate_perception([data[0], data[1]], policy), vision_only=True)
    assert ce.item() == 0 and set(losses) == {
        "vision_cls",
        "vision_depth",
        "vision_box",
        "vision_cls_acc",
        "vision_center",
    }
    module._total(ce, losses).backward()
    llm = [p.grad for n, p in policy.named_parameters() if "language_model" in n]
    assert all(g is None for g in llm)


def test_pretraining_on_the_benchmark_seed_is_refused(run_overrides, tmp_path) -> None:
    cfg = _cfg(run_overrides, tmp_path, "pretrain.seed=0", "data.synth.seed=0", "stages.0.max_steps=1")
    with pytest.raises(ValueError, match="pretrain.seed=0: must differ from data.synth.seed"):
        fit.build_datamodule(cfg, None, cfg.stages[0])
    with pytest.raises(ConfigError):
        load_config(RECIPE, ["stages.0.kind=pretrained"])


def test_the_shipped_base_is_a_small_bf16_hf_directory_that_the_tiny_experiments_load() -> None:
    """``results/pretrain_tiny/base`` is what every embedded experiment starts from (``experiments/base/tiny.yaml``)."""
    cfg = load_config(ROOT / "experiments" / "sft_tiny.yaml")
    base = ROOT / cfg.model.pretrained
    assert cfg.model.preset == "" and base == ROOT / "results" / "pretrain_tiny" / "base"
    files = {p.name: p.stat().st_size for p in base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(files)
    assert files["model.safetensors"] < 25e6
    assert {v.dtype for v in load_file(base / "model.safetensors").values()} == {torch.bfloat16}
    assert cfg.model.geometry == "points" and (base / "geometry_prior.safetensors").is_file()  # its trained prior
    policy = build_policy(replace_model(cfg.model, pretrained=str(base)))
    assert policy.geometry is not None and any(v.abs().sum() > 0 for v in policy.geometry.state_dict().values())
    frozen = [p for n, p in policy.named_parameters() if "visual" in n or n.startswith("geometry.")]
    assert frozen and not any(p.requires_grad for p in frozen)  # frozen downstream
    assert (ROOT / "results" / "pretrain_tiny" / "README.md").read_text().count("commit") >= 1


@pytest.mark.parametrize("kind", ["depth", "points"])
def test_a_base_pretrained_with_the_depth_prior_carries_it(run_overrides, tmp_path, caplog, kind) -> None:
    """``model.geometry: depth`` (or ``points``) in pretraining: the trained prior is exported beside the HF weights
    and loaded by a run with the same prior; a run without it is told that it leaves the prior unused; another
    width is refused."""
    cfg = _cfg(
        run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.vision_warmup_steps=0", f"model.geometry={kind}"
    )
    fit.fit(cfg)
    hf = tmp_path / "pretrain_tiny" / "run" / "stages" / "0-pretrain" / fit.PRETRAINED_DIR
    trained = torch.load(hf.parent / "trainable.pt")
    geo = {k.removeprefix("geometry."): v for k, v in trained.items() if k.startswith("geometry.")}
    assert geo and any(v.abs().sum() > 0 for k, v in geo.items() if k.startswith("merger.mlp.2"))  # left zero-init
    model = ModelConfig(preset="", pretrained=str(hf), finetune="full", geometry=kind)
    policy = build_policy(model)
    for name, value in policy.geometry.state_dict().items():
        assert torch.equal(value, geo[name].to(torch.bfloat16).float()), name
    with caplog.at_level("WARNING"):
        assert build_policy(replace_model(model, geometry="none")).geometry is None
    assert "leaves unused" in caplog.text
    with pytest.raises(ValueError, match="geometry_dim"):
        build_policy(replace_model(model, geometry_dim=model.geometry_dim * 2))


def test_the_geometry_prior_gets_its_own_learning_rate(run_overrides, tmp_path) -> None:
    """``pretrain.geometry_lr_scale``: the prior's parameters (and only they) in a group at lr x vision x geometry
    scale, every trainable parameter in exactly one group; a multiplier <= 0 is refused naming the key."""
    cfg = _cfg(run_overrides, tmp_path, "model.geometry=points", "pretrain.vision_lr_scale=2",
               "pretrain.geometry_lr_scale=10")  # fmt: skip
    policy = build_policy(cfg.model)
    kwargs = {"policy": policy, "stage": cfg.stages[0], "reward_cfg": cfg.reward, "eval_cfg": cfg.eval,
              "detection_classes": []}  # fmt: skip
    groups = PretrainModule(pretrain_cfg=cfg.pretrain, **kwargs).param_groups()
    lr = cfg.stages[0].lr
    assert [g.get("lr", lr) for g in groups] == [lr, 2 * lr, 20 * lr]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert {id(p) for p in policy.parameters() if p.requires_grad} <= set(ids)
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in policy.geometry.parameters()}
    plain = PretrainModule(pretrain_cfg=replace_model(cfg.pretrain, geometry_lr_scale=1.0), **kwargs).param_groups()
    assert len(plain) == 2  # without the multiplier the optimiser keeps its two groups (checkpoints resume)
    with pytest.raises(ValueError, match="pretrain.geometry_lr_scale=0"):
        fit.fit(_cfg(run_overrides, tmp_path, "pretrain.geometry_lr_scale=0", "stages.0.max_steps=1"))


def test_a_fresh_geometry_prior_starts_at_a_fraction_of_the_visual_tokens_norm(run_overrides, tmp_path) -> None:
    from lit3drft.modules.pretrain import scale_geometry_prior

    cfg = _cfg(run_overrides, tmp_path, "model.geometry=points")
    policy = build_policy(cfg.model)
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 4)
    inputs = collate_perception([data[0], data[1]], policy)["inputs"]
    b = policy.to_device(inputs)
    plain = torch.cat(policy.encode_visual(b)["image"])
    visual, start = scale_geometry_prior(policy, inputs, 0.5)
    assert visual == pytest.approx(float(plain.norm(dim=-1).mean()), rel=1e-5) and start == pytest.approx(visual / 2)
    with torch.no_grad():
        added = torch.cat(policy.encode_visual(b)["image"]) - plain
    assert float(added.norm(dim=-1).mean()) == pytest.approx(visual / 2, rel=1e-4)
    assert scale_geometry_prior(policy, inputs, 0.5) is None  # not fresh any more: trained weights are kept
    with pytest.raises(ValueError, match="pretrain.geometry_init_ratio=-1"):
        fit.fit(_cfg(run_overrides, tmp_path, "pretrain.geometry_init_ratio=-1", "stages.0.max_steps=1"))


def test_the_answer_box_loss_reads_the_state_that_writes_each_box(run_overrides, tmp_path) -> None:
    """``pretrain.answer_box_weight``: every token of a box's numbers is supervised with that box (not another
    object's), from the hidden state before it, and the gradient reaches the language model."""
    from lit3drft.algorithms.dense import answer_box_positions

    cfg = _cfg(run_overrides, tmp_path, "pretrain.answer_box_weight=1.0")
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 4)
    batch = collate_perception([data[0], data[1]], policy)
    labels = batch["inputs"]["labels"][0].tolist()
    where = [j for j, t in enumerate(labels) if t != -100]
    tokens = [policy.tokenizer.decode([labels[j]]) for j in where]
    boxes = batch["targets"][0]["boxes"]
    pairs = answer_box_positions(tokens, len(boxes))
    for k, box in enumerate(boxes):  # the tokens of box k spell box k's numbers
        text = "".join(tokens[i] for i, kk in pairs if kk == k)
        assert all(f"{v:g}" in text for v in box[:3]), (k, text, box)
    ce, losses = module._forward(batch)
    assert torch.isfinite(losses["answer_box"]) and losses["answer_box"] > 0
    module._total(ce * 0, {**losses, **{k: v * 0 for k, v in losses.items() if k != "answer_box"}}).backward()
    llm = [p.grad for n, p in policy.named_parameters() if "language_model" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in llm)
    plain = PretrainModule(pretrain_cfg=replace_model(cfg.pretrain, answer_box_weight=0.0), policy=policy,
                           stage=cfg.stages[0], reward_cfg=cfg.reward, eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    assert "answer" not in plain.heads and "answer_box" not in plain._forward(batch)[1]


def test_answer_box_at_first_reads_each_box_before_any_of_its_numbers(run_overrides, tmp_path) -> None:
    """``pretrain.answer_box_at=first``: the answer-box loss is the head's L1 at the state that writes each box's
    first number only (recomputed here from the model's last hidden states), not at the later ones; a bad value
    names the key."""
    from lit3drft.algorithms.dense import BOX_SCALE, answer_box_positions
    from lit3drft.data.perception import PerceptionDataModule

    cfg = _cfg(run_overrides, tmp_path, "pretrain.answer_box_weight=1.0", "pretrain.answer_box_at=first")
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 16)
    item = next(x for x in (data[i] for i in range(16)) if len(x[0].target.get("boxes") or []) >= 2)
    batch = collate_perception([item], policy)
    with torch.no_grad():
        _, losses = module._forward(batch)
        b = policy.to_device(batch["inputs"])
        hidden = policy.hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                 position_ids=policy.positions(b["input_ids"], b["mm_token_type_ids"],
                                                               b["attention_mask"], b)[0],
                                 use_cache=False, output_hidden_states=True,
                                 mm_encoder_outputs=policy.encoder_outputs(policy.encode_visual(b))).hidden_states[-1][0]  # fmt: skip
    labels = b["labels"][0].tolist()
    where = [j for j, t in enumerate(labels) if t != -100]
    boxes = batch["targets"][0]["boxes"]
    pairs = answer_box_positions([policy.tokenizer.decode([labels[j]]) for j in where], len(boxes))
    first = {}
    for i, k in pairs:
        first.setdefault(k, i)
    assert len(first) == len(boxes) and len(pairs) > len(first)
    cols = [where[i] - 1 for i in first.values()]
    pred = module.heads["answer"](hidden[cols])
    truth = torch.tensor([boxes[k][:6] for k in first], dtype=pred.dtype)
    expected = ((pred - truth) / BOX_SCALE).abs().mean()
    assert torch.allclose(losses["answer_box"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="pretrain.answer_box_at='last'"):
        PerceptionDataModule(replace_model(cfg.pretrain, answer_box_at="last"), cfg.data.synth, 2, 2, lambda x: x)
    with pytest.raises(ValueError, match="pretrain.attend_at='all'"):
        PerceptionDataModule(replace_model(cfg.pretrain, attend_at="all"), cfg.data.synth, 2, 2, lambda x: x)


def test_the_answer_box_loss_supervises_a_grounding_answer_with_its_frames_box(run_overrides, tmp_path) -> None:
    """A grounding answer's box numbers are supervised with its target box (in the answered frame's camera), so
    the head's loss changes when only that box changes."""
    from lit3drft.algorithms.dense import answer_box_positions

    cfg = _cfg(run_overrides, tmp_path, "pretrain.answer_box_weight=1.0", "pretrain.grounding_share=1.0")
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 8)
    item = next(x for x in (data[i] for i in range(8)) if x[0].target["task"] == "grounding")
    batch = collate_perception([item], policy)
    labels = batch["inputs"]["labels"][0].tolist()
    tokens = [policy.tokenizer.decode([t]) for t in labels if t != -100]
    box = batch["targets"][0]["bbox_3d"]
    pairs = answer_box_positions(tokens, 1)
    assert pairs and all(f"{v:g}" in "".join(tokens[i] for i, _ in pairs) for v in box[:3])
    with torch.no_grad():
        _, losses = module._forward(batch)
        batch["targets"][0]["bbox_3d"] = [v + 5.0 for v in box]
        _, moved = module._forward(batch)
    assert torch.isfinite(losses["answer_box"]) and losses["answer_box"] > 0
    assert moved["answer_box"] != losses["answer_box"]


def test_the_pointer_loss_is_the_softmax_mass_on_the_referred_objects_tokens(run_overrides, tmp_path) -> None:
    """``pretrain.pointer_weight``: minus the log of the softmax mass (over the clip's visual tokens) on the tokens the
    referred object owns, recomputed here by hand; another object's tokens give another loss; the gradient reaches
    the language model; detection clips contribute nothing."""
    cfg = _cfg(run_overrides, tmp_path, "pretrain.pointer_weight=1.0", "pretrain.grounding_share=1.0")
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 16)
    items = [data[i] for i in range(16)]
    item = next(x for x in items if x[0].task == "grounding" and (x[1]["owner"] == x[0].meta["grounding"]["object"]).any()
                and len(set(x[1]["owner"].tolist()) - {-1}) >= 2)  # fmt: skip
    sample, dense = item
    target = sample.meta["grounding"]["object"]
    batch = collate_perception([item], policy)
    ce, losses = module._forward(batch)
    assert torch.isfinite(losses["pointer"]) and losses["pointer"] > 0 and 0 <= losses["pointer_acc"] <= 1
    # by hand, from the same hidden states
    b = policy.to_device(batch["inputs"])
    with torch.no_grad():
        hidden = policy.hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                 position_ids=policy.positions(b["input_ids"], b["mm_token_type_ids"],
                                                               b["attention_mask"], b)[0],
                                 use_cache=False, output_hidden_states=True,
                                 mm_encoder_outputs=policy.encoder_outputs(policy.encode_visual(b))).hidden_states[-1][0]  # fmt: skip
        start = int((b["labels"][0] != -100).nonzero()[0]) - 1
        img = b["input_ids"][0] == module.image_token_id
        logits = module.heads["pointer_k"](hidden[img]) @ module.heads["pointer_q"](hidden[start]) / 8.0
        mass = torch.softmax(logits, 0)[dense["owner"] == target].sum()
    assert torch.allclose(losses["pointer"].detach(), -mass.log(), atol=1e-4)
    other = next(o for o in set(dense["owner"].tolist()) - {-1, target})
    sample.meta["grounding"]["object"] = other
    with torch.no_grad():
        assert not torch.allclose(module._forward(batch)[1]["pointer"], losses["pointer"].detach())
    sample.meta["grounding"]["object"] = target
    module._total(ce * 0, {**losses, **{k: v * 0 for k, v in losses.items() if k != "pointer"}}).backward()
    llm = [p.grad for n, p in policy.named_parameters() if "language_model" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in llm)
    detection = next(x for x in items if x[0].task == "detection")
    _, plain = module._forward(collate_perception([detection], policy))
    assert plain["pointer"] == 0 and torch.isnan(plain["pointer_acc"])


def test_the_attend_loss_is_transformers_own_attention_mass_on_the_referred_objects_tokens(
    run_overrides, tmp_path
) -> None:
    """``pretrain.attend_weight``: at every answer position that writes a digit, minus the log of the supervised head's
    attention mass on the tokens the referred object owns in the answered frame, where the attention is the one
    transformers' eager implementation returns (``output_attentions``); with ``attend_at=first``, at the state that
    writes the box's first number only; its gradient reaches that layer's query
    projection; another frame gives another loss; detection clips contribute nothing; a bad layer names the key."""
    cfg = _cfg(run_overrides, tmp_path, "pretrain.attend_weight=1.0", "pretrain.grounding_share=1.0",
               "pretrain.attend_layer=-2", "pretrain.attend_head=1")  # fmt: skip
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 16)
    items = [data[i] for i in range(16)]
    item = next(
        x for x in items if x[0].task == "grounding" and (x[1]["owner"] == x[0].meta["grounding"]["object"]).any()
    )
    sample, dense = item
    g = sample.meta["grounding"]
    batch = collate_perception([item], policy)
    ce, losses = module._forward(batch)
    assert torch.isfinite(losses["attend"]) and losses["attend"] > 0 and 0 < losses["attend_mass"] < 1
    # transformers' own attention weights (eager), layer -2, head 1
    b = policy.to_device(batch["inputs"])
    policy.hf_model.set_attn_implementation("eager")
    with torch.no_grad():
        out = policy.hf_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                              position_ids=policy.positions(b["input_ids"], b["mm_token_type_ids"],
                                                            b["attention_mask"], b)[0],
                              use_cache=False, output_attentions=True,
                              mm_encoder_outputs=policy.encoder_outputs(policy.encode_visual(b)))  # fmt: skip
    policy.hf_model.set_attn_implementation("sdpa")
    probs = out.attentions[-2][0, 1]  # (L, L)
    tok = policy.tokenizer
    labels = b["labels"][0]
    cols = [
        j - 1
        for j in range(len(labels))
        if labels[j] != -100 and any(c.isdigit() for c in tok.decode([int(labels[j])]))
    ]
    img = torch.nonzero(b["input_ids"][0] == module.image_token_id).flatten()
    per_frame = len(img) // len(sample.frames)
    own = [int(img[t]) for t in range(len(img)) if dense["owner"][t] == g["object"] and t // per_frame == g["frame"]]
    assert own and cols
    mass = probs[cols][:, own].sum(-1)
    assert torch.allclose(losses["attend"].detach(), -mass.log().mean(), atol=1e-4)
    assert torch.allclose(losses["attend_mass"], mass.mean(), atol=1e-5)
    # attend_at=first: the state that writes the box's first number only, found here from the answer's text
    answer = [int(labels[j]) for j in range(len(labels)) if labels[j] != -100]
    start = int(torch.nonzero(labels != -100)[0])
    text = tok.decode(answer)
    begin = text.index('"bbox_3d": [') + len('"bbox_3d": [')
    first = next(i for i in range(len(answer)) if len(tok.decode(answer[: i + 1])) > begin)
    at_first = PretrainModule(pretrain_cfg=replace_model(cfg.pretrain, attend_at="first"), policy=policy,
                              stage=cfg.stages[0], reward_cfg=cfg.reward, eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    with torch.no_grad():
        only = at_first._forward(batch)[1]
    expected = probs[start + first - 1][own].sum()
    assert any(c.isdigit() or c == "-" for c in tok.decode([answer[first]]))
    assert torch.allclose(only["attend_mass"], expected, atol=1e-5)
    assert torch.allclose(only["attend"], -expected.log(), atol=1e-4)
    frame = g["frame"]
    g["frame"] = next(f for f in range(len(sample.frames)) if f != frame
                      and any(dense["owner"][t] == g["object"] and t // per_frame == f for t in range(len(img))))  # fmt: skip
    with torch.no_grad():
        assert not torch.allclose(module._forward(batch)[1]["attend"], losses["attend"].detach())
    g["frame"] = frame
    module._total(ce * 0, {**losses, **{k: v * 0 for k, v in losses.items() if k != "attend"}}).backward()
    layers = [n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    n = len(out.attentions)
    assert any(f"layers.{n - 2}.self_attn.q_proj" in name for name in layers)
    assert not any(f"layers.{n - 1}." in name for name in layers)  # above the supervised layer: no gradient
    detection = next(x for x in items if x[0].task == "detection")
    _, plain = module._forward(collate_perception([detection], policy))
    assert plain["attend"] == 0 and torch.isnan(plain["attend_mass"])
    bad = _cfg(run_overrides, tmp_path, "pretrain.attend_weight=1.0", "pretrain.attend_layer=9")
    with pytest.raises(ValueError, match="pretrain.attend_layer=9"):
        PretrainModule(pretrain_cfg=bad.pretrain, policy=policy, stage=bad.stages[0], reward_cfg=bad.reward,
                       eval_cfg=bad.eval, detection_classes=[])  # fmt: skip


def test_grounding_clips_in_ta_mode_name_their_target_before_the_box(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_mode=ta``: a grounding clip's answer is the benchmark's grounding think (the target's
    colour and category, the frame it looks largest in) then the same answer as in DA mode, which still scores IoU 1;
    detection clips stay direct answers; a bad mode names the key."""
    from lit3drft.data import prompts as P
    from lit3drft.data.perception import PerceptionDataModule
    from lit3drft.rewards.grounding import grounding_scores

    cfgs = {m: _cfg(run_overrides, tmp_path, "pretrain.grounding_share=0.5", f"pretrain.grounding_mode={m}").pretrain
            for m in ("da", "ta")}  # fmt: skip
    synth = _cfg(run_overrides, tmp_path).data.synth
    items = {m: [PerceptionDataset(c, synth, c.seed, 12)[i][0] for i in range(12)] for m, c in cfgs.items()}
    pairs = [(d, t) for d, t in zip(items["da"], items["ta"]) if t.task == "grounding"]
    assert pairs and any(t.task == "detection" for t in items["ta"])
    for da, ta in pairs:
        g = ta.meta["grounding"]
        think = ta.answer.removeprefix("<think>").split("</think>")[0]
        assert (
            ta.answer.startswith("<think>")
            and ta.mode == "ta"
            and ta.prompt == P.full_prompt(P.grounding_question(g["description"]), "ta")
        )
        noun = g["description"].split(" closest")[0].split(" farthest")[0].removeprefix("the ")  # "red chair"
        assert noun in think and f"Frame-{g['frame']}" in think
        assert ta.answer.endswith(da.answer) and da.answer.startswith("<answer>")
        _, iou, _ = grounding_scores([ta.answer], [ta.target])
        assert iou.item() == pytest.approx(1.0)
    assert all(t.answer == d.answer for d, t in zip(items["da"], items["ta"]) if t.task == "detection")
    copy = replace_model(cfgs["ta"], grounding_think="description")
    for i, ta in enumerate(items["ta"]):
        if ta.task == "grounding":
            other = PerceptionDataset(copy, synth, copy.seed, 12)[i][0]
            g = other.meta["grounding"]
            assert other.answer.startswith("<think>" + g["description"][0].upper() + g["description"][1:] + " looks")
            assert other.answer.endswith(ta.answer.split("</think>")[1])  # the same answer
    with pytest.raises(ValueError, match="pretrain.grounding_mode='xa'"):
        PerceptionDataModule(replace_model(cfgs["da"], grounding_mode="xa"), synth, 2, 2, lambda b: b)
    with pytest.raises(ValueError, match="pretrain.grounding_think='copy'"):
        PerceptionDataModule(replace_model(cfgs["da"], grounding_think="copy"), synth, 2, 2, lambda b: b)


def test_the_listing_think_detects_the_answered_frame_then_restates_the_target(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=listing``: the think copies the expression and the answered frame, lists the objects
    that frame shows as a detection answer in its camera (left to right, labels with colour), the target among them
    with the answer's own box, then restates the target's entry; the answer is the description think's; the
    answer-box loss reads the answer's box, not the listing's first."""
    from lit3drft.rewards.parsing import parse_detections

    cfg = _cfg(run_overrides, tmp_path, "pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta",
               "pretrain.grounding_think=listing", "pretrain.answer_box_weight=1.0")  # fmt: skip
    described = replace_model(cfg.pretrain, grounding_think="description")
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 10)
    items = [data[i] for i in range(10)]
    checked = 0
    for i, (s, _) in enumerate(items):
        if s.task != "grounding":
            continue
        g = s.meta["grounding"]
        think, answer = s.answer.removeprefix("<think>").split("</think>")
        desc = g["description"]
        head, rest = think.split(", which shows ")
        assert head == f"{desc[0].upper()}{desc[1:]} looks largest in Frame-{g['frame']}"
        shown, chosen = rest.split(". So: ")
        entries = json.loads(shown)
        assert [e["bbox_3d"][0] for e in entries] == sorted(e["bbox_3d"][0] for e in entries)  # left to right
        noun = desc.split(" closest")[0].split(" farthest")[0].removeprefix("the ")
        assert json.loads(chosen) == {"label": noun, "bbox_3d": g["bbox_3d"]} and json.loads(chosen) in entries
        assert all(len(e["label"].split()) >= 2 for e in entries)  # colour and category
        parsed = parse_detections(shown)  # a detection answer of one frame
        assert parsed is not None and [lab for lab, _ in parsed] == [e["label"] for e in entries]
        other = PerceptionDataset(described, cfg.data.synth, cfg.pretrain.seed, 10)[i][0]
        assert other.answer.split("</think>")[1] == answer
        checked += 1
    assert checked >= 3
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    s, dense = next(x for x in items if x[0].task == "grounding")
    labels = policy.to_device(collate_perception([(s, dense)], policy)["inputs"])["labels"][0]
    states = module._box_states(labels, 1, first=False)
    tok = policy.tokenizer
    where = torch.nonzero(labels != -100).flatten().tolist()
    ends = [len(tok.decode([int(labels[j]) for j in where[: n + 1]])) for n in range(len(where))]
    think_end = s.answer.index("</think>") + len("</think>")
    answer_start = where[next(n for n, e in enumerate(ends) if e > think_end)]
    assert states and all(c + 1 > answer_start for c, _ in states)  # the answer's box, after the listing's
    assert {k for _, k in states} == {0} and len(states) >= 9


def _with_detection(cfg, data: PerceptionDataset, n: int = 10):
    """``(grounding sample, the same clip asked for detection)`` for the grounding clips among ``data``'s first
    ``n``."""
    plain = PerceptionDataset(replace_model(cfg.pretrain, grounding_share=0.0), cfg.data.synth, cfg.pretrain.seed, n)
    for i in range(n):
        s, _ = data[i]
        if s.task == "grounding":
            yield s, plain[i][0]


def test_the_clip_listing_think_lists_the_clips_detection_then_answers_frame_0(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=clip_listing``: the think copies the expression, then lists the clip's detection
    answer (the detection clip's own boxes, in Frame-0's camera and order, labels with colour), then restates the
    target, whose box the answer writes as Frame-0's; the metric's target stays the answered frame's box, and the
    answer scores IoU ~1 against it; the answer-box loss reads the written (Frame-0) box."""
    from lit3drft.rewards.grounding import grounding_scores
    from lit3drft.rewards.parsing import parse_detections

    cfg = _cfg(run_overrides, tmp_path, "pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta",
               "pretrain.grounding_think=clip_listing", "pretrain.answer_box_weight=1.0")  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 10)
    checked = 0
    for s, det in _with_detection(cfg, data):
        g = s.meta["grounding"]
        think, answer = s.answer.removeprefix("<think>").split("</think>")
        desc = g["description"]
        head, rest = think.split(": the clip shows, in Frame-0's camera, ")
        assert head == f"{desc[0].upper()}{desc[1:]}"
        shown, chosen = rest.split(". So: ")
        entries = json.loads(shown)
        assert [e["bbox_3d"] for e in entries] == det.target["boxes"]  # the clip's detection answer
        assert [e["label"].split()[-1] for e in entries] == [lab.split()[-1] for lab in det.target["labels"]]
        assert parse_detections(shown) is not None
        noun = desc.split(" closest")[0].split(" farthest")[0].removeprefix("the ")
        restated = json.loads(chosen)
        assert restated["label"] == noun and restated in entries
        assert json.loads(answer.removeprefix("<answer>").removesuffix("</answer>")) == {
            "frame": 0, "bbox_3d": restated["bbox_3d"]}  # fmt: skip
        assert s.target["frame"] == g["frame"] and s.target["bbox_3d"] == g["bbox_3d"]  # scored as the benchmark
        assert s.target["answer_bbox_3d"] == restated["bbox_3d"]
        _, iou, parsed = grounding_scores([answer], [s.target])
        assert parsed.item() and iou.item() > 0.9
        checked += 1
    assert checked >= 3
    policy = build_policy(cfg.model)
    module = PretrainModule(pretrain_cfg=cfg.pretrain, policy=policy, stage=cfg.stages[0], reward_cfg=cfg.reward,
                            eval_cfg=cfg.eval, detection_classes=[])  # fmt: skip
    s, dense = next(x for x in (data[i] for i in range(10)) if x[0].task == "grounding")
    b = policy.to_device(collate_perception([(s, dense)], policy)["inputs"])
    width = policy.hf_model.config.text_config.hidden_size
    hidden = torch.zeros(*b["labels"].shape, width)
    module.heads["answer"] = torch.nn.Linear(width, 6)  # a head that always says the written box
    with torch.no_grad():
        module.heads["answer"].weight.zero_()
        module.heads["answer"].bias.copy_(torch.tensor(s.target["answer_bbox_3d"][:6]))
    assert module._answer_box_loss(hidden, b["labels"], [s.target]).item() < 1e-6  # the written box, exactly


def test_the_clip_detection_think_is_the_clips_detection_answer_with_colour_keys(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=clip_detection``: the think's list is the clip's detection answer entry for entry
    (labels and boxes equal to the detection clip's own), each with a colour key in front; the restated entry is a
    copy of the listed target's (colour and category those of the referring expression); the answer is Frame-0's
    box."""
    cfg = _cfg(run_overrides, tmp_path, "pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta",
               "pretrain.grounding_think=clip_detection")  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 10)
    checked = 0
    for s, det in _with_detection(cfg, data):
        think, answer = s.answer.removeprefix("<think>").split("</think>")
        shown, chosen = think.removeprefix("The clip shows, in Frame-0's camera, ").split(". So: ")
        entries = json.loads(shown)
        assert [e["bbox_3d"] for e in entries] == det.target["boxes"]
        assert [e["label"] for e in entries] == det.target["labels"]  # category only, as the detection answer
        assert all(list(e) == ["color", "label", "bbox_3d"] for e in entries)
        restated = json.loads(chosen)
        noun = s.meta["grounding"]["description"].split(" closest")[0].split(" farthest")[0].removeprefix("the ")
        assert f"{restated['color']} {restated['label']}" == noun and restated in entries
        assert json.loads(answer.removeprefix("<answer>").removesuffix("</answer>")) == {
            "frame": 0, "bbox_3d": restated["bbox_3d"]}  # fmt: skip
        checked += 1
    assert checked >= 3


def test_the_clip_select_think_answers_the_listed_entry_itself(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=clip_select``: clip_detection's clips and list without the restated entry; the
    answer is the referred entry (a prefix copy of the listed one) with ``"frame": 0`` last, scored against the
    clip's own target as clip_detection's answer is; the answer-box loss reads its box."""
    from lit3drft.rewards.grounding import grounding_scores

    base = ("pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta", "pretrain.answer_box_weight=1.0")
    cfgs = [
        _cfg(run_overrides, tmp_path, *base, f"pretrain.grounding_think={t}") for t in ("clip_detection", "clip_select")
    ]
    det, sel = (PerceptionDataset(c.pretrain, c.data.synth, c.pretrain.seed, 10) for c in cfgs)
    checked = 0
    for i in range(10):
        a, b = det[i][0], sel[i][0]
        if a.task != "grounding":
            continue
        think_a, answer_a = a.answer.removeprefix("<think>").split("</think>")
        listed, restated = think_a.split(". So: ")
        think_b, answer_b = b.answer.removeprefix("<think>").split("</think>")
        assert think_b == f"{listed}." and b.target == a.target
        body = answer_b.removeprefix("<answer>").removesuffix("</answer>")
        assert body.removesuffix(', "frame": 0}') + "}" == restated and restated in listed
        scores = grounding_scores([answer_a, answer_b], [a.target, b.target])
        assert all(torch.equal(x[0], x[1]) for x in scores) and scores[2].all()
        checked += 1
    assert checked >= 3
    policy = build_policy(cfgs[1].model)
    module = PretrainModule(pretrain_cfg=cfgs[1].pretrain, policy=policy, stage=cfgs[1].stages[0],
                            reward_cfg=cfgs[1].reward, eval_cfg=cfgs[1].eval, detection_classes=[])  # fmt: skip
    s, dense = next(x for x in (sel[i] for i in range(10)) if x[0].task == "grounding")
    b = policy.to_device(collate_perception([(s, dense)], policy)["inputs"])
    states = module._box_states(b["labels"][0], 1, False)
    written = policy.tokenizer.decode([b["labels"][0, j + 1].item() for j, _ in states])
    assert written.strip().removeprefix("[") == json.dumps(s.target["answer_bbox_3d"])[1:-1]  # none of the list's
    width = policy.hf_model.config.text_config.hidden_size
    module.heads["answer"] = torch.nn.Linear(width, 6)
    with torch.no_grad():
        module.heads["answer"].weight.zero_()
        module.heads["answer"].bias.copy_(torch.tensor(s.target["answer_bbox_3d"][:6]))
    hidden = torch.zeros(*b["labels"].shape, width)
    assert module._answer_box_loss(hidden, b["labels"], [s.target]).item() < 1e-6


def _grounding_pairs(run_overrides, tmp_path, first: str, second: str, n: int = 8) -> list:
    """The grounding clips of the first ``n`` samples of two pretraining streams that differ only in
    ``pretrain.grounding_think`` (``first``, ``second``), as pairs of samples."""
    base = ("pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta")
    a, b = (
        PerceptionDataset(c.pretrain, c.data.synth, c.pretrain.seed, 8)
        for c in (_cfg(run_overrides, tmp_path, *base, f"pretrain.grounding_think={t}") for t in (first, second))
    )
    return [(a[i][0], b[i][0]) for i in range(n) if a[i][0].task == "grounding"]


def test_the_clip_entry_think_copies_the_expression_and_answers_clip_selects_entry(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=clip_entry``: the same clips and answers as clip_select, the think the referring
    expression copied (no listing)."""
    pairs = _grounding_pairs(run_overrides, tmp_path, "clip_select", "clip_entry")
    for a, b in pairs:
        desc = b.meta["grounding"]["description"]
        assert b.answer == f"<think>{desc[0].upper()}{desc[1:]}.</think>" + a.answer.split("</think>")[1]
        assert b.target == a.target
    assert len(pairs) >= 3


def test_the_clip_name_think_names_the_entry_in_one_key(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_think=clip_name``: clip_entry's clips, think and box; the answer's object named in one key
    (the expression's own first words)."""
    import json
    import re

    def body(answer: str) -> dict:
        return json.loads(re.search(r"<answer>(.*)</answer>", answer).group(1))

    pairs = _grounding_pairs(run_overrides, tmp_path, "clip_entry", "clip_name")
    for a, b in pairs:
        ea, eb = body(a.answer), body(b.answer)
        assert eb == {"object": f"{ea['color']} {ea['label']}", "bbox_3d": ea["bbox_3d"], "frame": 0}
        assert b.answer.split("<answer>")[0] == a.answer.split("<answer>")[0] and b.target == a.target
        assert b.meta["grounding"]["description"].startswith(f"the {eb['object']} ")
    assert len(pairs) >= 3


def test_grounding_clip_benchmark_asks_the_benchmarks_own_row_on_frames_of_its_own(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_clip=benchmark``: a grounding clip is 8 frames spread over the whole walk by the
    benchmark's rule, with the dense targets of those frames, and its question, think and answer are what the
    benchmark's row builder (``tasks.scene_clip_listing_think``, from a ``scene.json``) writes for that scene, those
    frames and that target; detection clips and the held-out detection clips keep the clip's own 4 frames."""
    import numpy as np

    from lit3drft.data.perception import clip_cfg
    from lit3drft.data.records import Record
    from lit3drft.data.render import render_frame, scene_parts
    from lit3drft.data.scene import make_scene
    from lit3drft.data.synth import knobs_of, scene_json, scene_rng
    from lit3drft.data.tasks import scene_clip_listing_think

    base = ("pretrain.grounding_share=0.6", "pretrain.grounding_mode=ta", "pretrain.grounding_think=clip_select")
    cfg = _cfg(run_overrides, tmp_path, *base, "pretrain.grounding_clip=benchmark")
    plain = _cfg(run_overrides, tmp_path, *base)
    data, plain_data = (PerceptionDataset(c.pretrain, c.data.synth, c.pretrain.seed, 12) for c in (cfg, plain))
    gen = clip_cfg(cfg.data.synth, cfg.pretrain.seed, 3)
    cells = (cfg.data.synth.width // 28) * (cfg.data.synth.height // 28)
    seen = set()
    for i in range(12):
        (s, dense), (p, p_dense) = data[i], plain_data[i]
        seen.add(s.task)
        if s.task != "grounding":  # the stream's other clips are the plain recipe's, byte for byte
            assert s.answer == p.answer and s.meta["frame_indices"] == p.meta["frame_indices"] and len(s.frames) == 4
            assert all(torch.equal(dense[k], p_dense[k]) for k in dense)
            continue
        frames = s.meta["frame_indices"]
        scene = make_scene(f"pre{cfg.pretrain.seed}_{i:07d}", scene_rng(gen.seed, i), knobs_of(gen))
        total = len(scene.cam2world)
        assert len(s.frames) == len(s.depth) == len(s.cam2world) == 8 == len(frames) and frames[-1] == total - 1
        assert frames == (np.linspace(0, total - 1 - frames[0], 8).round().astype(int) + frames[0]).tolist()
        assert 0 <= frames[0] < total // 8 and np.allclose(s.cam2world, scene.cam2world[frames])
        assert len(dense["owner"]) == 8 * cells and len(p_dense["owner"]) == 4 * cells
        insts = [render_frame(scene, scene.cam2world[f], parts=scene_parts(scene))[2] for f in frames]
        visible = np.zeros((total, len(scene.objects)), np.int64)
        for f, inst in zip(frames, insts):
            visible[f] = np.bincount(inst.ravel(), minlength=256)[1 : len(scene.objects) + 1]
        scene.visible_pixels = visible
        g = s.meta["grounding"]
        row = Record(id="r", task="grounding", prompt="", answer="", think="",
                     target={"frame": g["frame"], "bbox_3d": g["bbox_3d"]},
                     meta={"description": g["description"], "object_id": g["object"], "frame_indices": frames})  # fmt: skip
        row = scene_clip_listing_think(row, scene_json(scene), gen.min_visible_pixels, "clip_select")
        assert s.answer == P.format_answer(row.answer, "ta", row.think)
        assert s.prompt == P.full_prompt(P.grounding_question(g["description"]), "ta")
        assert s.frame_labels == [P.frame_label(k) for k in range(8)]
        assert np.asarray(s.frames[g["frame"]]).shape[:2] == (cfg.data.synth.height, cfg.data.synth.width)
    assert seen == {"grounding", "detection"}
    held_out = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed + 1, 4, training=False)
    for i in range(4):
        s, dense = held_out[i]
        assert s.task == "detection" and len(s.frames) == 4 and len(dense["owner"]) == 4 * cells
        if s.meta["grounding"] is not None:  # validation asks it on its own 8 frames
            from lit3drft.data.perception import grounding_sample

            asked = grounding_sample(s, "ta")
            assert (
                len(asked.frames) == 8 and asked.meta["frame_indices"] == s.meta["grounding"]["clip"]["frame_indices"]
            )
    with pytest.raises(ValueError, match="pretrain.grounding_clip='walk'"):
        PerceptionDataModule(replace_model(cfg.pretrain, grounding_clip="walk"), cfg.data.synth, 2, 2, lambda b: b)
    with pytest.raises(ValueError, match="pointer_weight=1.0"):
        PerceptionDataModule(replace_model(cfg.pretrain, pointer_weight=1.0), cfg.data.synth, 2, 2, lambda b: b)


def test_grounding_questions_train_and_are_scored_at_validation(run_overrides, tmp_path) -> None:
    """``pretrain.grounding_share``: grounding batches go through the training step and validation logs the
    held-out clips' grounding figures."""
    cfg = _cfg(run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.grounding_share=0.5",
               "trainer.val_every_n_steps=2", "data.batch_size=2", "pretrain.val_samples=6",
               "pretrain.pointer_weight=1.0", "pretrain.grounding_mode=ta")  # fmt: skip
    payload = fit.fit(cfg)
    for key in ("acc25", "miou", "frame_acc", "parsed", "swap_gap", "question_swap_gap", "pointer"):
        assert f"val/grounding/{key}" in payload["metrics"], key
    assert 0 <= payload["metrics"]["val/grounding/acc25"] <= 1


def test_box2d_questions_train_and_are_scored_at_validation(run_overrides, tmp_path) -> None:
    """``pretrain.box2d_share``: 2D grounding batches go through the training step and validation logs the
    held-out clips' 2D figures."""
    cfg = _cfg(run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.box2d_share=0.5",
               "trainer.val_every_n_steps=2", "data.batch_size=2")  # fmt: skip
    payload = fit.fit(cfg)
    for key in ("val/box2d/miou", "val/box2d/label_acc", "val/box2d/parsed", "val/box2d/swap_gap", "val/miou"):
        assert key in payload["metrics"], key
    assert 0 <= payload["metrics"]["val/box2d/miou"] <= 1


def test_copy_text_samples_ask_their_text_back_and_are_deterministic() -> None:
    """``copy_text_sample``: no frames, the ``Text:`` line's text is the whole answer, the same for the same
    ``(seed, i)``, and the stream mixes word lists and referring expressions."""
    from lit3drft.data.perception import FILLER, copy_text_sample
    from lit3drft.data.prompts import CATEGORIES

    samples = [copy_text_sample(11, i) for i in range(40)]
    assert [s.answer for s in samples] == [copy_text_sample(11, i).answer for i in range(40)]
    assert [s.answer for s in samples] != [copy_text_sample(12, i).answer for i in range(40)]
    for s in samples:
        text = s.target["text"]
        assert s.frames == [] and s.task == "copy"
        assert f"Text: {text}\n" in s.prompt and s.answer == f"<answer>{text}</answer>"
    expressions = [s for s in samples if " closest to the " in s.answer or " farthest from the " in s.answer]
    assert 5 < len(expressions) < 35
    for s in expressions:
        words = s.target["text"].lower().split()
        assert words[0] == "the" and any(" ".join(words[2:]).startswith(c) for c in CATEGORIES)
    # text_gap: the benchmark's own sentences between the text and the answer, 0..gap of them, the text unchanged
    spaced = [copy_text_sample(11, i, gap=4) for i in range(40)]
    between = [len(s.prompt.split("\n")) - 3 for s in spaced]  # lines: Repeat / Text / fillers / instruction
    assert min(between) == 0 and max(between) == 4 and len(set(between)) == 5
    for s, t in zip(spaced, samples):
        assert s.answer == t.answer and s.prompt.split("\n")[1] == t.prompt.split("\n")[1]
        assert all(line in FILLER for line in s.prompt.split("\n")[2:-1])


def test_a_text_only_batch_is_the_chat_template_without_frames(run_overrides, tmp_path) -> None:
    """``Policy.collate`` on samples without frames: the chat-templated prompt tokenised as the tokenizer alone
    does, the answer appended with labels; a batch that mixes framed and text-only samples is refused."""
    from lit3drft.data.perception import copy_text_sample

    cfg = _cfg(run_overrides, tmp_path)
    policy = build_policy(cfg.model)
    samples = [copy_text_sample(3, i) for i in range(3)]
    b = policy.collate(samples, with_answer=True)
    assert "pixel_values" not in b and int(b["mm_token_type_ids"].sum()) == 0
    tok = policy.tokenizer
    for row, labels, s in zip(b["input_ids"], b["labels"], samples):
        text = tok.decode(row, skip_special_tokens=False)
        assert s.prompt in text and "<image>" not in text and "<|image_pad|>" not in text
        assert tok.decode(labels[labels != -100]) == s.answer + "<|im_end|>"
    out = policy(b)
    assert torch.isfinite(out.logits).all()
    framed = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 2)[0][0]
    with pytest.raises(ValueError, match="mixes samples with and without frames"):
        policy.collate([framed, samples[0]])


def test_the_text_copy_loss_trains_and_is_probed_at_validation(run_overrides, tmp_path) -> None:
    """``pretrain.text_weight``: every full step adds the copy samples' answer CE (logged), validation logs the
    held-out copies' CE and question-swap gap; the weight must be >= 0."""
    cfg = _cfg(run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.text_weight=1.0", "pretrain.text_batch=3",
               "pretrain.vision_warmup_steps=0",
               "trainer.val_every_n_steps=2", "data.batch_size=2", "trainer.log_every_n_steps=1")  # fmt: skip
    payload = fit.fit(cfg)
    for key in ("val/copy/answer_ce", "val/copy/question_swap_gap"):
        assert key in payload["metrics"], key
    logged = (tmp_path / "pretrain_tiny" / "run").rglob("metrics.csv")
    assert any("train/text_copy_ce" in p.read_text().splitlines()[0] for p in logged)
    with pytest.raises(ValueError, match="pretrain.text_weight=-1"):
        from lit3drft.data.perception import PerceptionDataModule

        PerceptionDataModule(replace_model(cfg.pretrain, text_weight=-1.0), cfg.data.synth, 2, 2, lambda b: b)


def test_copy_questions_on_clips_keep_the_frames_and_train(run_overrides, tmp_path) -> None:
    """``pretrain.copy_share``: that share of training clips is asked a copy question after its own frames
    (labelled as grounding frames), the texts not those of the text-only stream; held-out clips never are; the
    run trains and logs the held-out framed copies' figures; the shares must sum to at most 1."""
    from lit3drft.data.perception import PerceptionDataModule, copy_text_sample

    cfg = _cfg(run_overrides, tmp_path, "pretrain.copy_share=0.5", "pretrain.text_gap=2")
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 24)
    items = [data[i][0] for i in range(24)]
    copies = [s for s in items if s.task == "copy"]
    assert 4 <= len(copies) <= 20
    texts = {copy_text_sample(cfg.pretrain.seed, i, 2).target["text"] for i in range(64)}
    for s in copies:
        assert len(s.frames) == cfg.pretrain.clip_len and s.depth is not None
        assert s.frame_labels == [f"Frame-{k}: " for k in range(len(s.frames))]
        assert s.answer == f"<answer>{s.target['text']}</answer>" and f"Text: {s.target['text']}\n" in s.prompt
    assert not texts & {s.target["text"] for s in copies}
    held_out = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed + 1, 8, training=False)
    assert all(held_out[i][0].task == "detection" for i in range(8))
    run = _cfg(run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.copy_share=0.5", "pretrain.text_gap=2",
               "pretrain.vision_warmup_steps=0", "trainer.val_every_n_steps=2", "data.batch_size=2")  # fmt: skip
    payload = fit.fit(run)
    for key in ("val/copy_frames/answer_ce", "val/copy_frames/question_swap_gap"):
        assert key in payload["metrics"], key
    with pytest.raises(ValueError, match="copy_share=0.6"):
        PerceptionDataModule(replace_model(cfg.pretrain, copy_share=0.6, grounding_share=0.5), cfg.data.synth, 2, 2,
                             lambda b: b)  # fmt: skip


def test_category_questions_ask_for_one_category_and_are_probed(run_overrides, tmp_path) -> None:
    """``pretrain.category_share``: that share of training clips is asked for the boxes of one category of the
    clip, answered with that category's boxes only (in the usual order); validation logs the category-swap gap."""
    from lit3drft.data.perception import CATEGORY_PROMPT

    cfg = _cfg(run_overrides, tmp_path, "pretrain.category_share=0.6")
    plain = PerceptionDataset(replace_model(cfg.pretrain, category_share=0.0), cfg.data.synth, cfg.pretrain.seed, 16)
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, 16)
    asked = 0
    for i in range(16):
        s, full = data[i][0], plain[i][0]
        assert s.frames[0].tobytes() == full.frames[0].tobytes()
        if s.prompt == full.prompt:
            continue
        asked += 1
        category = s.target["labels"][0]
        assert CATEGORY_PROMPT.format(category=category) in s.prompt
        keep = [k for k, lab in enumerate(full.target["labels"]) if lab == category]
        assert s.target["labels"] == [category] * len(keep)
        assert s.target["boxes"] == [full.target["boxes"][k] for k in keep]
        assert s.answer == P.format_answer(P.detection_answer(s.target["boxes"], s.target["labels"]), "da")
    assert 3 <= asked <= 14
    run = _cfg(run_overrides, tmp_path, "stages.0.max_steps=2", "pretrain.category_share=0.5",
               "pretrain.vision_warmup_steps=0", "trainer.val_every_n_steps=2", "data.batch_size=2",
               "pretrain.val_samples=8", "pretrain.val_level=3")  # fmt: skip
    payload = fit.fit(run)
    for key in ("val/category/answer_ce", "val/category/swap_gap"):
        assert key in payload["metrics"], key
