"""Publishing a run's deliverables: staged, fsynced, then swapped in atomically; one folder per run key.

Layout under the model's artifacts folder ``root``::

    runs/<key>/            every deliverable of the run with that key, plus manifest.json
    deploy -> runs/<key>   a symlink to the last published run

Why a symlink: replacing a symlink with ``os.replace`` is one atomic ``rename(2)`` on Linux, so a reader sees the
old set or the new set of files, never a mix, and no file of an earlier run survives in ``deploy/`` (the whole
folder changes). Runs of other datasets or configs of the model keep their own ``runs/<key>/``.

Steps: copy every file into ``deploy.tmp-<pid>/`` next to ``deploy`` (fsync each), write ``manifest.json`` (sha256
and size per file, the report figures that belong to it, the run key), fsync the folder, rename it to
``runs/<key>`` (a previous folder of that key is moved aside first and removed after), then swap the symlink. A
``deploy/`` left as a plain folder by older versions is moved aside and removed once the symlink is in place. Any
OSError (a full disk, permissions) removes what this publish staged and raises :class:`PublishError`; the
previous ``deploy`` is untouched.

A run the fidelity gate refuses publishes nothing: ``deploy`` keeps pointing at the earlier run, and
:func:`record_refusal` writes ``refused.json`` next to it (why, every candidate's fidelity checks, which run
``deploy`` still holds), so a reader of the folder sees that the newest attempt did not ship. The next successful
publish removes it.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

from pipeline.artifacts import atomic_write_json, sha256_file
from pipeline.errors import PipelineError

MANIFEST = "manifest.json"
#: written next to deploy/ by a run the fidelity gate refused; removed by the next successful publish
REFUSED = "refused.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TMP_RE = re.compile(r"^(?:deploy\.tmp|deploy\.old|\.run\.old|\.link\.tmp)-(\d+)(?:-.*)?$")


class PublishError(PipelineError):
    """Publishing ``deploy/`` failed; the previous deliverables are intact."""


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder if present (never follows a symlink into its target)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(root: Path) -> list[str]:
    """Remove staging leftovers of publishes whose process is gone (a kill mid-publish). Returns their names."""
    removed = []
    for base in (root, root / "runs"):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            m = _TMP_RE.match(p.name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                _remove(p)
                removed.append(p.name)
    return sorted(removed)


def deployed_run(root: str | Path, link_name: str = "deploy") -> dict[str, Any] | None:
    """What ``root/deploy`` holds now: ``{"run_key", "model", "dataset", "folder"}`` from its manifest, or None
    when nothing was published yet (or the manifest cannot be read)."""
    folder = Path(root) / link_name
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    target = os.readlink(folder) if folder.is_symlink() else link_name
    return {"run_key": man.get("run_key"), "model": man.get("model"), "dataset": man.get("dataset"),
            "folder": target}


def record_refusal(root: str | Path, record: Mapping[str, Any], link_name: str = "deploy") -> Path:
    """Write ``root/refused.json``: ``record`` (reason, variants and their fidelity, the refused run's key) plus
    ``deploy_still_holds`` (:func:`deployed_run`). ``deploy`` itself is not touched.

    Raises:
        PublishError: the file cannot be written (the disk is full, permissions).
    """
    root = Path(root)
    path = root / REFUSED
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {**dict(record), "deploy_still_holds": deployed_run(root, link_name)})
    except OSError as e:
        raise _error(e, path, root) from None
    return path


def copy_file(src: Path, dst: Path) -> None:
    """Copy one deliverable and fsync it (a separate function so tests can make it fail like a full disk)."""
    shutil.copyfile(src, dst)
    _fsync_file(dst)


def build_manifest(folder: Path, key: str, figures: Mapping[str, Mapping[str, Any]] | None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``manifest.json`` content for the files in ``folder``: sha256 + size each, their figures, the run key."""
    figures = figures or {}
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name == MANIFEST or not p.is_file():
            continue
        files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size, "figures": dict(figures.get(p.name, {}))}
    return {"format": "lowrank-deploy deploy manifest 1", "run_key": key, **dict(extra or {}), "files": files}


def verify(folder: str | Path) -> dict[str, Any]:
    """Check a published folder against its manifest (every file listed, present, same size and sha256).

    Raises:
        PublishError: naming each mismatching, missing or unlisted file.
    """
    folder = Path(folder)
    man = json.loads((folder / MANIFEST).read_text())
    problems = []
    for name, e in man["files"].items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{name}: missing")
        elif p.stat().st_size != e["bytes"] or sha256_file(p) != e["sha256"]:
            problems.append(f"{name}: content differs from the manifest")
    extra = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in man["files"])
    problems += [f"{n}: not in the manifest" for n in extra]
    if problems:
        raise PublishError(f"{folder}: deliverables do not match {MANIFEST}: " + "; ".join(problems)
                           + "; rerun the pipeline to publish them again")
    return man


def _error(e: OSError, path: Path, root: Path) -> PublishError:
    why = e.strerror or str(e)
    fix = ("free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "fix the folder's permissions" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
           else "check the file system")
    return PublishError(f"publish: cannot write {path} ({why}); {fix} under {root}, then rerun: completed stages are "
                        "reused and the previous deploy/ is unchanged")


def _rollback(stage: Path, final: Path, aside: Path, link: Path, legacy: Path, tmp_link: Path, fresh: bool) -> None:
    """Undo a failed publish: the previous run folder and deploy/ come back as they were."""
    _remove(stage)
    _remove(tmp_link)
    if fresh and not (link.is_symlink() and Path(os.readlink(link)).name == final.name):
        _remove(final)  # a key published for the first time: no trace of it unless deploy already points at it
    elif aside.exists():  # the new folder may or may not have landed: the old one of that key wins
        _remove(final)
        os.replace(aside, final)
    if legacy.exists() and not link.exists():
        os.replace(legacy, link)


def publish(root: str | Path, key: str, files: Mapping[str, str | Path],
            figures: Mapping[str, Mapping[str, Any]] | None = None, extra: Mapping[str, Any] | None = None,
            link_name: str = "deploy") -> Path:
    """Publish ``files`` (``{shipped name: source path}``) as ``root/runs/<key>/`` and point ``root/deploy`` at it.

    Args:
        root: the model's artifacts folder.
        key: the run key (e.g. the last stage's cache key, or a hash of model + dataset + config).
        files: every deliverable; names are plain file names, distinct, not ``manifest.json``.
        figures: ``{shipped name: {figure: value}}``, the report figures measured on that file.
        extra: further manifest fields (model, dataset, package version); keep them deterministic.
        link_name: the symlink's name.

    Returns:
        The ``root/deploy`` path (a symlink to ``runs/<key>``).

    Raises:
        PublishError: a bad key or file name, a missing source, or an OSError while writing (nothing half-published).
    """
    root = Path(root)
    if not _KEY_RE.match(key):
        raise PublishError(f"publish: run key {key!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    bad = [n for n in files if Path(n).name != n or n in (MANIFEST, "", ".", "..")]
    if bad:
        raise PublishError(f"publish: deliverable names must be plain file names other than {MANIFEST}: {bad}")
    missing = [str(p) for p in files.values() if not Path(p).is_file()]
    if missing:
        raise PublishError(f"publish: deliverables missing: {missing}; rerun the stage that writes them")
    pid = os.getpid()
    link = root / link_name
    runs = root / "runs"
    stage = root / f"{link_name}.tmp-{pid}"
    final = runs / key
    aside = runs / f".run.old-{pid}-{key}"
    legacy = root / f"{link_name}.old-{pid}"
    tmp_link = root / f".link.tmp-{pid}"
    path = stage
    fresh = not final.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        clean_stale(root)
        runs.mkdir(exist_ok=True)
        _remove(stage)
        stage.mkdir()
        for name in sorted(files):
            path = stage / name
            copy_file(Path(files[name]), path)
        path = stage / MANIFEST
        atomic_write_json(path, build_manifest(stage, key, figures, extra))
        _fsync_dir(stage)
        path = final
        if final.exists():  # republishing a key: move the old folder aside, put the new one in its place
            os.replace(final, aside)
        os.replace(stage, final)
        _fsync_dir(runs)
        path = link
        _remove(tmp_link)
        os.symlink(os.path.join("runs", key), tmp_link)
        if link.is_dir() and not link.is_symlink():  # a plain deploy/ folder written by older versions
            os.replace(link, legacy)
        os.replace(tmp_link, link)
        _fsync_dir(root)
    except OSError as e:
        _rollback(stage, final, aside, link, legacy, tmp_link, fresh)
        raise _error(e, path, root) from None
    _remove(legacy)
    _remove(aside)
    _remove(root / REFUSED)  # this run shipped: an earlier refusal no longer describes deploy/
    return link
