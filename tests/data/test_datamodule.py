from dataclasses import replace

import pytest

from lit3drft.data.config import DataConfig, SynthConfig
from lit3drft.data.datamodule import LitDataModule
from lit3drft.data.records import BadSampleError
from tests.conftest import TINY


@pytest.fixture(scope="module")
def cfg(bench):
    root, _ = bench
    return DataConfig(root=str(root), synth=TINY, batch_size=3, eval_batch_size=4)


def scenes(ds):
    return {r.meta["scene_name"] for r, _, _ in ds.entries}


def test_batches_keep_samples_targets_and_model_inputs(cfg):
    dm = LitDataModule(cfg, collate_fn=lambda s: {"n_frames": [len(x.frames) for x in s]})
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["samples"]) == 3 and batch["targets"] == [s.target for s in batch["samples"]]
    assert batch["n_frames"] == [len(s.frames) for s in batch["samples"]]
    assert {r.task for r, _, _ in dm.datasets["train"].entries} == {"detection", "grounding", "spatial"}
    assert dm.detection_classes


def test_no_scene_in_two_splits(cfg):
    dm = LitDataModule(cfg)
    dm.setup()
    tr, va, te = (scenes(dm.datasets[s]) for s in ("train", "val", "test"))
    assert tr and va and te and not (tr & va) and not (tr & te) and not (va & te)


def test_shuffling_is_deterministic_per_seed(cfg):
    def order(seed):
        dm = LitDataModule(replace(cfg, seed=seed))
        dm.setup("fit")
        return [s.id for b in dm.train_dataloader() for s in b["samples"]][:12]

    assert order(0) == order(0) != order(1)


def test_mix_filters_caps_and_modes(cfg):
    dm = LitDataModule(replace(cfg, tasks=["grounding"], train_mode="da+ta", eval_mode="ta", max_eval_samples=2))
    dm.setup()
    train = dm.datasets["train"].entries
    assert {r.task for r, _, _ in train} == {"grounding"}
    assert sorted(m for _, m, _ in train) == ["da", "ta"] * (len(train) // 2) or len({m for _, m, _ in train}) == 2
    assert len(dm.datasets["val"]) <= 2 and {m for _, m, _ in dm.datasets["val"].entries} == {"ta"}
    s = dm.datasets["train"][0]
    assert s.id.endswith(("@da", "@ta"))
    capped = [replace(src, max_samples=3, weight=2.0) for src in cfg.sources]
    dm = LitDataModule(replace(cfg, sources=capped))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 * 2 * len(capped)


def test_a_sources_own_mode_wins_in_training_and_evaluation(cfg):
    """``data.sources[i].mode``: grounding in TA mode while the other tasks follow the global DA modes."""
    sources = [replace(src, mode="ta" if src.task == "grounding" else "") for src in cfg.sources]
    dm = LitDataModule(replace(cfg, sources=sources, train_mode="da", eval_mode="da", max_eval_samples=2))
    dm.setup()
    for split in ("train", "test"):
        modes = {(r.task, m) for r, m, _ in dm.datasets[split].entries}
        assert modes == {("detection", "da"), ("grounding", "ta"), ("spatial", "da")}, split
    sample = next(
        s for s in (dm.datasets["train"][i] for i in range(len(dm.datasets["train"]))) if s.task == "grounding"
    )
    assert sample.answer.startswith("<think>") and "Frame-" in sample.answer.split("</think>")[0]


def test_description_think_copies_the_rows_referring_expression(cfg, tmp_path):
    """``data.sources[i].think=description``: a grounding TA answer's think starts with the question's own referring
    expression (as the pretraining's copied-description think), the box and frame unchanged; a row without one fails
    naming its file."""
    import json
    from pathlib import Path

    from lit3drft.data.tasks import grounding_think

    ground = [replace(src, mode="ta", think="description") for src in cfg.sources if src.task == "grounding"]
    dm = LitDataModule(replace(cfg, sources=ground))
    dm.setup("fit")
    rec, _, _ = dm.datasets["train"].entries[0]
    desc = rec.meta["description"]
    assert desc and desc.lower() in rec.prompt.lower()
    think = rec.think
    assert think == grounding_think("", rec.target["frame"], rec.target["bbox_3d"], desc)
    assert think.lower().startswith(desc.lower()) and f"Frame-{rec.target['frame']}," in think
    answer = dm.datasets["train"][0].answer
    assert answer.startswith(f"<think>{think}</think><answer>")
    plain = LitDataModule(replace(cfg, sources=[replace(s, think="") for s in ground]))
    plain.setup("fit")
    assert plain.datasets["train"].entries[0][0].think != think  # the rows' own reasoning by default

    path = f"{cfg.root}/{ground[0].path.format(split='train')}"
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()][:2]
    for row in rows:
        del row["metadata"]["description"]
    bad = tmp_path / "nodesc.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = replace(ground[0], path=str(bad), split="train")
    with pytest.raises(BadSampleError, match="nodesc.jsonl.*metadata.description"):
        LitDataModule(replace(cfg, sources=[src])).setup("fit")


def _grounding_train(cfg, think: str):
    """The training dataset of ``cfg``'s benchmark grounding rows, TA, with ``SourceConfig.think=think``."""
    ground = [replace(src, mode="ta", think=think) for src in cfg.sources if src.task == "grounding"]
    dm = LitDataModule(replace(cfg, sources=ground))
    dm.setup("fit")
    return dm.datasets["train"]


def _listed_objects(scene: dict, c2w, listed: list[dict]) -> list[int]:
    """The scene object each listed entry boxes (its centre taken back to the world by ``c2w`` within 3 cm, its
    label the object's colour and category)."""
    import numpy as np

    centres = np.array([o["bbox_3d"][:3] for o in scene["objects"]])
    found = []
    for entry in listed:
        world = c2w[:3, :3] @ np.array(entry["bbox_3d"][:3]) + c2w[:3, 3]
        i = int(np.linalg.norm(centres - world, axis=1).argmin())
        assert np.linalg.norm(centres[i] - world) < 0.03
        assert entry["label"] == f"{scene['objects'][i]['color']} {scene['objects'][i]['category']}"
        found.append(i)
    return found


def test_listing_think_lists_the_answered_frames_objects_then_restates_the_target(cfg, tmp_path):
    """``data.sources[i].think=listing``: a grounding TA answer's think copies the expression and the answered frame,
    lists objects of the row's scene as a detection answer in that frame's camera (each listed centre, taken back to
    the world by the frame's pose, is a scene object's centre; the target is listed with the row's own box), then
    restates the target's entry; the answer is unchanged; data without ``scenes/<scene>/scene.json`` fails naming
    the path it looked for."""
    import json
    import shutil
    from pathlib import Path

    import numpy as np

    ground = [replace(src, mode="ta", think="listing") for src in cfg.sources if src.task == "grounding"]
    train = _grounding_train(cfg, "listing")
    entries = train.entries
    assert entries
    for rec, _, _ in entries[:20]:
        scene = json.loads((Path(cfg.root) / "scenes" / rec.meta["scene_name"] / "scene.json").read_text())
        k = rec.target["frame"]
        c2w = np.asarray(scene["cam2world"][rec.meta["frame_indices"][k]])
        desc = rec.meta["description"]
        head, rest = rec.think.split(", which shows ")
        assert head == f"{desc[0].upper()}{desc[1:]} looks largest in Frame-{k}"
        shown, chosen = rest.split(". So: ")
        listed = json.loads(shown)
        _listed_objects(scene, c2w, listed)
        target = scene["objects"][rec.meta["object_id"]]
        restated = json.loads(chosen)
        assert restated == {"label": f"{target['color']} {target['category']}", "bbox_3d": rec.target["bbox_3d"]}
        assert restated in listed and f"the {restated['label']}" in desc
    assert train[0].answer.endswith(f"</think><answer>{entries[0][0].answer}</answer>")
    bare = tmp_path / "bare"  # the frames, without the scenes' annotations
    shutil.copytree(cfg.root, bare, ignore=shutil.ignore_patterns("scene.json"))
    with pytest.raises(BadSampleError, match=r"think=listing.*scenes/.*scene\.json"):
        LitDataModule(replace(cfg, root=str(bare), sources=ground)).setup("fit")


def test_clip_listing_lists_the_clips_objects_in_frame_0_and_answers_the_same_world_box(cfg):
    """``data.sources[i].think=clip_listing``: the think lists every scene object the clip shows (at least
    ``min_visible_pixels`` in one of its frames, as the detection rows), left to right in Frame-0's camera, labelled
    with colour and category, then restates the target; the answer is ``{"frame": 0, ...}`` with that box, which the
    grounding metric (reading the row's own target) scores at IoU ~1 and a frame score of ``1 - k / 5``."""
    import json
    from pathlib import Path

    import numpy as np

    from lit3drft.rewards.grounding import grounding_scores

    train = _grounding_train(cfg, "clip_listing")
    entries = train.entries
    assert entries
    for rec, _, _ in entries[:20]:
        scene = json.loads((Path(cfg.root) / "scenes" / rec.meta["scene_name"] / "scene.json").read_text())
        frames = rec.meta["frame_indices"]
        c2w = np.asarray(scene["cam2world"][frames[0]])
        desc = rec.meta["description"]
        head, rest = rec.think.split(": the clip shows, in Frame-0's camera, ")
        assert head == f"{desc[0].upper()}{desc[1:]}"
        shown, chosen = rest.split(". So: ")
        listed = json.loads(shown)
        found = _listed_objects(scene, c2w, listed)
        px = np.asarray(scene["visible_pixels"])[frames].max(0)
        t = rec.meta["object_id"]
        assert sorted(found) == [
            i for i in range(len(scene["objects"])) if px[i] >= cfg.synth.min_visible_pixels or i == t
        ]
        xs = [e["bbox_3d"][0] for e in listed]
        assert xs == sorted(xs)
        restated = json.loads(chosen)
        target = scene["objects"][t]
        assert restated["label"] == f"{target['color']} {target['category']}" and restated in listed
        assert json.loads(rec.answer) == {"frame": 0, "bbox_3d": restated["bbox_3d"]}
        frame, iou, parsed = grounding_scores([f"<answer>{rec.answer}</answer>"], [rec.target])
        assert parsed.item() and iou.item() > 0.9  # both boxes rounded to 2 decimals: small objects lose a few %
        assert frame.item() == pytest.approx(max(0.0, 1 - rec.target["frame"] / 5))
    assert train[0].answer.endswith(f"</think><answer>{entries[0][0].answer}</answer>")


def test_clip_detection_lists_the_clips_objects_with_colour_keys(cfg):
    """``data.sources[i].think=clip_detection``: the clip_listing rows' objects, boxes and answer, each entry written
    ``{"color", "label" (category), "bbox_3d"}`` and no copied expression."""
    import json

    pairs = zip(
        _grounding_train(cfg, "clip_listing").entries[:20], _grounding_train(cfg, "clip_detection").entries[:20]
    )
    for (a, _, _), (b, _, _) in pairs:
        assert a.answer == b.answer and a.target == b.target
        listed_a = json.loads(a.think.split("camera, ")[1].split(". So: ")[0])
        assert b.think.startswith("The clip shows, in Frame-0's camera, [")
        listed_b = json.loads(b.think.removeprefix("The clip shows, in Frame-0's camera, ").split(". So: ")[0])
        assert [{"label": f"{e['color']} {e['label']}", "bbox_3d": e["bbox_3d"]} for e in listed_b] == listed_a
        assert json.loads(b.think.split(". So: ")[1]) in listed_b


def test_clip_select_answers_the_listed_entry_itself(cfg):
    """``data.sources[i].think=clip_select``: clip_detection's list without the restated entry; the answer is the
    referred entry, a prefix copy of the listed one, with ``"frame": 0`` last, and the grounding metric (reading
    the row's own target) scores it as clip_detection's ``{"frame": 0, "bbox_3d": ..}``."""
    import json

    import torch

    from lit3drft.rewards.grounding import grounding_scores

    selected = _grounding_train(cfg, "clip_select")
    pairs = zip(_grounding_train(cfg, "clip_detection").entries[:20], selected.entries[:20])
    for (a, _, _), (b, _, _) in pairs:
        listed, restated = a.think.split(". So: ")
        assert b.think == f"{listed}." and b.target == a.target
        entry = json.loads(restated)
        assert b.answer == json.dumps({**entry, "frame": 0})
        assert b.answer.removesuffix(', "frame": 0}') + "}" == restated and restated in listed  # a prefix copy
        rows = [f"<answer>{r.answer}</answer>" for r in (a, b)]
        scores = grounding_scores(rows, [a.target, b.target])
        assert all(torch.equal(s[0], s[1]) for s in scores)
        assert scores[2].all() and (scores[1] > 0.9).all()
    assert selected[0].answer.startswith("<think>The clip shows, in Frame-0's camera, [")
    assert selected[0].answer.endswith(', "frame": 0}</answer>')


def test_clip_entry_answers_the_referred_entry_without_a_listing(cfg):
    """``data.sources[i].think=clip_entry``: the think is the referring expression copied, the answer clip_select's
    (the referred object's entry in Frame-0's camera with ``"frame": 0``), the target the row's own."""
    pairs = zip(_grounding_train(cfg, "clip_select").entries[:20], _grounding_train(cfg, "clip_entry").entries[:20])
    for (a, _, _), (b, _, _) in pairs:
        desc = b.meta["description"]
        assert b.think == f"{desc[0].upper()}{desc[1:]}." and b.answer == a.answer and b.target == a.target


def test_clip_name_answers_the_entry_named_in_one_key(cfg):
    """``think=clip_name``: clip_entry's think, box, frame and target; the answer's ``object`` is the entry's colour
    and category in one key (``{"object": "red chair", "bbox_3d": .., "frame": 0}``), which the grounding parser
    ignores, so both score the same."""
    import json

    import torch

    from lit3drft.rewards.grounding import grounding_scores

    pairs = list(zip(_grounding_train(cfg, "clip_entry").entries[:20], _grounding_train(cfg, "clip_name").entries[:20]))
    for (a, _, _), (b, _, _) in pairs:
        ea, eb = json.loads(a.answer), json.loads(b.answer)
        assert list(eb) == ["object", "bbox_3d", "frame"] and eb["object"] == f"{ea['color']} {ea['label']}"
        assert (eb["bbox_3d"], eb["frame"]) == (ea["bbox_3d"], ea["frame"]) and b.think == a.think
        assert b.target == a.target and b.meta["description"].startswith(f"the {eb['object']} ")
        scores = grounding_scores([f"<answer>{r.answer}</answer>" for r in (a, b)], [a.target, b.target])
        assert all(torch.equal(x[0], x[1]) for x in scores) and scores[2].all()


def test_the_evaluation_subset_of_a_source_does_not_depend_on_data_tasks(cfg):
    """A run on ``data.tasks=[grounding]`` is scored on the very grounding rows of a run on all tasks (the subset's
    seed is the source's index among all ``data.sources``, not among the enabled ones)."""

    def rows(tasks: list[str], eval_seed: int) -> list[str]:
        dm = LitDataModule(replace(cfg, tasks=tasks, max_eval_samples=1, eval_seed=eval_seed))
        return [r.id for r, _, _ in dm.split_entries("test") if r.task != "detection"]

    picked = set()
    for eval_seed in range(8):  # one row of 2-3 per source: 8 equal draws by chance is < 1 in 250
        alone = rows(["grounding"], eval_seed) + rows(["spatial"], eval_seed)
        assert len(alone) == 2 and alone == rows(["detection", "grounding", "spatial"], eval_seed)
        picked.update(alone)
    assert len(picked) > 2  # the subsets do vary with eval_seed


def test_prepare_data_generates_the_benchmark_when_missing(tmp_path):
    synth = replace(TINY, scenes=3, frames=8, grounding_frames=[8], detection_clip_lengths=[4])
    dm = LitDataModule(DataConfig(root=str(tmp_path / "bench"), synth=synth, batch_size=2))
    dm.prepare_data()
    assert (tmp_path / "bench" / "manifest.json").exists()
    dm.setup("fit")
    assert len(dm.datasets["train"]) > 0


def test_skip_mode_counts_bad_rows(cfg, tmp_path):
    import json
    from pathlib import Path

    root = cfg.root
    bad = tmp_path / "bad.jsonl"
    lines = Path(root, "tasks/train/detection_4f.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["images"][0] = "missing.png"
    bad.write_text("\n".join([lines[0], json.dumps(row)]) + "\n")
    src = replace(cfg.sources[0], name="bad", path=str(bad), split="train")
    dm = LitDataModule(replace(cfg, sources=[src], on_bad_sample="skip"))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 1 and dm.skipped.count == 1


def test_prepare_data_refuses_a_benchmark_generated_with_other_knobs(bench):
    root, _ = bench
    dm = LitDataModule(DataConfig(root=str(root), synth=replace(TINY, max_objects=TINY.max_objects + 1)))
    with pytest.raises(ValueError, match="max_objects"):
        dm.prepare_data()
    LitDataModule(DataConfig(root=str(root), synth=TINY)).prepare_data()  # same knobs: nothing to do
    LitDataModule(DataConfig(root=str(root), generate=False)).prepare_data()  # as is: no check


def test_evaluation_subset_does_not_depend_on_the_run_seed(bench):
    root, _ = bench
    ids = []
    for seed in (0, 1):
        dm = LitDataModule(DataConfig(root=str(root), generate=False, max_eval_samples=2, seed=seed))
        dm.setup("test")
        ids.append([r.id for r, _, _ in dm.datasets["test"].entries])
    assert ids[0] == ids[1]
    other = LitDataModule(DataConfig(root=str(root), generate=False, max_eval_samples=2, eval_seed=5))
    other.setup("test")
    assert len(other.datasets["test"].entries) == len(ids[0])


def test_knobs_are_compared_after_resolving_the_level(bench):
    root, _ = bench
    LitDataModule(DataConfig(root=str(root), synth=replace(TINY, camera_motion=1.0, occluders=0))).prepare_data()
    with pytest.raises(ValueError, match="level, occluders"):
        LitDataModule(DataConfig(root=str(root), synth=replace(TINY, level=4))).prepare_data()


@pytest.mark.parametrize("version", [1, None])
def test_a_version_1_benchmark_is_refused_with_the_command_that_re_renders_it(bench, tmp_path, version):
    import json

    root, manifest = bench
    old = {k: v for k, v in manifest.items() if k != "format_version"}
    if version is not None:
        old["format_version"] = version
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "manifest.json").write_text(json.dumps(old))
    synth = SynthConfig(scenes=40, level=2)
    for generate in (True, False):  # also when used as is: its objects are plain cuboids
        with pytest.raises(ValueError, match="format version 1") as err:
            LitDataModule(DataConfig(root=str(v1), synth=synth, generate=generate)).prepare_data()
        msg = str(err.value)
        assert f"delete {v1} and run again" in msg
        assert f"python -m lit3drft.data.synth --out {v1} --scenes 40 --level 2" in msg
    # knobs without a command-line flag: only the re-run advice
    with pytest.raises(ValueError, match=f"delete {v1} and run again") as err:
        LitDataModule(DataConfig(root=str(v1), synth=TINY)).prepare_data()
    assert "python -m" not in str(err.value)
    # a manifest that is not the embedded benchmark's, used as is: not ours to check
    (v1 / "manifest.json").write_text(json.dumps({"rows": 3}))
    LitDataModule(DataConfig(root=str(v1), generate=False)).prepare_data()
