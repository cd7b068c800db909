"""Runs the stages in order with a content-hash cache, resume, a manifest, a run lock and atomic stage folders.

A stage writes into ``NN-<stage>-<key>.tmp-<pid>/``; only when it finished and wrote its completion marker
``artifact.json`` is that folder renamed to ``NN-<stage>-<key>/``. A folder without the marker is never reused,
so a killed run resumes from the last complete stage.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pipeline.stages  # noqa: F401  (registers the stages, in run order)
from benchmarks.latency import check_batch_fits
from benchmarks.targets import TARGETS
from pipeline import __version__
from exporters.ort_mobile import get_mobile_target
from pipeline.artifacts import atomic_write_json, sha256_file, sha256_files, sha256_json
from pipeline.config import PipelineConfig, to_dict
from pipeline.data import DATASETS, check_split_sizes
from pipeline.entropy.coders import CODERS
from pipeline.errors import ConfigError, InputError, LockError, PipelineError, UserCodeError
from pipeline.factorize.formats import FORMATS
from pipeline.factorize.ranks import SELECTORS
from pipeline.finetune import FINETUNE_METHODS
from pipeline.logs import ROOT
from pipeline.models import MODELS
from pipeline.heads.gate import FidelityGateError
from pipeline.models.user_code import time_limit
from pipeline.publish import deployed_run, publish, record_refusal
from pipeline.spec import DataSpec, ModelSpec
from pipeline.stage_api import STAGES, Artifact, StageContext, StageSpec, input_stage, read_config
from pipeline.validate_args import check_input_file

MARKER = "artifact.json"
log = logging.getLogger(ROOT)


@dataclass
class StageRecord:
    """What happened to one stage in this run (for the manifest and the CLI summary)."""

    artifact: Artifact
    status: str  # "ran" | "cached"
    seconds: float
    started: str
    ended: str
    parent_key: str | None
    input_sha256: str | None
    config: dict[str, Any]


@dataclass
class RunResult:
    """The outcome of :func:`run`."""

    root: Path
    records: list[StageRecord]
    deploy_dir: Path | None

    def artifact(self, stage: str) -> Artifact:
        """The artifact of a stage of this run."""
        for r in self.records:
            if r.artifact.stage == stage:
                return r.artifact
        raise KeyError(stage)


def stage_names() -> list[str]:
    """Registered stages in run order."""
    return STAGES.names()


def input_fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """Content identity of the run's inputs (model file, weights, data files), part of every stage key."""
    fp: dict[str, Any] = {**ModelSpec.parse(cfg.model).fingerprint(), **DataSpec.parse(cfg.data).fingerprint(),
                          "seed": cfg.seed, "device": cfg.device}
    if cfg.weights:
        check_input_file(cfg.weights, "weights file", "pass an existing .safetensors/.pt file to --weights")
        fp["weights_sha256"] = sha256_file(cfg.weights)
    return fp


def upstream_sha(spec: StageSpec, done: dict[str, Artifact]) -> str | None:
    """One hash over the output hashes of the artifacts ``spec`` takes (its declared ``inputs``), in order.

    Not only the immediate parent: benchmark reads quantize's int8 model and entropy-code's container as well as
    export's output, so its key must change when any of them changes (keying on the parent alone once reused a stale
    report). An input ``"stage/file"`` contributes that file's hash only. A stage sees only its declared inputs
    (:func:`declared_inputs`), so an undeclared one cannot matter.
    """
    if not spec.inputs:
        return None
    parts = []
    for entry in spec.inputs:
        art = done[input_stage(entry)]
        parts.append([entry, sha256_file(art.dir / entry.split("/", 1)[1]) if "/" in entry else art.sha256])
    return sha256_json(parts)


def declared_inputs(spec: StageSpec, done: dict[str, Artifact]) -> dict[str, Artifact]:
    """The artifacts among ``done`` (the earlier stages of this run) that ``spec`` declares as its inputs."""
    return {name: done[name] for name in spec.input_stages}


def stage_key(spec: StageSpec, cfg: PipelineConfig, fingerprint: dict[str, Any], input_sha: str | None) -> str:
    """``sha256(stage, stage version, package version, declared config reads, inputs, upstream output hashes)[:12]``.

    The config part is exactly what the stage declares it reads (``StageSpec.reads``): a section such as
    ``"finetune"`` or a key of another stage's section such as ``"factorize.align"``. ``input_sha`` is
    :func:`upstream_sha` of the stage's declared input artifacts (None for the first stage).
    """
    return sha256_json(
        {
            "stage": spec.name,
            "version": spec.version,
            "package": __version__,
            "config": read_config(spec, cfg),
            "inputs": fingerprint,
            "parent": input_sha,
        }
    )[:12]


@contextlib.contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the model's artifacts folder so two runs never write the same folders at once."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LockError(
                f"artifacts folder {str(root)!r} is in use by {holder}; wait for that run to finish, "
                f"or use another --artifacts folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            f.seek(0)
            f.truncate()
        f.close()


def _read_artifact(folder: Path, spec: StageSpec, index: int, key: str) -> Artifact | None:
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        rec = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    files = rec.get("files", [])
    if rec.get("key") != key or not all((folder / f).is_file() for f in files):
        return None
    return Artifact(spec.name, index, key, folder, files, rec.get("metrics", {}), rec.get("sha256", ""))


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _clean_stale_tmp(root: Path) -> None:
    """Remove temp stage folders left by killed runs (we hold the lock, so none is in use)."""
    for p in root.glob("*.tmp-*"):
        if p.is_dir():
            _remove_tree(p)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _setup_file_log(root: Path) -> logging.Handler:
    handler = logging.FileHandler(root / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:  # library use (no configure_logging): run.log still records every stage
        log.setLevel(logging.INFO)
    return handler


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise InputError(
            f"artifacts folder {str(root)!r} is not writable ({e.strerror}); choose a writable --artifacts folder"
        ) from None


def run(
    cfg: PipelineConfig,
    only: str | None = None,
    from_stage: str | None = None,
    force: bool = False,
    progress: bool = True,
    upto: str | None = None,
) -> RunResult:
    """Run the pipeline for ``cfg``.

    Args:
        cfg: the validated configuration.
        only: run just this stage (earlier stages must already be complete in the cache).
        from_stage: rerun this stage and every later one even if cached.
        force: rerun every stage.
        progress: show progress bars.
        upto: stop after this stage (used by tests and ``--upto``).

    Returns:
        RunResult with one record per stage that was run or reused.
    """
    names = stage_names()
    for opt, val in (("--only", only), ("--from", from_stage), ("--upto", upto)):
        if val is not None and val not in names:
            raise ConfigError(f"unknown stage {val!r} for {opt}; known stages: {', '.join(names)}")
    # Validate the names the config refers to before any work (clear errors, nothing written).
    _validate_names(cfg)
    _check_stage_plan(cfg, names, only, upto)
    fingerprint = input_fingerprint(cfg)

    root = Path(cfg.artifacts) / ModelSpec.parse(cfg.model).slug
    _check_writable(root)
    with run_lock(root):
        handler = _setup_file_log(root)
        start = time.monotonic()
        try:
            with time_limit(cfg.user_code_timeout_s):
                result = _run_locked(cfg, root, names, fingerprint, only, from_stage, force, progress, upto)
        except BaseException as e:
            # The reason reaches run.log too (not only the terminal), in one line.
            why = "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else f"{type(e).__name__}: {e}"
            log.error("run failed after %.1f s: %s", time.monotonic() - start, str(why).splitlines()[0] if why else why)
            raise
        else:
            log.info("run complete in %.1f s; deliverables: %s", time.monotonic() - start,
                     result.deploy_dir if result.deploy_dir is not None else "(none: the run stopped before publishing)")
            return result
        finally:
            log.removeHandler(handler)
            handler.close()


#: the lowest ONNX opset whose DequantizeLinear takes a per-channel ``axis`` (the quantize stage's QDQ weights)
QDQ_MIN_OPSET = 13


def _stages_to_run(names: list[str], only: str | None, upto: str | None) -> list[str]:
    """The stages this run executes or reuses, in order (``--only`` and ``--upto`` cut the list)."""
    if only is not None:
        return [only]
    return names[: names.index(upto) + 1] if upto else list(names)


def _check_stage_plan(cfg: PipelineConfig, names: list[str], only: str | None, upto: str | None) -> None:
    """Settings that only some stages cannot work with, refused before any work when those stages will run."""
    planned = _stages_to_run(names, only, upto)
    if "quantize" in planned and cfg.export.opset < QDQ_MIN_OPSET:
        raise ConfigError(
            f"config key 'export.opset': {cfg.export.opset} is too old for the quantize stage: QDQ "
            f"DequantizeLinear with per-channel axis needs opset >= {QDQ_MIN_OPSET}: use export.opset "
            f"{QDQ_MIN_OPSET}-18, or stop before quantize with --upto export"
        )
    if "benchmark" in planned:
        # A lower bound of the timed input (1 channel, the smallest accepted side unless the size is set): a batch
        # that cannot fit even then is refused now, not after every other stage ran. The stage checks the real size.
        hw = cfg.dataset.input_size or (4, 4)
        check_batch_fits(cfg.benchmark.batch, (1, *hw))


def _validate_names(cfg: PipelineConfig) -> None:
    model = ModelSpec.parse(cfg.model)
    if model.is_file:
        model.check_exists()
    else:
        MODELS.get(model.name)
    DATASETS.get(DataSpec.parse(cfg.data).name)
    d = cfg.dataset
    check_split_sizes(cfg.data, (d.train_size, d.val_size, d.test_size))
    if cfg.factorize.method != "auto":
        FORMATS.get(cfg.factorize.method)
    if cfg.factorize.linear_method != "none":
        FORMATS.get(cfg.factorize.linear_method)
    SELECTORS.get(cfg.factorize.selector)
    if cfg.finetune.method != "none":
        FINETUNE_METHODS.get(cfg.finetune.method)
    if cfg.entropy.coder != "auto":
        CODERS.get(cfg.entropy.coder)
    TARGETS.get(cfg.benchmark.target)
    get_mobile_target(cfg.export.mobile_target)


def _run_locked(
    cfg: PipelineConfig,
    root: Path,
    names: list[str],
    fingerprint: dict[str, Any],
    only: str | None,
    from_stage: str | None,
    force: bool,
    progress: bool,
    upto: str | None,
) -> RunResult:
    _clean_stale_tmp(root)
    records: list[StageRecord] = []
    inputs: dict[str, Artifact] = {}
    cache: dict[str, Any] = {}
    parent: Artifact | None = None
    rerun_from = names.index(from_stage) if from_stage else (0 if force else len(names))
    last = names.index(upto) if upto else len(names) - 1
    if only is not None:
        last = names.index(only)
    for index, name in enumerate(names):
        if index > last:
            break
        spec = STAGES.get(name)
        given = declared_inputs(spec, inputs)
        key = stage_key(spec, cfg, fingerprint, upstream_sha(spec, inputs))
        folder = root / f"{index:02d}-{name}-{key}"
        existing = _read_artifact(folder, spec, index, key)
        must_run = index >= rerun_from or existing is None
        if only is not None and name != only:
            if existing is None:
                raise PipelineError(
                    f"--only {only}: earlier stage {name!r} has no complete artifact for this config; "
                    f"run without --only first"
                )
            must_run = False
        elif only is not None:
            must_run = True  # --only STAGE always reruns that stage
        started = _now()
        t0 = time.perf_counter()
        if must_run:
            log.info("stage %s: running (key %s)", name, key)
            try:
                art = _execute(spec, cfg, root, folder, index, key, given, cache, progress)
            except FidelityGateError as e:
                _refused(root, cfg, name, key, e)
                raise
            status = "ran"
        else:
            assert existing is not None
            log.info("stage %s: cached (%s)", name, folder.name)
            art = existing
            status = "cached"
        records.append(
            StageRecord(
                artifact=art,
                status=status,
                seconds=round(time.perf_counter() - t0, 3),
                started=started,
                ended=_now(),
                parent_key=parent.key if parent else None,
                input_sha256=parent.sha256 if parent else None,
                config=read_config(spec, cfg),
            )
        )
        inputs[name] = art
        parent = art
        _write_manifest(root, cfg, records)
    deploy = None
    if upto is None and only is None or (only == names[-1]):
        deploy = _publish(root, cfg, records)
        _write_manifest(root, cfg, records)
    return RunResult(root, records, deploy)


def _execute(
    spec: StageSpec,
    cfg: PipelineConfig,
    root: Path,
    folder: Path,
    index: int,
    key: str,
    inputs: dict[str, Artifact],
    cache: dict[str, Any],
    progress: bool,
) -> Artifact:
    tmp = root / f"{folder.name}.tmp-{os.getpid()}"
    _remove_tree(tmp)
    tmp.mkdir(parents=True)
    ctx = StageContext(cfg=cfg, out_dir=tmp, inputs=dict(inputs), log=log, progress=progress, cache=cache,
                       reads=spec.reads_for(cfg))
    try:
        out = spec.fn(ctx)
        missing = [f for f in out.files if not (tmp / f).is_file()]
        if missing:
            raise PipelineError(f"stage {spec.name} did not write the files it announced: {missing}")
        sha = sha256_files(tmp, out.files)
        art = Artifact(spec.name, index, key, folder, list(out.files), out.metrics, sha)
        atomic_write_json(tmp / MARKER, art.to_json())
        if folder.exists():  # --force / --from: replace the old complete folder
            trash = root / f"{folder.name}.tmp-old-{os.getpid()}"
            os.replace(folder, trash)
            os.replace(tmp, folder)
            _remove_tree(trash)
        else:
            os.replace(tmp, folder)
    except OSError as e:
        _remove_tree(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
            raise InputError(
                f"stage {spec.name}: cannot write to {str(root)!r} ({e.strerror}); free space or fix permissions, "
                f"then rerun: completed stages are kept and reused"
            ) from None
        raise
    except UserCodeError as e:
        _remove_tree(tmp)
        # Say at which stage the user's code failed (a stage may rebuild the model from its file).
        msg = str(e)
        raise UserCodeError(msg if msg.startswith("stage ") else f"stage {spec.name}: {msg}") from e
    except BaseException:
        _remove_tree(tmp)
        raise
    return art


def _write_manifest(root: Path, cfg: PipelineConfig, records: list[StageRecord]) -> None:
    manifest = {
        "package_version": __version__,
        "model": cfg.model,
        "dataset": cfg.data,
        "config": to_dict(cfg),
        "stages": [
            {
                "stage": r.artifact.stage,
                "folder": r.artifact.dir.name,
                "key": r.artifact.key,
                "parent_key": r.parent_key,
                "input_sha256": r.input_sha256,
                "output_sha256": r.artifact.sha256,
                "config": r.config,
                "metrics": r.artifact.metrics,
                "status": r.status,
                "seconds": r.seconds,
                "start": r.started,
                "end": r.ended,
            }
            for r in records
        ],
    }
    atomic_write_json(root / "manifest.json", manifest)


#: report variant -> the deploy file it measured (figures in deploy/manifest.json)
_FIGURE_FILES = {"finetuned": "model.onnx", "int8": "model.int8.onnx", "unpacked": "weights.lrdc"}


def deliverable_files(records: list[StageRecord]) -> dict[str, Path]:
    """``{deploy name: stage file}`` for every declared deliverable that exists, in run order.

    A later stage's (or a later entry's) file for the same deploy name wins: quantize's baked ``model.baked.onnx``
    ships as ``model.onnx`` instead of export's unbaked one when ``export.bake_preprocessing`` made it.
    """
    files: dict[str, Path] = {}
    for r in records:
        for src, dst in STAGES.get(r.artifact.stage).deliverables.items():
            p = r.artifact.dir / src
            if p.is_file():
                files[dst] = p
    return files


def _figures(records: list[StageRecord], files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``{deploy name: report figures measured on that file}`` from the benchmark's report.json and mobile.json."""
    figures: dict[str, dict[str, Any]] = {}
    report = files.get("report.json")
    if report is not None:
        for v in json.loads(report.read_text()).get("variants", []):
            name = _FIGURE_FILES.get(v.get("name"))
            if name in files:
                lat = v.get("latency_ms") or {}
                timing = {"latency_p50_ms": lat.get("p50"), "latency_p90_ms": lat.get("p90")}
                figures[name] = {"report_variant": v["name"], "accuracy": v.get("accuracy"),
                                 "size_bytes": v.get("size_bytes")}
                # a mobile-* target timed the shipped .ort: its latency belongs to that file
                timed = lat.get("timed_file") if lat.get("timed_file") in files else name
                figures.setdefault(timed, {}).update({**timing, "report_variant": v["name"]})
    for r in records:
        mobile = r.artifact.dir / "mobile.json"
        if mobile.is_file():
            for ort_name, e in json.loads(mobile.read_text()).get("ort", {}).items():
                if ort_name in files:
                    figures.setdefault(ort_name, {})["usability"] = {
                        ep: s.get("supported_pct_fixed_shapes") for ep, s in (e.get("usability") or {}).items()}
    return figures


def _refused(root: Path, cfg: PipelineConfig, stage: str, key: str, error: FidelityGateError) -> None:
    """The fidelity gate refused every variant: nothing is published; say which earlier run ``deploy/`` still
    holds and write ``refused.json`` next to it (removed by the next successful publish)."""
    held = deployed_run(root)
    where = (f"deploy/ still holds the earlier run {held['run_key']} ({held['model']} on {held['dataset']}, "
             f"{held['folder']})" if held else "no earlier run was published, so there is no deploy/")
    record = {"format": "lowrank-deploy refusal 1", "refused_run_key": key, "stage": stage, "model": cfg.model,
              "dataset": cfg.data, "max_drop": cfg.benchmark.max_drop, "reason": str(error),
              "variants": error.verdicts, "time": _now()}
    try:
        path = record_refusal(root, record)
    except PipelineError as e:  # the refusal itself must still reach the user
        log.error("refused: nothing published; %s; refused.json could not be written: %s", where, e)
        return
    log.error("refused by the fidelity gate: nothing published; %s; why and every variant's fidelity: %s", where,
              path)


def _publish(root: Path, cfg: PipelineConfig, records: list[StageRecord]) -> Path:
    """Publish the run's deliverables as ``runs/<benchmark key>/`` with a manifest; swap ``deploy`` to point at it.

    The key is the last stage's cache key, which hashes every upstream output and the dataset, so two datasets or
    configs of one model keep their own run folder. See :mod:`pipeline.publish` (atomic, PublishError on OSError).
    """
    files = deliverable_files(records)
    extra = {"model": cfg.model, "dataset": cfg.data, "package_version": __version__}
    return publish(root, records[-1].artifact.key, files, figures=_figures(records, files), extra=extra)


class _CurrentStderr(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is at each record, not the one at set-up: a caller (a notebook,
    a test harness) that swaps or closes stderr later never makes logging write to a closed file."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def configure_logging(verbose: bool = False) -> None:
    """Logs go to stderr (and to ``run.log`` in the run folder while a run is active)."""
    if not log.handlers or all(isinstance(h, logging.FileHandler) for h in log.handlers):
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        log.addHandler(h)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
