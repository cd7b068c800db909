"""What a stage is: a registered function ``fn(ctx) -> StageOutput`` plus the records the runner keeps about it.

Kept apart from ``stages.py`` so the runner, the CLI's ``list`` and the tests can import it without torch-heavy code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.config import PipelineConfig
from pipeline.registry import Registry


@dataclass
class Artifact:
    """A completed stage's output: its folder, the files it produced, metrics and the content hash of the files."""

    stage: str
    index: int
    key: str
    dir: Path
    files: list[str]
    metrics: dict[str, Any]
    sha256: str

    def path(self, name: str) -> Path:
        """Absolute path of one of this artifact's files."""
        return self.dir / name

    def to_json(self) -> dict[str, Any]:
        """JSON record (the completion marker ``artifact.json`` and the manifest use it)."""
        return {
            "stage": self.stage,
            "index": self.index,
            "key": self.key,
            "files": sorted(self.files),
            "metrics": self.metrics,
            "sha256": self.sha256,
        }


@dataclass
class StageOutput:
    """What a stage function returns: the files it wrote into ``ctx.out_dir`` and its metrics."""

    files: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage may read: the config, earlier artifacts, its own output folder, shared caches."""

    cfg: PipelineConfig
    out_dir: Path
    inputs: dict[str, Artifact]
    log: logging.Logger
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    def data(self):  # -> DatasetSplits
        """The run's dataset, loaded once per run and shared between stages."""
        if "data" not in self.cache:
            from pipeline.data import load_dataset

            self.cache["data"] = load_dataset(self.cfg.data, seed=self.cfg.seed)
        return self.cache["data"]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage: its function, the config section it reads, and a version bumped when its output changes."""

    name: str
    fn: Callable[[StageContext], StageOutput]
    section: str
    version: int
    deliverables: dict[str, str]  # file in the stage folder -> name in deploy/


STAGES: Registry[StageSpec] = Registry("stage")


def stage(name: str, section: str, version: int = 1, deliverables: dict[str, str] | None = None):
    """Decorator registering a stage function under ``name`` (order of registration = run order)."""

    def deco(fn: Callable[[StageContext], StageOutput]) -> Callable[[StageContext], StageOutput]:
        STAGES.add(name, StageSpec(name, fn, section, version, dict(deliverables or {})))
        return fn

    return deco
