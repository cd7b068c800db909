"""CLI: listing, clear errors with non-zero exit codes, nothing half-written on bad input."""
from __future__ import annotations

import pytest

from pipeline.cli import main


@pytest.mark.parametrize("what, expect", [
    ("stages", "benchmark"), ("formats", "tucker2"), ("models", "vgg11"), ("datasets", "digits"),
    ("targets", "cpu"), ("selectors", "energy"), ("coders", "zstd"), ("methods", "kd"),
])
def test_list(what, expect, capsys):
    assert main(["list", what]) == 0
    assert expect in capsys.readouterr().out.split()


@pytest.mark.parametrize("args, match", [
    (["--model", "alexnet"], "unknown model 'alexnet'; known models: "),
    (["--model", "tiny", "--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "tiny", "--set", "factorize.method=svd3"], "unknown format 'svd3'"),
    (["--model", "tiny", "--set", "factorize.selector=magic"], "unknown selector 'magic'"),
    (["--model", "tiny", "--set", "finetune.method=magic"], "unknown finetune method"),
    (["--model", "tiny", "--set", "entropy.coder=lzma"], "unknown coder 'lzma'"),
    (["--model", "tiny", "--set", "benchmark.target=gpu9"], "unknown target 'gpu9'"),
    (["--model", "tiny", "--weights", "no/such/file.safetensors"], "no/such/file.safetensors"),
    (["--model", "no/such/model.py:make"], "no/such/model.py"),
    (["--model", "tiny", "--config", "no/such.yaml"], "no/such.yaml"),
])
def test_bad_input_exits_nonzero_and_writes_nothing(args, match, tmp_path, capsys):
    root = tmp_path / "art"
    code = main(["run", "--artifacts", str(root), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code != 0
    assert match in err
    # nothing that looks like a complete stage was written
    assert not list(root.rglob("artifact.json"))


def test_mismatched_checkpoint_names_keys(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    ck = tmp_path / "w.safetensors"
    save_file({"bogus.weight": torch.zeros(3)}, str(ck))
    code = main(["run", "--artifacts", str(tmp_path / "a"), "--no-progress", "--model", "tiny", "--weights", str(ck)])
    err = capsys.readouterr().err
    assert code != 0
    assert "bogus.weight" in err and "missing" in err
    assert not list((tmp_path / "a").rglob("artifact.json"))


def test_unpack_missing_container(tmp_path, capsys):
    assert main(["unpack", str(tmp_path / "none.lrdc"), "-o", str(tmp_path / "m.onnx")]) != 0
    assert "none.lrdc" in capsys.readouterr().err
