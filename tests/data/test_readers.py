import json

import pandas as pd
import pytest

from lit3drft.data.media import load_sample
from lit3drft.data.readers import read_records
from lit3drft.data.records import BadSampleError, SkipCounter

FILES = {"detection_4f": ("detection", "vgllm"), "detection_6f": ("detection", "vgllm"),
         "grounding_8f": ("grounding", "vgllm"), "grounding_16f": ("grounding", "vgllm"),
         "vsibench": ("spatial", "vsibench")}  # fmt: skip


def media(root, fmt):
    return root / "videos" if fmt == "vsibench" else root


def first_row(root, stem):
    return json.loads((root / "tasks" / "train" / f"{stem}.jsonl").read_text().splitlines()[0])


def test_every_generated_row_parses(bench):
    root, manifest = bench
    n = 0
    for split, counts in manifest["rows"].items():
        for stem, count in counts.items():
            task, fmt = FILES.get(stem, ("grounding", "vgllm"))
            recs = read_records(root / "tasks" / split / f"{stem}.jsonl", task, fmt, stem, media(root, fmt), 8)
            assert len(recs) == count
            n += count
    assert n > 50


@pytest.mark.parametrize("stem", list(FILES))
@pytest.mark.parametrize("mode", ["da", "ta"])
def test_samples_follow_the_contract(bench, stem, mode):
    root, _ = bench
    task, fmt = FILES[stem]
    rec = read_records(root / "tasks" / "train" / f"{stem}.jsonl", task, fmt, stem, media(root, fmt), 8)[0]
    s = load_sample(rec, mode, media(root, fmt), load_depth=True)
    assert s.task == task and s.mode == mode and s.target["task"] == task and s.target["mode"] == mode
    assert s.id.startswith(f"{stem}/") and "<image>" not in s.prompt
    assert s.answer.endswith("</answer>") and (s.answer.startswith("<think>") == (mode == "ta"))
    assert all(f.mode == "RGB" and f.size == (112, 112) for f in s.frames)
    if task == "detection":
        assert len(s.frames) == int(stem[-2]) and s.frame_labels is None
        assert len(s.target["boxes"]) == len(s.target["labels"]) and all(len(b) == 9 for b in s.target["boxes"])
        assert s.cam2world.shape == (len(s.frames), 4, 4) and s.intrinsics.shape == (3, 3)
        assert len(s.depth) == len(s.frames) and s.depth[0].dtype.name == "float32"
    elif task == "grounding":
        assert s.frame_labels == [f"Frame-{i}: " for i in range(len(s.frames))]
        assert 0 <= s.target["frame"] < len(s.frames) and len(s.target["bbox_3d"]) == 9
        assert len(s.target["cam2global"]) == len(s.frames) and len(s.target["axis_align_matrix"]) == 4
    else:
        assert len(s.frames) == 8 and s.target["question_type"]
        assert len(s.depth) == 8 and s.intrinsics.shape == (3, 3)  # the embedded benchmark's depth_dir + cam2img
        if s.target["options"]:
            assert s.target["ground_truth"] in "ABCD" and "Options:" in s.prompt
        else:
            assert isinstance(s.target["ground_truth"], float)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_real_vgllm_rows_with_fenced_answers(bench, tmp_path):
    root, _ = bench
    row = first_row(root, "detection_4f")
    body = row["conversations"][1]["value"][len("<answer>") : -len("</answer>")]
    row["conversations"][1]["value"] = f"```json\n\t{body}\n```"
    del row["boxes"], row["think"], row["id"]
    rec = read_records(write_jsonl(tmp_path / "d.jsonl", [row]), "detection", "vgllm", "real", root)[0]
    assert rec.answer == body and rec.id == "real/0" and len(rec.target["boxes"]) == body.count("bbox_3d")


@pytest.mark.parametrize(
    "break_row, message",
    [
        (lambda r: r["images"].__setitem__(0, "nope/missing.png"), "missing file"),
        (lambda r: r["boxes"][0].__setitem__("bbox_3d", [1, 2, 3]), "9 finite numbers"),
        (lambda r: r.pop("conversations"), "not a VG-LLM row"),
    ],
)
def test_bad_vgllm_rows_name_file_and_row(bench, tmp_path, break_row, message):
    root, _ = bench
    good, bad = first_row(root, "detection_4f"), first_row(root, "detection_4f")
    break_row(bad)
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad])
    with pytest.raises(BadSampleError, match=rf"d\.jsonl:1 \(line 2\): .*{message}"):
        read_records(path, "detection", "vgllm", "src", root)
    skipped = SkipCounter()
    recs = read_records(path, "detection", "vgllm", "src", root, on_bad_sample="skip", skipped=skipped)
    assert len(recs) == 1 and skipped.count == 1 and "d.jsonl:1" in skipped.reasons[0]


def test_unknown_task_and_question_type(bench, tmp_path):
    root, _ = bench
    row = first_row(root, "vsibench")
    path = write_jsonl(tmp_path / "v.jsonl", [dict(row, question_type="teleportation")])
    with pytest.raises(BadSampleError, match=r"v\.jsonl:0 \(line 1\): unknown question_type 'teleportation'"):
        read_records(path, "spatial", "vsibench", "v", root / "videos")
    with pytest.raises(BadSampleError, match="unknown task 'captioning'"):
        read_records(path, "captioning", "vsibench", "v", root / "videos")


def test_vsibench_parquet_and_undecodable_video(bench, tmp_path):
    root, _ = bench
    row = first_row(root, "vsibench")
    broken = dict(row, dataset="broken")
    (tmp_path / "videos" / "broken").mkdir(parents=True)
    (tmp_path / "videos" / "broken" / f"{row['scene_name']}.mp4").write_bytes(b"not a video at all")
    (tmp_path / "videos" / "synth3d").symlink_to(root / "videos" / "synth3d")
    path = tmp_path / "v.parquet"
    pd.DataFrame([row, broken]).to_parquet(path)
    recs = read_records(path, "spatial", "vsibench", "v", tmp_path / "videos", 4)
    assert len(load_sample(recs[0], "da", tmp_path).frames) == 4
    with pytest.raises(BadSampleError, match="broken.*cannot decode video"):
        load_sample(recs[1], "da", tmp_path)
    missing = write_jsonl(tmp_path / "m.jsonl", [dict(row, scene_name="nowhere")])
    with pytest.raises(BadSampleError, match=r"m\.jsonl:0 \(line 1\): missing video"):
        read_records(missing, "spatial", "vsibench", "v", tmp_path / "videos")


def test_vsibench_depth_is_the_rendered_depth_of_the_sampled_frames(bench):
    """Depth of a video sample = the scene's stored depth maps at the frame indices decord sampled, and those
    indices are the frames the video shows (each decoded frame is nearest to the stored frame of its index)."""
    import numpy as np
    from PIL import Image

    root, _ = bench
    rec = read_records(
        root / "tasks" / "train" / "vsibench.jsonl", "spatial", "vsibench", "v", media(root, "vsibench"), 5
    )[0]
    s = load_sample(rec, "da", media(root, "vsibench"), load_depth=True)
    idx = s.meta["frame_indices"]
    assert len(idx) == 5 and idx[0] == 0
    scene_dir = root / "scenes" / rec.meta["scene_name"]

    def stored(kind, i):
        return np.asarray(Image.open(scene_dir / kind / f"{i:05d}.png"), dtype=np.float32)

    for k, (i, d) in enumerate(zip(idx, s.depth)):
        np.testing.assert_array_equal(d, stored("depth", i) / 1000.0)
        assert d.shape == (112, 112) and d.min() > 0.05 and d.max() < 20  # metres inside a room
        # the decoded video frame is the stored frame i (H.264 is lossy): closer to it than to any other frame
        frame = np.asarray(s.frames[k], dtype=np.float32)
        gaps = {
            j: np.abs(frame - stored("frames", j)).mean()
            for j in range(len(list((scene_dir / "frames").glob("*.png"))))
        }
        assert min(gaps, key=gaps.get) == i and gaps[i] < 8.0
    scene = json.loads((scene_dir / "scene.json").read_text())
    np.testing.assert_allclose(s.intrinsics, scene["intrinsics"], atol=1e-6)
    # the poses of the same frames (pose_dir: camera-to-global, ScanNet's layout): world = axis_align . global
    world = np.asarray(scene["axis_align_matrix"]) @ s.cam2world
    np.testing.assert_allclose(world, np.asarray(scene["cam2world"])[idx], atol=1e-8)
    # without load_depth, or for a row of the published format (no depth_dir / cam2img), nothing is loaded
    assert load_sample(rec, "da", media(root, "vsibench")).depth is None


@pytest.mark.parametrize(
    "change, message",
    [({"cam2img": None}, "go together"), ({"depth_dir": None, "cam2img": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "go together"),
     ({"depth_dir": 3}, "depth_dir must be a path"), ({"cam2img": [[1, 2], [3, 4]]}, "cam2img must be"),
     ({"pose_dir": 3}, "pose_dir must be a path"),
     ({"depth_dir": None, "cam2img": None}, "pose_dir must be a path beside depth_dir")],
)  # fmt: skip
def test_vsibench_depth_fields_checked(bench, tmp_path, change, message):
    root, _ = bench
    row = {**first_row(root, "vsibench"), **change}
    path = write_jsonl(tmp_path / "v.jsonl", [row])
    with pytest.raises(BadSampleError, match=message):
        read_records(path, "spatial", "vsibench", "v", media(root, "vsibench"), 8)


def test_vsibench_missing_depth_map_names_the_file(bench, tmp_path):
    root, _ = bench
    row = {**first_row(root, "vsibench"), "depth_dir": "../scenes/no_such_scene/depth"}
    rec = read_records(
        write_jsonl(tmp_path / "v.jsonl", [row]), "spatial", "vsibench", "v", media(root, "vsibench"), 4
    )[0]
    with pytest.raises(BadSampleError, match="no_such_scene/depth/00000.png"):
        load_sample(rec, "da", media(root, "vsibench"), load_depth=True)


def test_vsibench_bad_pose_file_names_the_file(bench, tmp_path):
    """ScanNet marks frames with lost tracking by an ``-inf`` pose: refused, naming the file, not a NaN later."""
    root, _ = bench
    poses = tmp_path / "media" / "pose"
    poses.mkdir(parents=True)
    for i in range(64):
        (poses / f"{i:05d}.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4))
    row = {**first_row(root, "vsibench"), "pose_dir": str(poses)}
    rec = read_records(
        write_jsonl(tmp_path / "v.jsonl", [row]), "spatial", "vsibench", "v", media(root, "vsibench"), 4
    )[0]
    with pytest.raises(BadSampleError, match="pose/00000.txt.*not a finite 4x4"):
        load_sample(rec, "da", media(root, "vsibench"), load_depth=True)
