"""Bad input, named (issue 9, part 3): malformed rows, bad ground-truth boxes, bad files, empty splits, missing or
undecodable frames and videos. Each is an error naming the file, the row (and line) or the key, or with
``on_bad_sample: skip`` a counted, logged skip. Real files in ``tmp_path``, written with the project's writers."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lit3drft.data import prompts as P
from lit3drft.data.config import DataConfig, SourceConfig
from lit3drft.data.datamodule import LitDataModule
from lit3drft.data.media import load_sample
from lit3drft.data.readers import read_records
from lit3drft.data.records import BadSampleError, SkipCounter
from lit3drft.data.synth import write_video
from lit3drft.rewards import RewardConfig, TaskMetrics, get_reward, score_completions

BOX = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
EYE = np.eye(4).tolist()


def frames_rgb(n: int, size: int = 28) -> np.ndarray:
    return (np.random.default_rng(0).random((n, size, size, 3)) * 255).astype(np.uint8)


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """Two jpg frames, one 8-frame mp4 (``videos/ds/s0.mp4``), all written the way the project writes them."""
    for i, rgb in enumerate(frames_rgb(2)):
        Image.fromarray(rgb).save(tmp_path / f"f{i}.jpg", quality=90)
    write_video(tmp_path / "videos" / "ds" / "s0.mp4", frames_rgb(8, 32), fps=4)
    return tmp_path


def det_row(**change) -> dict:
    row = {
        "id": "d0",
        "conversations": [
            {"from": "human", "value": P.IMAGE_TOKEN * 2 + "\nDetect."},
            {"from": "gpt", "value": "<answer>[]</answer>"},
        ],
        "images": ["f0.jpg", "f1.jpg"],
        "boxes": [{"label": "chair", "bbox_3d": BOX}, {"label": "bed", "bbox_3d": BOX}],
    }
    return {**row, **change}


def ground_row(**change) -> dict:
    human = "".join(P.frame_label(i) + P.IMAGE_TOKEN for i in range(2)) + "\nFind the chair."
    row = det_row(conversations=[{"from": "human", "value": human}, {"from": "gpt", "value": ""}])
    del row["boxes"]
    row.update(target={"frame": 1, "bbox_3d": BOX}, cam2global=[EYE, EYE], axis_align_matrix=EYE)
    return {**row, **change}


def vsi_row(**change) -> dict:
    row = {"id": "q0", "dataset": "ds", "scene_name": "s0", "question_type": "object_counting",
           "question": "How many chairs?", "ground_truth": "3", "options": None}  # fmt: skip
    return {**row, **change}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def with_box(k: int, box) -> dict:
    row = det_row()
    row["boxes"][k] = {"label": "bed", "bbox_3d": box}
    return row


# -------------------------------------------------------------------------------------------- malformed rows

NAN_BOX = [0, 0, 2, 1, 1, float("nan"), 0, 0, 0]
BAD_ROWS = [
    ("detection", "vgllm", [1, 2], "a row must be a JSON object, got list"),
    ("detection", "vgllm", None, "a row must be a JSON object, got NoneType"),
    ("detection", "vgllm", "{not json", "invalid JSON"),
    ("detection", "vgllm", {k: v for k, v in det_row().items() if k != "images"}, "missing 'images'"),
    ("detection", "vgllm", det_row(conversations="hi"), "not a VG-LLM row"),
    ("detection", "vgllm", det_row(images="f0.jpg"), "images must be a list of paths"),
    ("detection", "vgllm", det_row(images=["f0.jpg", "nope.jpg"]), "missing file .*nope.jpg"),
    ("detection", "vgllm", det_row(boxes={"label": "a"}), "boxes must be a list"),
    ("detection", "vgllm", det_row(boxes=[{"label": "a", "bbox_3d": BOX}, {"bbox_3d": BOX}]),
     r"missing key 'boxes\[1\]\.label'"),
    ("detection", "vgllm", det_row(boxes=["chair"]), r"boxes\[0\] must be a JSON object"),
    ("detection", "vgllm", with_box(1, [1, 2, 3]), r"boxes\[1\]\.bbox_3d must be 9 finite numbers, got 3"),
    ("detection", "vgllm", with_box(1, NAN_BOX), r"boxes\[1\]\.bbox_3d must be 9 finite numbers, got 9: .*nan"),
    ("detection", "vgllm", with_box(0, "big"), r"boxes\[0\]\.bbox_3d must be 9 finite numbers"),
    ("detection", "vgllm", with_box(0, [[1, 2], [3]]), r"boxes\[0\]\.bbox_3d must be 9 finite numbers"),
    ("detection", "vgllm", det_row(cam2img=[1, 2]), "cam2img must be a finite 3x3 or 4x4 matrix"),
    ("detection", "vgllm", det_row(metadata=[1]), "metadata must be a JSON object"),
    ("grounding", "vgllm", ground_row(target={"bbox_3d": BOX}), r"missing key 'target\.frame'"),
    ("grounding", "vgllm", ground_row(target={"frame": "one", "bbox_3d": BOX}), r"target\.frame must be a frame index"),
    ("grounding", "vgllm", ground_row(target={"frame": 1.5, "bbox_3d": BOX}), r"target\.frame must be a frame index"),
    ("grounding", "vgllm", ground_row(target={"frame": 7, "bbox_3d": BOX}), "answer frame 7 outside the 2 frames"),
    ("grounding", "vgllm", ground_row(target={"frame": 0, "bbox_3d": NAN_BOX}), r"target\.bbox_3d must be 9 finite"),
    ("grounding", "vgllm", ground_row(target={"frame": 0, "bbox_3d": BOX[:7]}), r"target\.bbox_3d .* got 7"),
    ("grounding", "vgllm", ground_row(cam2global=[EYE]), "cam2global must be 2 4x4 matrices"),
    ("grounding", "vgllm", ground_row(cam2global=[EYE, np.full((4, 4), np.nan).tolist()]), "cam2global has NaN"),
    ("grounding", "vgllm", ground_row(axis_align_matrix=[1, 0]), "axis_align_matrix must be 1 4x4 matrices"),
    ("spatial", "vsibench", {k: v for k, v in vsi_row().items() if k != "question_type"}, "missing 'question_type'"),
    ("spatial", "vsibench", vsi_row(question_type="teleport"), "unknown question_type 'teleport'"),
    ("spatial", "vsibench", vsi_row(ground_truth="NaN"), "ground_truth nan is not finite"),
    ("spatial", "vsibench", vsi_row(ground_truth=None), "ground_truth None is not a number"),
    ("spatial", "vsibench", vsi_row(question_type="route_planning", options=3), "options must be a list"),
    ("spatial", "vsibench", vsi_row(question_type="route_planning", ground_truth="C", options=["A. x", "B. y"]),
     "ground_truth 'C' does not name one of the options"),
    ("spatial", "vsibench", vsi_row(scene_name="s9"), r"missing video .*s9\.mp4"),
]  # fmt: skip


@pytest.mark.parametrize("task, fmt, bad, message", BAD_ROWS, ids=[m for *_, m in BAD_ROWS])
def test_malformed_row_names_file_line_and_key(media, task, fmt, bad, message, caplog):
    good = {"detection": det_row, "grounding": ground_row, "spatial": vsi_row}[task]()
    root = media / "videos" if fmt == "vsibench" else media
    path = write_jsonl(media / "rows.jsonl", [good, "", bad])  # a blank line: row 1 is on line 3
    with pytest.raises(BadSampleError, match=rf"rows\.jsonl:1 \(line 3\): .*{message}"):
        read_records(path, task, fmt, "src", root)
    skipped = SkipCounter()
    with caplog.at_level(logging.WARNING):
        recs = read_records(path, task, fmt, "src", root, on_bad_sample="skip", skipped=skipped)
    assert [r.id for r in recs] == [f"src/{good['id']}"] and skipped.count == 1
    assert "rows.jsonl:1 (line 3)" in skipped.reasons[0] and "rows.jsonl:1 (line 3)" in caplog.text
    assert skipped.summary().startswith("1 bad samples skipped; first: ")


def test_ground_truth_from_the_answer_text_is_checked_too(media):
    row = det_row(conversations=[det_row()["conversations"][0], {"from": "gpt", "value": "<answer>[{}]</answer>"}])
    del row["boxes"]
    path = write_jsonl(media / "a.jsonl", [row])
    with pytest.raises(BadSampleError, match=r"a\.jsonl:0 \(line 1\): missing key 'answer\[0\]\.label'"):
        read_records(path, "detection", "vgllm", "src", media)
    row["conversations"][1]["value"] = '<answer>[{"label": "a", "bbox_3d": [1, NaN]}]</answer>'
    with pytest.raises(BadSampleError, match=r"answer\[0\]\.bbox_3d must be 9 finite numbers, got 2"):
        read_records(write_jsonl(path, [row]), "detection", "vgllm", "src", media)
    row["conversations"][1]["value"] = "<answer>chair at the left</answer>"
    with pytest.raises(BadSampleError, match="answer is not JSON"):
        read_records(write_jsonl(path, [row]), "detection", "vgllm", "src", media)


def test_json_and_parquet_rows_are_named_by_index(media):
    path = media / "rows.json"
    path.write_text(json.dumps({"data": [det_row(), det_row(boxes=[{"label": "a"}])]}))
    with pytest.raises(BadSampleError, match=r"rows\.json:1: missing key 'boxes\[0\]\.bbox_3d'"):
        read_records(path, "detection", "vgllm", "src", media)
    pq = media / "rows.parquet"
    pd.DataFrame([vsi_row(), vsi_row(id="q1", ground_truth="many")]).to_parquet(pq)
    with pytest.raises(BadSampleError, match=r"rows\.parquet:1: numerical ground_truth 'many' is not a number"):
        read_records(pq, "spatial", "vsibench", "src", media / "videos")


# -------------------------------------------------------------------------------------------- whole files


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "file not found"),
        ("empty.jsonl", b"\n\n", "no rows"),
        ("empty.json", b"[]", "no rows"),
        ("binary.jsonl", b"\xff\xfe\x00garbage\x80", "cannot read the file .*UnicodeDecodeError"),
        ("broken.json", b"[{", "not valid JSON"),
        ("keys.json", b'{"rows": []}', "a JSON object needs a 'data' list of rows; keys: \\['rows'\\]"),
        ("scalar.json", b"3", "rows must be a JSON list"),
        ("broken.parquet", b"PAR1 not really parquet", "cannot read the file"),
    ],
)
def test_unreadable_files_are_errors_in_both_modes(media, name, content, message):
    path = media / name
    if content is not None:
        path.write_bytes(content)
    for mode in ("error", "skip"):
        with pytest.raises(BadSampleError, match=rf"{name}: {message}"):
            read_records(path, "detection", "vgllm", "src", media, on_bad_sample=mode)


def test_a_file_of_only_bad_rows_is_an_error_even_when_skipping(media):
    path = write_jsonl(media / "rows.jsonl", [det_row(images=["f0.jpg", "x.jpg"]), "oops"])
    with pytest.raises(BadSampleError, match=r"rows\.jsonl: all 2 rows are bad; first: .*x\.jpg.*; .*invalid JSON"):
        read_records(path, "detection", "vgllm", "src", media, on_bad_sample="skip")


def test_unknown_task_format_and_mode(media):
    path = write_jsonl(media / "rows.jsonl", [det_row()])
    with pytest.raises(BadSampleError, match=r"rows\.jsonl: unknown task 'captioning'; valid: detection"):
        read_records(path, "captioning", "vgllm", "src", media)
    with pytest.raises(BadSampleError, match="unknown row format 'coco'"):
        read_records(path, "detection", "coco", "src", media)
    with pytest.raises(BadSampleError, match=r"rows\.jsonl: VSI-Bench rows are spatial questions, not 'detection'"):
        read_records(path, "detection", "vsibench", "src", media)
    with pytest.raises(ValueError, match="on_bad_sample='ignore'; valid: error, skip"):
        read_records(path, "detection", "vgllm", "src", media, on_bad_sample="ignore")
    with pytest.raises(ValueError, match=r"data\.sources\[x\]\.task='captioning'"):
        LitDataModule(DataConfig(sources=[SourceConfig(name="x", task="captioning")]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"data\.tasks: unknown tasks \['detecton'\]; valid: detection"):
        DataConfig(tasks=["detecton"])


def test_unknown_reward_or_task_names_in_the_registry():
    with pytest.raises(ValueError, match=r"unknown reward 'iou'; choose one of \['detection', 'format'"):
        get_reward("iou")
    with pytest.raises(ValueError, match=r"unknown reward 'iou'; choose one of \['detection', 'format'"):
        RewardConfig().options("iou")
    with pytest.raises(ValueError, match="unknown task 'captioning'"):
        score_completions(["<answer>1</answer>"], [{"task": "captioning"}], RewardConfig())
    with pytest.raises(ValueError, match="unknown task None"):
        TaskMetrics().update(["<answer>1</answer>"], [{"ground_truth": 1}])
    with pytest.raises(ValueError, match="must be finite and >= 0, got nan"):
        RewardConfig(format_weight=math.nan)


# -------------------------------------------------------------------------------------------- empty splits


def bench_config(media: Path, rows: list, **change) -> DataConfig:
    write_jsonl(media / "train.jsonl", rows)
    src = SourceConfig(name="det", task="detection", format="vgllm", path="{split}.jsonl")
    return DataConfig(root=str(media), generate=False, sources=[src], **change)


def test_an_empty_train_split_names_files_and_filter(media, caplog):
    dm = LitDataModule(bench_config(media, [det_row()], tasks=["spatial"]))
    with pytest.raises(BadSampleError, match=r"the train split is empty: files read: none \(data\.tasks=\['spatial'\]"):
        dm.setup("fit")
    cfg = bench_config(media, [det_row()])
    dm = LitDataModule(replace(cfg, sources=[replace(cfg.sources[0], weight=0.0)]))
    with pytest.raises(BadSampleError, match=r"the train split is empty: files read: .*train\.jsonl"):
        dm.setup("fit")
    # a train-only source: val is empty, which is allowed but said
    dm = LitDataModule(replace(cfg, sources=[replace(cfg.sources[0], path="train.jsonl", split="train")]))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 1 and "the val split is empty" in caplog.text


# -------------------------------------------------------------------------------------------- frames and videos


def truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), r"cannot read .*f1\.jpg \(FileNotFoundError"),
        (lambda p: truncate(p, 0.5), r"cannot read .*f1\.jpg \(OSError: image file is truncated"),
        (lambda p: p.write_bytes(b""), r"cannot read .*f1\.jpg \(UnidentifiedImageError"),
        (lambda p: p.write_bytes(b"\xff\xd8\xff" + b"\x00" * 64), r"cannot read .*f1\.jpg"),
    ],
    ids=["deleted", "truncated", "empty", "corrupted"],
)
def test_bad_frames_name_the_file_and_sample(media, damage, message):
    rec = read_records(write_jsonl(media / "rows.jsonl", [det_row()]), "detection", "vgllm", "src", media)[0]
    damage(media / "f1.jpg")
    with pytest.raises(BadSampleError, match=rf"rows\.jsonl: sample src/d0: {message}"):
        load_sample(rec, "da", media)


def test_bad_depth_maps_name_the_file(media):
    Image.fromarray(np.zeros((28, 28), np.uint16)).save(media / "d0.png")
    (media / "d1.png").write_bytes(b"not a png")
    rows = [det_row(depths=["d0.png", "d1.png"])]
    rec = read_records(write_jsonl(media / "rows.jsonl", rows), "detection", "vgllm", "src", media)[0]
    assert len(load_sample(rec, "da", media).frames) == 2  # depth is read only when asked for
    with pytest.raises(BadSampleError, match=r"sample src/d0: cannot read .*d1\.png"):
        load_sample(rec, "da", media, load_depth=True)


@pytest.mark.parametrize(
    "damage",
    [lambda p: truncate(p, 0.5), lambda p: p.write_bytes(b""), lambda p: p.write_bytes(b"\x00" * 4096), Path.unlink],
    ids=["truncated", "empty", "zeros", "deleted"],
)
def test_undecodable_videos_name_the_file_and_sample(media, damage):
    path = write_jsonl(media / "rows.jsonl", [vsi_row()])
    rec = read_records(path, "spatial", "vsibench", "src", media / "videos", frames=4)[0]
    assert len(load_sample(rec, "da", media).frames) == 4
    damage(media / "videos" / "ds" / "s0.mp4")
    with pytest.raises(BadSampleError, match=r"rows\.jsonl: sample src/q0: .*s0\.mp4: cannot decode video"):
        load_sample(rec, "da", media)


def test_skip_mode_serves_the_next_good_sample_and_counts(media, caplog):
    write_video(media / "videos" / "ds" / "s1.mp4", frames_rgb(8, 32), fps=4)
    write_jsonl(media / "train.jsonl", [vsi_row(), vsi_row(id="q1", scene_name="s1")])
    src = SourceConfig(name="vsi", task="spatial", format="vsibench", path="{split}.jsonl", split="train", frames=4)
    cfg = DataConfig(root=str(media), generate=False, sources=[replace(src, path="train.jsonl")])
    dm = LitDataModule(cfg)
    dm.setup("fit")
    truncate(media / "videos" / "ds" / "s0.mp4", 0.3)
    ds = dm.datasets["train"]
    bad = next(i for i, (r, _, _) in enumerate(ds.entries) if r.id == "vsi/q0")
    with pytest.raises(BadSampleError, match=r"sample vsi/q0: .*s0\.mp4: cannot decode video"):
        ds[bad]
    dm = LitDataModule(replace(cfg, on_bad_sample="skip"))
    dm.setup("fit")
    ds = dm.datasets["train"]
    with caplog.at_level(logging.WARNING):
        assert ds[bad].id == "vsi/q1"
    assert (
        ds.skipped.count == 1 and "s0.mp4" in ds.skipped.reasons[0] and "skipping bad sample (1 so far)" in caplog.text
    )
    (media / "videos" / "ds" / "s1.mp4").write_bytes(b"")
    with pytest.raises(BadSampleError, match=r"every sample of the split is bad \(3 bad samples skipped; first: "):
        ds[0]
