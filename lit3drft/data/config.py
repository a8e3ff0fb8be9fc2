"""Data configuration: the embedded benchmark's generation knobs and the data mix (litgpt-style dataclasses)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

Task = Literal["detection", "grounding", "spatial"]
RowFormat = Literal["vgllm", "vsibench"]
TrainMode = Literal["da", "ta", "da+ta"]
EvalMode = Literal["da", "ta"]
OnBadSample = Literal["error", "skip"]


LEVELS: dict[int, dict[str, int | float]] = {
    1: {"min_objects": 1, "max_objects": 2, "camera_motion": 0.0, "occluders": 0},
    2: {"min_objects": 2, "max_objects": 4, "camera_motion": 0.5, "occluders": 0},
    3: {"min_objects": 3, "max_objects": 6, "camera_motion": 1.0, "occluders": 0},
    4: {"min_objects": 3, "max_objects": 12, "camera_motion": 1.0, "occluders": 2},
}
"""Difficulty levels of the embedded benchmark: the knobs each sets (`SynthConfig.level`, 3 is the default)."""


@dataclass
class SynthConfig:
    """Generation knobs of the embedded benchmark (``python -m lit3drft.data.synth``)."""

    scenes: int = 200
    """Number of rooms; split by scene into train/val/test by `split_fractions`."""
    seed: int = 0
    """Master seed; scene i uses a seed derived from (seed, i), so any scene can be regenerated alone."""
    width: int = 112
    """Frame width in pixels (multiples of 28 suit Qwen2.5-VL's 14-pixel patches merged 2x2)."""
    height: int = 112
    """Frame height in pixels."""
    frames: int = 32
    """Frames rendered per scene (the scene's video); task samples take subsets of them."""
    fps: int = 4
    """Frame rate written into each scene's mp4."""
    level: int = 3
    """Difficulty level (`LEVELS`): sets `min_objects`, `max_objects`, `camera_motion` and `occluders` unless those
    are given. 1: 1-2 objects, a level camera walking half its path (no pitch, roll or look-around sweep);
    2: 2-4 objects, mild motion (0.5); 3 (default): 3-6 objects, the walking camera with pitch, roll and sweep;
    4: 3-12 objects, the same camera, 2 occluders."""
    min_objects: int | None = None
    """Fewest annotated objects per room (None: from `level`)."""
    max_objects: int | None = None
    """Most annotated objects per room (None: from `level`)."""
    categories: list[str] = field(default_factory=list)
    """Categories to draw from (names in `lit3drft.data.CATEGORIES`); empty means all of them."""
    camera_motion: float | None = None
    """Scale of the look-around sweep, the downward tilt and its pitch wobble, and the roll; 0 is a level camera
    (no pitch, no roll) that walks half its path looking at the room centre (None: from `level`)."""
    hfov_deg: float = 75.0
    """Horizontal field of view of the camera in degrees."""
    occluders: int | None = None
    """Unlabeled floor-to-ceiling pillars per room that hide objects (harder perception; None: from `level`)."""
    min_visible_pixels: int = 20
    """An object counts as visible in a frame from this many drawn pixels (detection, grounding, appearance order)."""
    detection_clip_lengths: list[int] = field(default_factory=lambda: [4, 6])
    """Frames per detection clip; one task file per length (`detection_4f.jsonl`, ...)."""
    detection_clips_per_scene: int = 4
    """Detection clips drawn per scene and clip length."""
    detection_stride: int = 3
    """Frames between consecutive frames of a detection clip (ScanNet clips use 30 of its 30 fps video)."""
    grounding_frames: list[int] = field(default_factory=lambda: [8, 16, 32])
    """Frames per grounding sample; one task file per count (`grounding_8f.jsonl`, ...)."""
    grounding_per_scene: int = 4
    """Grounding samples per scene and frame count."""
    questions_per_type: int = 2
    """VSI-Bench questions per scene and question type (when the scene admits that many)."""
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    """Fractions of scenes in train, val and test."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"data.synth.level={self.level}: valid levels are {', '.join(map(str, LEVELS))}")
        r = self.resolved()
        if not 1 <= r.min_objects <= r.max_objects:
            raise ValueError(
                f"data.synth: need 1 <= min_objects <= max_objects, got {r.min_objects} and {r.max_objects}"
            )
        if r.camera_motion < 0 or r.occluders < 0:
            raise ValueError(f"data.synth: camera_motion and occluders must be >= 0 ({r.camera_motion}, {r.occluders})")

    def resolved(self) -> SynthConfig:
        """A copy with every knob the level sets filled in; what the manifest records and the generator uses.

        Explicit values win; a bound taken from the level yields to an explicit other bound (level 4 with
        ``max_objects=2`` has 2-2 objects).

        Example:
            >>> c = SynthConfig(level=4, max_objects=8).resolved()
            >>> c.min_objects, c.max_objects, c.camera_motion, c.occluders
            (3, 8, 1.0, 2)
        """
        fill = {k: v for k, v in LEVELS[self.level].items() if getattr(self, k) is None}
        if not fill:
            return self
        if "min_objects" in fill and self.max_objects is not None:
            fill["min_objects"] = min(fill["min_objects"], self.max_objects)
        if "max_objects" in fill and self.min_objects is not None:
            fill["max_objects"] = max(fill["max_objects"], self.min_objects)
        return dataclasses.replace(self, **fill)


@dataclass
class SourceConfig:
    """One task file (or one per split) in a real format, and its share of the training mix."""

    name: str = "detection_4f"
    """Short name; sample ids are `<name>/<row id>`."""
    task: Task = "detection"
    """Task of the rows (sets the reward and the reader's checks)."""
    format: RowFormat = "vgllm"
    """Row format: `vgllm` (conversations/images/boxes, JSON or JSONL) or `vsibench` (parquet, JSON or JSONL)."""
    path: str = "tasks/{split}/detection_4f.jsonl"
    """Rows file relative to `DataConfig.root` (or absolute); `{split}` is replaced by train/val/test."""
    split: str = "train"
    """Split of a `path` without `{split}`: the file is used for that split only."""
    weight: float = 1.0
    """Training mix: the source's rows are repeated this many times per epoch (fractions take a seeded subset)."""
    max_samples: int = 0
    """Cap on rows read from this source per split after a seeded shuffle; 0 means all."""
    frames: int = 0
    """Frames per sample: VSI-Bench videos are sampled uniformly to this many (0 means 16); VG-LLM rows keep theirs."""
    image_size: list[int] = field(default_factory=list)
    """Resize frames to [width, height] at load time; empty keeps the stored resolution."""
    mode: Literal["", "da", "ta"] = ""
    """Answer mode of this source's rows in training and evaluation alike; empty: `DataConfig.train_mode` and
    `eval_mode`. E.g. `ta` on grounding alone: its think names the target before the box is written."""
    think: Literal[
        "", "description", "listing", "clip_listing", "clip_detection", "clip_select", "clip_entry", "clip_name"
    ] = ""
    """Think of this source's TA training answers: empty keeps the rows' own; ``description`` (grounding rows) writes
    the row's referring expression (``metadata.description``) into it instead of the reasoning about which object is
    meant, as the pretraining's ``pretrain.grounding_think=description`` does (``tasks.grounding_think``);
    ``listing`` (grounding rows of the embedded benchmark, whose ``scenes/<scene>/scene.json`` it reads): detect, then
    select, as ``pretrain.grounding_think=listing`` (``tasks.listing_think``): the answered frame's objects as a
    detection answer in its camera, then the referred entry restated; ``clip_listing`` (same rows): detect in the
    clip, then select (``tasks.clip_listing_think``): the clip's objects as its detection answer in the first frame's
    camera (labels with colour), the referred entry restated, and the answer rewritten to ``{"frame": 0, ...}``
    with that box (the same world box; the metric's target is the row's own); ``clip_detection``: the same with
    the detection answer's own entries, each with its colour in a key in front (``{"color": "red", "label":
    "chair", "bbox_3d": ...}``), and no copied expression; ``clip_select``: ``clip_detection``'s list without the
    restated entry, and the answer the referred entry itself with its frame last (``{"color": .., "label": ..,
    "bbox_3d": .., "frame": 0}``, ``tasks.clip_select_think``; the parser reads ``frame`` and ``bbox_3d``);
    ``clip_entry``: no listing (the think copies the referring expression), the answer the referred object's own
    entry in the first frame's camera, as ``clip_select``'s (``tasks.clip_entry_think``); ``clip_name``: the same
    think and box, the answer naming the object in one key, ``{"object": "red chair", "bbox_3d": .., "frame": 0}``
    (``tasks.clip_name_think``)."""
    media_root: str = ""
    """Directory that image paths (VG-LLM) or `<dataset>/<scene_name>.mp4` (VSI-Bench) are relative to;
    empty means `DataConfig.root` (and `<root>/videos` for VSI-Bench)."""


def default_sources() -> list[SourceConfig]:
    """All tasks of the embedded benchmark: 4-frame detection, 8-frame grounding, VSI-Bench questions."""
    return [
        SourceConfig("detection_4f", "detection", "vgllm", "tasks/{split}/detection_4f.jsonl"),
        SourceConfig("grounding_8f", "grounding", "vgllm", "tasks/{split}/grounding_8f.jsonl"),
        SourceConfig("vsibench", "spatial", "vsibench", "tasks/{split}/vsibench.jsonl", frames=16),
    ]


@dataclass
class DataConfig:
    """Where the data lives, what the mix is, and how batches are formed."""

    root: str = "data/synth3d"
    """Benchmark directory; the embedded benchmark is generated here by `prepare_data` when missing."""
    generate: bool = True
    """Generate the embedded benchmark under `root` if `root/manifest.json` is missing (no manual step)."""
    synth: SynthConfig = field(default_factory=SynthConfig)
    """Generation knobs of the embedded benchmark."""
    sources: list[SourceConfig] = field(default_factory=default_sources)
    """The data mix: task files with weights or sample caps."""
    tasks: list[str] = field(default_factory=lambda: ["detection", "grounding", "spatial"])
    """Keep only sources of these tasks (det only, grounding only, spatial only, all)."""
    train_mode: TrainMode = "da"
    """Training answers: `da` direct answers, `ta` think-then-answer traces, `da+ta` both (each row twice)."""
    eval_mode: EvalMode = "da"
    """Answer mode of validation and test prompts."""
    batch_size: int = 4
    """Samples per training batch (prompts; GRPO expands each into G completions); a stage may override it."""
    eval_batch_size: int = 8
    """Samples per validation/test batch."""
    max_eval_samples: int = 0
    """Cap on validation and test samples per source after a shuffle seeded by `eval_seed`; 0 means all."""
    eval_seed: int = 0
    """Seed of the validation/test subset, independent of the run seed so all runs of a grid see the same samples."""
    num_workers: int = 0
    """DataLoader worker processes."""
    seed: int = 0
    """Offset of the data seed: shuffling and subsetting use `seed + run seed`, so a seed sweep varies the data order."""
    on_bad_sample: OnBadSample = "error"
    """Bad rows (malformed row, missing key, wrong box length or NaN, missing or undecodable frame or video): `error`
    raises naming the file, the row (and line) and the key; `skip` drops the row, counts it and logs a warning with
    the count and the first reasons. A file that cannot be read, has no rows or only bad rows, and an empty split,
    are errors either way."""
    load_depth: bool = False
    """Load per-frame depth maps into `Sample.depth` when the rows have them (forced on by `model.geometry: depth`)."""
    detection_classes: list[str] = field(default_factory=list)
    """Class list of the detection metric (mean F1 over it); empty means the embedded benchmark's categories.
    Real ScanNet data: set VG-LLM's class list (see `experiments/real/`)."""

    def __post_init__(self) -> None:
        valid = typing.get_args(Task)
        unknown = [t for t in self.tasks if t not in valid]
        if unknown:
            raise ValueError(f"data.tasks: unknown tasks {unknown}; valid: {', '.join(valid)}")
