"""The LightningDataModule: the data mix over task files, split datasets, and a collate that keeps targets."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lit3drft.data.config import DataConfig, SourceConfig
from lit3drft.data.media import load_sample
from lit3drft.data.prompts import CATEGORIES
from lit3drft.data.readers import read_records
from lit3drft.data.records import BadSampleError, Record, SkipCounter
from lit3drft.data.sample import TASKS, Sample
from lit3drft.data.synth import FORMAT_VERSION, generate, rerender_command
from lit3drft.data.tasks import (
    CLIP_THINKS,
    DATASET,
    description_think,
    scene_clip_listing_think,
    scene_listing_think,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class SampleDataset(Dataset):
    """Records of one split, each with its answer mode; ``__getitem__`` decodes the frames into a ``Sample``."""

    def __init__(self, entries: list[tuple[Record, str, str]], cfg: DataConfig, sources: dict[str, SourceConfig]):
        self.entries = entries  # (record, mode, id suffix)
        self.cfg = cfg
        self.sources = sources
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> Sample:
        rec, mode, suffix = self.entries[i]
        src = self.sources[rec.meta["source"]]
        return load_sample(rec, mode, media_root(self.cfg, src), src.image_size or None, self.cfg.load_depth, suffix)

    def __getitem__(self, i: int) -> Sample:
        for j in range(len(self)):
            try:
                return self.load((i + j) % len(self))
            except BadSampleError as e:
                if self.cfg.on_bad_sample != "skip":
                    raise
                self.skipped.add(e)  # undecodable media: log, count, and serve the next sample
        raise BadSampleError(f"every sample of the split is bad ({self.skipped.summary()})")


def media_root(cfg: DataConfig, src: SourceConfig) -> Path:
    """Where a source's images (VG-LLM) or ``<dataset>/<scene>.mp4`` videos (VSI-Bench) live."""
    if src.media_root:
        return Path(cfg.root) / src.media_root
    return Path(cfg.root) / "videos" if src.format == "vsibench" else Path(cfg.root)


def source_path(cfg: DataConfig, src: SourceConfig, split: str) -> Path | None:
    """The source's file for ``split``, or None when the source has no file for it."""
    if "{split}" not in src.path and src.split != split:
        return None
    return Path(cfg.root) / src.path.format(split=split)


def empty_split(cfg: DataConfig, sources: dict[str, SourceConfig], split: str) -> None:
    """An empty train split is an error, an empty val/test split a warning; both name the files and the filter."""
    files = [str(p) for s in sources.values() if (p := source_path(cfg, s, split)) is not None]
    msg = (f"the {split} split is empty: files read: {', '.join(files) or 'none'} (data.tasks={cfg.tasks}, "
           f"sources: {', '.join(sources) or 'none'} of {[s.name for s in cfg.sources]})")  # fmt: skip
    if split == "train":
        raise BadSampleError(msg)
    log.warning(msg)


def check_format_version(manifest: dict, root: Path, cfg: DataConfig) -> None:
    """Refuse an embedded benchmark rendered by another format version (a manifest without one is version 1).

    Raises:
        ValueError: naming the directory and how to re-render it.
    """
    version = manifest.get("format_version", 1)
    if version == FORMAT_VERSION:
        return
    what = "plain cuboids that no observer can tell apart" if version == 1 else "another generator"
    command = rerender_command(cfg.synth, root)
    how = f"delete {root} and run again: prepare_data re-renders it from data.synth (data.generate=true)"
    if command:
        how += f", or re-render it by hand: rm -r {root} && {command}"
    raise ValueError(
        f"{root}/manifest.json: the benchmark there is format version {version} ({what}); this code reads version "
        f"{FORMAT_VERSION}. To use it, {how}"
    )


def collate_samples(samples: list[Sample], collate_fn: Callable[[list[Sample]], dict] | None = None) -> dict[str, Any]:
    """``{"samples": [...], "targets": [...]}`` plus the model side's ``collate_fn(samples)`` when given."""
    batch: dict[str, Any] = {"samples": samples, "targets": [s.target for s in samples]}
    if collate_fn is not None:
        batch.update(collate_fn(samples))
    return batch


def _subset(rng: np.random.Generator, items: list, cap: int) -> list:
    order = rng.permutation(len(items))
    return [items[i] for i in (order[:cap] if cap > 0 else order)]


class LitDataModule(L.LightningDataModule):
    """Train/val/test datasets from ``cfg.sources``; generates the embedded benchmark under ``cfg.root`` if missing.

    Example:
        >>> from lit3drft.data.config import DataConfig  # doctest: +SKIP
        >>> dm = LitDataModule(DataConfig(root="data/synth3d"))  # doctest: +SKIP
        >>> dm.prepare_data(); dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> sorted(batch)  # doctest: +SKIP
        ['samples', 'targets']
    """

    def __init__(self, cfg: DataConfig, collate_fn: Callable[[list[Sample]], dict] | None = None):
        super().__init__()
        self.cfg = cfg
        self.collate_fn = collate_fn
        self.skipped = SkipCounter()
        self._scenes: dict[str, dict] = {}  # scene.json per scene name (think=listing)
        self.datasets: dict[str, SampleDataset] = {}
        for s in cfg.sources:
            if s.task not in TASKS:
                raise ValueError(f"data.sources[{s.name}].task={s.task!r}; valid: {', '.join(TASKS)}")

    def prepare_data(self) -> None:
        """Generate the embedded benchmark under ``root`` when its manifest is missing (``data.generate``).

        Refuses an embedded benchmark of another format version (also with ``data.generate`` false) and, unless
        ``data.generate`` is false (data used as is), one rendered with other ``data.synth`` knobs (compared after
        resolving the level).
        """
        root = Path(self.cfg.root)
        manifest = root / "manifest.json"
        if not manifest.exists():
            if self.cfg.generate:
                log.info("generating the embedded benchmark under %s", root)
                generate(self.cfg.synth, root)
            return
        stored = json.loads(manifest.read_text())
        if not self.cfg.generate and stored.get("dataset") != DATASET:
            return  # some other manifest of data used as is
        check_format_version(stored, root, self.cfg)
        if not self.cfg.generate:
            return
        wanted = json.loads(json.dumps(asdict(self.cfg.synth.resolved())))
        changed = sorted(k for k in wanted if stored.get("config", {}).get(k) != wanted[k])
        if changed:  # never train on a benchmark other than the one the config describes
            raise ValueError(
                f"{manifest} was generated with other data.synth settings ({', '.join(changed)}); "
                f"point data.root at a new directory, delete {root}, or set data.generate=false to use it as is"
            )

    @property
    def sources(self) -> dict[str, SourceConfig]:
        return {s.name: s for s in self.cfg.sources if s.task in self.cfg.tasks}

    def _scene(self, rec: Record) -> dict:
        """The ``scene.json`` of a row's scene (``think=listing``), read once; a missing one names its path."""
        name = str(rec.meta.get("scene_name", ""))
        if name not in self._scenes:
            path = Path(self.cfg.root) / "scenes" / name / "scene.json"
            if not name or not path.is_file():
                raise BadSampleError(f"{rec.meta.get('file', '?')}: row {rec.id}: think=listing or clip_* reads the scene's "
                                     f"objects from {path}, which does not exist (the embedded benchmark has one "
                                     "per scene; other data cannot use these thinks)")  # fmt: skip
            self._scenes[name] = json.loads(path.read_text())
        return self._scenes[name]

    def split_entries(self, split: str) -> list[tuple[Record, str, str]]:
        """(record, mode, id suffix) of a split after caps, weights and modes; deterministic per seed."""
        cfg = self.cfg
        entries: list[tuple[Record, str, str]] = []
        for k, src in enumerate(self.sources.values()):
            path = source_path(cfg, src, split)
            if path is None:
                continue
            recs = read_records(path, src.task, src.format, src.name, media_root(cfg, src), src.frames or 16,
                                cfg.on_bad_sample, self.skipped)  # fmt: skip
            if src.think == "description":
                recs = [description_think(r) for r in recs]
            elif src.think == "listing":
                recs = [scene_listing_think(r, self._scene(r), cfg.synth.min_visible_pixels) for r in recs]
            elif src.think in CLIP_THINKS:
                px = cfg.synth.min_visible_pixels
                recs = [scene_clip_listing_think(r, self._scene(r), px, src.think) for r in recs]
            if split != "train":
                # the evaluation subset depends on eval_seed only: every run of a grid, whatever its seed (and
                # whichever data.tasks it trains on: the source's index among all data.sources), is scored on the
                # same samples
                at = [s.name for s in cfg.sources].index(src.name)
                rng = np.random.default_rng([cfg.eval_seed, at, SPLITS.index(split)])
                cap = min(x for x in (src.max_samples, cfg.max_eval_samples) if x > 0) if (
                    src.max_samples or cfg.max_eval_samples) else 0  # fmt: skip
                mode = src.mode or cfg.eval_mode
                entries += [(r, mode, "") for r in sorted(_subset(rng, recs, cap), key=lambda r: r.id)]
                continue
            rng = np.random.default_rng([cfg.seed, k, SPLITS.index(split)])
            recs = _subset(rng, recs, src.max_samples)
            reps = math.floor(src.weight)
            recs = recs * reps + recs[: round((src.weight - reps) * len(recs))]
            modes = [src.mode] if src.mode else ["da", "ta"] if cfg.train_mode == "da+ta" else [cfg.train_mode]
            entries += [(r, m, f"@{m}" if len(modes) > 1 else "") for r in recs for m in modes]
        return entries

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, SPLITS) if stage else SPLITS:
            if split not in self.datasets:
                self.datasets[split] = SampleDataset(self.split_entries(split), self.cfg, self.sources)
                if not self.datasets[split].entries:
                    empty_split(self.cfg, self.sources, split)
        if self.skipped.count:
            log.warning("while reading rows: %s", self.skipped.summary())

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The training loader is stateful (torchdata): its position travels in Lightning's checkpoint, so
        ``--resume`` continues mid-epoch with the very next batch.

        Training order: a ``DistributedSampler`` seeded with ``data.seed + seed`` (epoch ``e`` is the permutation
        of seed ``+ e``), built here for the trainer's world size, so that rank ``r`` of ``W`` gets rows
        ``r, r + W, ...`` of the same permutation one process would use: ``W`` ranks with batch ``b`` see exactly
        the global batches of one process with batch ``W * b``. Lightning keeps a loader's own distributed
        sampler and calls ``set_epoch`` on it. Evaluation loaders keep the file order (Lightning shards them).
        """
        dataset = self.datasets[split]
        common = dict(
            num_workers=self.cfg.num_workers,
            collate_fn=functools.partial(collate_samples, collate_fn=self.collate_fn),
            persistent_workers=self.cfg.num_workers > 0,
        )
        if not shuffle:
            return DataLoader(dataset, batch_size=self.cfg.eval_batch_size, shuffle=False, **common)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.cfg.seed)
        # its own generator: creating the iterator (also after a resume) draws nothing from the global RNG
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return StatefulDataLoader(
            dataset, batch_size=self.cfg.batch_size, sampler=sampler, generator=generator, **common
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    @property
    def detection_classes(self) -> list[str]:
        """Class list of the detection metric: ``cfg.detection_classes``, else the embedded benchmark's categories.

        Fixed before any data is read, so every rank and every split averages F1 over the same classes.
        """
        return list(self.cfg.detection_classes) or sorted(self.cfg.synth.categories or CATEGORIES)
