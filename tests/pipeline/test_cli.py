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


BAD_INPUTS = ["garbage_onnx", "missing_factory", "bad_labels", "no_x", "missing_npz", "empty_folder", "evil_pickle",
              "budget_unmet"]


def _bad_inputs(tmp_path):
    """Files a user might hand the CLI by mistake (by case name): each must fail clearly before any stage completes."""
    import numpy as np
    import torch

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01this is not a protobuf" * 10)
    text_py = tmp_path / "model.py"
    text_py.write_text("def make():\n    return None\n")
    labels_bad = tmp_path / "labels.npz"
    np.savez(labels_bad, x=np.zeros((20, 8, 8), np.uint8), y=np.full(20, -3))
    no_x = tmp_path / "nox.npz"
    np.savez(no_x, images=np.zeros((4, 8, 8)))
    empty = tmp_path / "emptyfolder"
    empty.mkdir()

    class Boom:  # a pickle whose payload would run code when unpickled
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Boom()}, evil)
    return {
        "garbage_onnx": (["--model", str(garbage), "--data", "digits"], "garbage.onnx"),
        "missing_factory": (["--model", f"{text_py}:nothere", "--data", "digits"], "nothere"),
        "bad_labels": (["--model", "tiny", "--data", f"npz:{labels_bad}"], "labels.npz"),
        "no_x": (["--model", "tiny", "--data", f"npz:{no_x}"], "nox.npz"),
        "missing_npz": (["--model", "tiny", "--data", f"npz:{tmp_path / 'missing.npz'}"], "missing.npz"),
        "empty_folder": (["--model", "tiny", "--data", f"imagefolder:{empty}"], "emptyfolder"),
        "evil_pickle": (["--model", "tiny", "--data", "digits", "--weights", str(evil)], "evil.pt"),
        "budget_unmet": (["--model", "tiny", "--data", "digits", "--set", "factorize.selector=budget",
                          "--set", "factorize.budget.macs=0.0001", "--set", "baseline.epochs=0"], "cannot be met"),
    }


def test_every_bad_input_is_a_case(tmp_path):
    assert list(_bad_inputs(tmp_path)) == BAD_INPUTS


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_files_exit_nonzero_and_write_nothing(case, tmp_path, capsys):
    args, match = _bad_inputs(tmp_path)[case]
    root = tmp_path / "art"
    code = main(["run", "--artifacts", str(root), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code != 0, args
    assert match in err, (args, err)
    # stages before the failing one may complete; the failing one leaves no folder that looks complete
    assert not (root / "tiny" / "deploy").exists()
    assert not (tmp_path / "pwned").exists(), "a pickle payload was executed"


def test_unwritable_artifacts_folder(capsys):
    code = main(["run", "--artifacts", "/proc/lowrank-deploy-test", "--no-progress", "--model", "tiny"])
    assert code != 0
    assert "not writable" in capsys.readouterr().err
