"""Publishing deploy/: atomic swap, one folder per run key, manifest sha256s, no stale files, clean failures."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from pipeline import publish as pub
from pipeline.artifacts import sha256_file
from pipeline.errors import PipelineError


def _files(folder: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_stale_file_does_not_survive_and_manifest_matches(tmp_path: Path) -> None:
    root = tmp_path / "artifacts" / "tiny"
    a = _files(tmp_path / "a", {"model.onnx": b"onnx A", "model.ort": b"ort A", "report.json": b"{}"})
    deploy = pub.publish(root, "keyA", a, figures={"model.onnx": {"accuracy": 0.9}}, extra={"model": "tiny"})
    assert _listing(deploy) == ["manifest.json", "model.onnx", "model.ort", "report.json"]
    # Set B: export.mobile=false, so no model.ort; it must not be left over from set A.
    b = _files(tmp_path / "b", {"model.onnx": b"onnx B", "report.json": b"{\"b\": 1}"})
    deploy = pub.publish(root, "keyB", b)
    assert _listing(deploy) == ["manifest.json", "model.onnx", "report.json"]
    assert (deploy / "model.onnx").read_bytes() == b"onnx B"
    assert deploy.is_symlink() and os.readlink(deploy) == os.path.join("runs", "keyB")
    # Both runs are kept by key; neither overwrote the other.
    assert _listing(root / "runs") == ["keyA", "keyB"]
    assert (root / "runs" / "keyA" / "model.ort").read_bytes() == b"ort A"
    man = json.loads((deploy / "manifest.json").read_text())
    assert man["run_key"] == "keyB" and sorted(man["files"]) == ["model.onnx", "report.json"]
    for name, e in man["files"].items():
        assert e["sha256"] == sha256_file(deploy / name) and e["bytes"] == (deploy / name).stat().st_size
    man_a = pub.verify(root / "runs" / "keyA")
    assert man_a["files"]["model.onnx"]["figures"] == {"accuracy": 0.9} and man_a["model"] == "tiny"
    assert not [p for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_verify_catches_a_changed_file(tmp_path: Path) -> None:
    deploy = pub.publish(tmp_path / "r", "k", _files(tmp_path / "s", {"a.bin": b"1", "b.bin": b"2"}))
    pub.verify(deploy)
    (deploy / "a.bin").write_bytes(b"tampered")
    with pytest.raises(pub.PublishError, match="a.bin"):
        pub.verify(deploy)


def test_plain_deploy_folder_of_older_versions_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "r"
    legacy = _files(root / "deploy", {"model.ort": b"old", "model.onnx": b"old"})
    assert legacy
    deploy = pub.publish(root, "k1", _files(tmp_path / "s", {"model.onnx": b"new"}))
    assert deploy.is_symlink() and _listing(deploy) == ["manifest.json", "model.onnx"]
    assert _listing(root) == ["deploy", "runs"]


def test_republishing_a_key_replaces_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "r"
    pub.publish(root, "k", _files(tmp_path / "s1", {"x.bin": b"1", "y.bin": b"1"}))
    deploy = pub.publish(root, "k", _files(tmp_path / "s2", {"x.bin": b"2"}))
    assert _listing(deploy) == ["manifest.json", "x.bin"] and (deploy / "x.bin").read_bytes() == b"2"
    assert _listing(root / "runs") == ["k"]


@pytest.mark.parametrize("fail_at", [0, 1])
def test_full_disk_mid_publish_leaves_previous_deploy_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fail_at: int) -> None:
    root = tmp_path / "r"
    old = pub.publish(root, "old", _files(tmp_path / "s1", {"model.onnx": b"A", "model.ort": b"A"}))
    before = {n: (old / n).read_bytes() for n in _listing(old)}
    calls = []
    real = pub.copy_file

    def copy_then_fill_disk(src: Path, dst: Path) -> None:
        calls.append(dst.name)
        if len(calls) > fail_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(pub, "copy_file", copy_then_fill_disk)
    with pytest.raises(pub.PublishError) as ei:
        pub.publish(root, "new", _files(tmp_path / "s2", {"model.onnx": b"B", "report.json": b"B"}))
    msg = str(ei.value)
    assert isinstance(ei.value, PipelineError) and "free disk space" in msg and str(root) in msg
    assert {n: (old / n).read_bytes() for n in _listing(old)} == before
    assert os.readlink(root / "deploy") == os.path.join("runs", "old")
    assert _listing(root) == ["deploy", "runs"] and _listing(root / "runs") == ["old"]  # nothing half-published


def test_failed_republish_of_same_key_restores_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "r"
    pub.publish(root, "k", _files(tmp_path / "s1", {"m.bin": b"A"}))
    real_symlink = os.symlink

    def no_space(*a, **kw):  # the last step (the new symlink) fails: the folder swap must be undone
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pub.os, "symlink", no_space)
    with pytest.raises(pub.PublishError):
        pub.publish(root, "k", _files(tmp_path / "s2", {"m.bin": b"B"}))
    monkeypatch.setattr(pub.os, "symlink", real_symlink)
    assert (root / "deploy" / "m.bin").read_bytes() == b"A"
    pub.verify(root / "deploy")
    assert _listing(root / "runs") == ["k"]


def test_leftovers_of_a_killed_publish_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "r"
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (root / f"deploy.tmp-{dead}").mkdir(parents=True)
    (root / f"deploy.tmp-{dead}" / "model.onnx").write_bytes(b"half")
    pub.publish(root, "k", _files(tmp_path / "s", {"a.bin": b"1"}))
    assert _listing(root) == ["deploy", "runs"]


def test_bad_names_and_keys_are_refused(tmp_path: Path) -> None:
    src = _files(tmp_path / "s", {"a.bin": b"1"})
    with pytest.raises(pub.PublishError, match="run key"):
        pub.publish(tmp_path / "r", "../x", src)
    with pytest.raises(pub.PublishError, match="plain file names"):
        pub.publish(tmp_path / "r", "k", {"sub/a.bin": src["a.bin"]})
    with pytest.raises(pub.PublishError, match="missing"):
        pub.publish(tmp_path / "r", "k", {"b.bin": tmp_path / "nope"})


# -------------------------------------------------------------------------------------------- refused runs
def test_refusal_record_names_what_deploy_holds_and_the_next_publish_removes_it(tmp_path: Path) -> None:
    root = tmp_path / "artifacts" / "tiny"
    assert pub.deployed_run(root) is None
    pub.publish(root, "keyA", _files(tmp_path / "a", {"model.onnx": b"A"}), extra={"model": "tiny", "dataset": "d"})
    before = {p.name: p.read_bytes() for p in (root / "deploy").iterdir()}
    path = pub.record_refusal(root, {"reason": "no variant meets the gate", "variants": [{"name": "int8"}]})
    assert path == root / pub.REFUSED and path.parent == (root / "deploy").parent
    rec = json.loads(path.read_text())
    assert rec["reason"] == "no variant meets the gate" and rec["variants"] == [{"name": "int8"}]
    assert rec["deploy_still_holds"] == {"run_key": "keyA", "model": "tiny", "dataset": "d",
                                         "folder": os.path.join("runs", "keyA")}
    assert {p.name: p.read_bytes() for p in (root / "deploy").iterdir()} == before  # deploy/ untouched
    pub.publish(root, "keyB", _files(tmp_path / "b", {"model.onnx": b"B"}))
    assert not (root / pub.REFUSED).exists()


def test_a_refused_run_leaves_deploy_untouched_and_writes_refused_json(e2e_copy) -> None:
    """A published run, then the same model with ranks cut to 2 % and no finetuning: the gate refuses every variant,
    the run raises (exit 2 from the CLI), deploy/ is byte for byte the earlier run's, run.log names that run, and
    refused.json holds the reason and each variant's checks; the next successful run removes it."""
    from pipeline.heads.gate import FidelityGateError
    from pipeline.runner import run
    from tests.pipeline.conftest import fast_config

    cfg, first, root = e2e_copy
    deploy = root / "deploy"
    target = os.readlink(deploy) if deploy.is_symlink() else None  # the fixture's copy may hold a plain folder
    before = {p.name: sha256_file(p) for p in deploy.iterdir()}
    broken = fast_config(root.parent, "factorize.selector=fixed", "factorize.ratio=0.02", "factorize.min_channels=1",
                         "factorize.min_mac_saving=0", "finetune.epochs=0", "export.mobile=false")
    with pytest.raises(FidelityGateError, match="nothing ships"):
        run(broken, progress=False)
    assert (os.readlink(deploy) if deploy.is_symlink() else None) == target
    assert {p.name: sha256_file(p) for p in deploy.iterdir()} == before
    rec = json.loads((root / pub.REFUSED).read_text())
    held = json.loads((deploy / "manifest.json").read_text())["run_key"]
    assert rec["deploy_still_holds"]["run_key"] == held and "nothing ships" in rec["reason"]
    names = {v["name"] for v in rec["variants"]}
    assert {"finetuned", "int8"} <= names and not any(v["passed"] for v in rec["variants"])
    for v in rec["variants"]:
        assert v["checks"] and all({"metric", "value", "bound", "passed"} <= set(c) for c in v["checks"])
    assert rec["refused_run_key"] != held
    log = (root / "run.log").read_text()
    assert f"deploy/ still holds the earlier run {held}" in log
    # The next successful publish (the first config again, every stage cached) removes the record.
    again = run(cfg, progress=False)
    assert again.deploy_dir is not None and not (root / pub.REFUSED).exists()
