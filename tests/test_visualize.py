import numpy as np
from PIL import Image

from lit3drft.visualize import main
from tests.conftest import TINY


def test_grid_with_ground_truth_and_predictions(tmp_path):
    import json
    from dataclasses import replace

    from lit3drft.data.synth import generate

    root = tmp_path / "bench"
    generate(replace(TINY, scenes=3, frames=8, grounding_frames=[8], detection_clip_lengths=[4]), root, progress=False)
    row = json.loads((root / "tasks" / "train" / "detection_4f.jsonl").read_text().splitlines()[0])
    pred = tmp_path / "predictions.jsonl"
    pred.write_text(
        json.dumps({"id": f"detection_4f/{row['id']}", "completion": row["conversations"][1]["value"]}) + "\n"
    )
    out = tmp_path / "grid.png"
    main(["--root", str(root), "--file", "tasks/train/detection_4f.jsonl", "--rows", "1",
          "--predictions", str(pred), "--out", str(out)])  # fmt: skip
    im = np.asarray(Image.open(out))
    assert im.shape == (112 * 2, 112 * 2 * 4, 3)
    red = (im[..., 0] > 240) & (im[..., 1] < 60)
    assert red.sum() > 50 or not row["boxes"]  # predicted boxes (drawn over the ground truth) are visible
    main(["--root", str(root), "--scene", "scene00000", "--out", str(tmp_path / "scene.png")])
    assert (tmp_path / "scene.png").exists()


def test_predictions_are_drawn_as_the_reward_parses_them(bench, tmp_path):
    """A figure agrees with the reward: a fenced answer with a trailing comma (which ``json.loads`` refuses) is
    drawn, an answer without ``<answer>`` tags (which the reward scores 0) is not."""
    import json

    from lit3drft.rewards import parse_answer

    root, _ = bench
    file = "tasks/train/detection_4f.jsonl"
    row = next(r for r in map(json.loads, (root / file).read_text().splitlines()) if r["boxes"])
    body = row["conversations"][1]["value"][len("<answer>") : -len("</answer>")]
    items = json.loads(body)
    tolerant = "<answer>```json\n[" + ",\n".join(json.dumps(i) for i in items) + ",\n]\n```</answer>"
    assert parse_answer(tolerant, "detection") is not None and parse_answer(body, "detection") is None

    def drawn(completion: str, name: str) -> np.ndarray:
        pred, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.png"
        pred.write_text(json.dumps({"id": row["id"], "completion": completion}) + "\n")
        main(["--root", str(root), "--file", file, "--rows", "1", "--predictions", str(pred), "--out", str(out)])
        return np.asarray(Image.open(out))

    def red(im: np.ndarray) -> int:
        return int(((im[..., 0] > 240) & (im[..., 1] < 60)).sum())

    nothing = drawn("<answer>no boxes</answer>", "nothing")  # ground truth only
    assert red(drawn(tolerant, "tolerant")) > red(nothing) + 50
    assert np.array_equal(drawn(body, "untagged"), nothing)
