"""CLI value checks: seed range, device names, output file paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError, InputError
from pipeline.validate_args import check_device, check_output_file, check_seed


def test_seed() -> None:
    assert check_seed(0) == 0 and check_seed("42") == 42 and check_seed(2 ** 63 - 1) == 2 ** 63 - 1
    with pytest.raises(ConfigError, match=r"outside the accepted range 0 .. 2\*\*63-1.*pass a smaller"):
        check_seed(str(2 ** 64 + 5))
    with pytest.raises(ConfigError, match="outside the accepted range"):
        check_seed(-1)
    with pytest.raises(ConfigError, match="not an integer; pass a whole number"):
        check_seed("abc")
    torch.manual_seed(check_seed(2 ** 63 - 1))  # the bound is what torch accepts


def test_device() -> None:
    assert check_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'cuda:abc' is not a device name; use 'cpu', 'cuda' or 'cuda:N'"):
        check_device("cuda:abc")
    with pytest.raises(ConfigError, match="takes no index"):
        check_device("cpu:1")
    if torch.cuda.is_available():
        assert check_device("cuda:0") == "cuda:0"
        with pytest.raises(ConfigError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ConfigError, match="no usable CUDA device.*use --device cpu"):
            check_device("cuda")


def test_output_file(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "m.onnx") == tmp_path / "m.onnx"
    with pytest.raises(InputError, match=r"is a directory; pass a file path inside it"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match=r"does not exist; create it first"):
        check_output_file(tmp_path / "nope" / "m.onnx")


@pytest.mark.parametrize("argv, needle", [
    (["run", "--model", "tiny", "--seed", str(2**64 + 5), "--upto", "baseline"], "seed"),
    (["run", "--model", "tiny", "--device", "cuda:abc", "--upto", "baseline"], "device"),
    (["config", "--device", "cpu:1"], "device"),
])
def test_cli_refuses_bad_seed_and_device_before_any_work(tmp_path, capsys, argv, needle):
    from pipeline.cli import main

    assert main(argv + ["--artifacts", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_unpack_to_a_directory_is_refused(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["unpack", str(tmp_path / "missing.lrdc"), "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
