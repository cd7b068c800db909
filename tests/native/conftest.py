"""Fixtures of the native decoder tests: the decoder built once per session (plain and with sanitizers, via the
Makefile's targets into a temporary folder), a batch driver linked to the sanitized library, and small models."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import QuantizeConfig
from pipeline.quantize.ort_static import quantize_static
from tests.helpers.containers import identity_model
from tests.helpers.onnx_models import export, images, tiny_net

ROOT = Path(__file__).resolve().parents[2]
ASAN = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _make(target: str, build: Path) -> None:
    r = subprocess.run(["make", "-s", "-C", str(ROOT), target, f"DECODER_BUILD={build}"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"make {target} failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture(scope="session")
def native_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"cli": plain lrdc-decode, "cli_asan": sanitized lrdc-decode, "batch": sanitized batch driver}."""
    assert shutil.which("make") and shutil.which("cc"), "the native decoder tests need make and a C compiler"
    build = tmp_path_factory.mktemp("decoder") / "b"
    _make("decoder", build)
    _make("decoder-asan", build)
    asan = Path(f"{build}-asan")
    batch = asan / "lrdc-batch"
    r = subprocess.run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", *ASAN, f"-I{ROOT / 'native/lrdc'}",
                        str(ROOT / "tests/native/batch.c"), str(asan / "liblrdc.a"), "-lzstd", "-o", str(batch)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return {"cli": build / "lrdc-decode", "cli_asan": asan / "lrdc-decode", "batch": batch}


class Batch:
    """Runs jobs through the sanitized batch driver: one process for many cases."""

    def __init__(self, exe: Path, work: Path) -> None:
        self.exe, self.work = exe, work

    def run(self, jobs: list[str]) -> list[str]:
        r = subprocess.run([str(self.exe)], input="".join(j + "\n" for j in jobs), capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0 and not r.stderr, f"batch driver crashed or a sanitizer fired:\n{r.stderr[-4000:]}"
        out = r.stdout.splitlines()
        assert len(out) == len(jobs)
        return out


@pytest.fixture(scope="session")
def batch(native_build: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return Batch(native_build["batch"], tmp_path_factory.mktemp("batch"))


# ------------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small models: an int8 conv net, the same at 4-bit weights, and odd tensors (narrowings, bool, empty, scalar,
    constant, low-bit grids, channels with different statistics for rans16ch's several tables)."""
    d = tmp_path_factory.mktemp("models")
    fp32 = export(tiny_net(0), d / "fp32.onnx")
    quantize_static(fp32, d / "int8.onnx", images(8), QuantizeConfig(calib_size=8))
    quantize_static(fp32, d / "int4.onnx", images(8), QuantizeConfig(calib_size=8, weight_bits="4"))
    rng = np.random.default_rng(3)
    scales = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 48.0, 64.0] * 4, np.float32)
    inits = {
        "w_q": np.clip(np.round(rng.laplace(0, 1, (32, 300)) * scales[:, None]), -127, 127).astype(np.int8),
        "w_s": (rng.random(32) * 0.01 + 0.001).astype(np.float32),
        "g2": (np.clip(np.round(rng.laplace(0, 0.5, 1001)), -1, 1) * 127).astype(np.int8),
        "g3": (np.clip(np.round(rng.laplace(0, 1.5, 4097)), -3, 3) * 42).astype(np.int8),
        "g4": (np.clip(np.round(rng.laplace(0, 3.5, 3001)), -7, 7) * 18).astype(np.int8),
        "half_exact": np.array([0.5, -0.0, np.inf, -2.0, 1024.0] * 9, np.float32),
        "fp32": rng.standard_normal(50).astype(np.float32),
        "i64_small": rng.integers(-100, 100, 40).astype(np.int64),
        "i64_mid": rng.integers(-30000, 30000, 40).astype(np.int64),
        "i64_big": rng.integers(-2**40, 2**40, 40).astype(np.int64),
        "i32_small": rng.integers(-100, 100, 40).astype(np.int32),
        "u16": rng.integers(0, 65535, 40).astype(np.uint16),
        "f64": rng.standard_normal(20),
        "flags": rng.integers(0, 2, 64).astype(bool),
        "empty": np.zeros((0, 4), np.float32),
        "const": np.full(500, 7, np.int8),
        "scalar": np.array(3.25, np.float32),
    }
    identity_model(inits, d / "odd.onnx", dq={"w_deq": ("w_q", "w_s")})
    return {"int8": d / "int8.onnx", "int4": d / "int4.onnx", "odd": d / "odd.onnx"}
