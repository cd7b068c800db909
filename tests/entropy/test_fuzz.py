"""Fuzz runs: mutated containers, forged amplification cases and raw payloads only ever raise ContainerError, and the
run reaches every case kind, every coder and the rejection paths of every decoding module (coverage, not speed)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.entropy import amplify
from pipeline.entropy.coders import CODERS
from pipeline.entropy.container import read_container
from pipeline.entropy.fuzz import MUTATIONS, fuzz, main, mutate, rejection_sites, seed_containers

ROOT = Path(__file__).resolve().parents[2]
CASES = 1500
# Modules whose rejection paths the short run must reach (each one at least once).
MODULES = ("coders/bits.py", "coders/deflate.py", "coders/huffman.py", "coders/planes.py", "coders/rans.py",
           "coders/rans16.py", "coders/rans16ch.py", "coders/raw.py", "coders/table.py", "coders/zstd.py",
           "container/format.py", "container/read.py")


@pytest.fixture(scope="module")
def run() -> dict:
    return fuzz(cases=CASES, seed=1)


def test_no_failures_and_every_case_ran(run: dict) -> None:
    assert run["failures"] == [] and run["cases"] == CASES
    assert run["accepted"] + run["rejected"] == CASES


def test_every_kind_and_coder_reached(run: dict) -> None:
    kinds = run["by_kind"]
    expected = ({f"mutate:{m}" for m in MUTATIONS} | {f"amplify:{k}" for k in amplify.KINDS}
                | {f"coder:{c}" for c in CODERS.names()})
    assert expected == set(kinds)
    for c in CODERS.names():  # each decoder both accepted an intact payload and rejected a broken one
        assert kinds[f"coder:{c}"]["accepted"] > 0 and kinds[f"coder:{c}"]["rejected"] > 0, c
    for k in amplify.KINDS:  # every amplification case rejected (accepting one is also a recorded failure)
        assert kinds[f"amplify:{k}"]["cases"] > 0 and kinds[f"amplify:{k}"]["accepted"] == 0, k


def test_rejection_paths_reached(run: dict) -> None:
    sites = rejection_sites()
    hit = {s for s in run["sites"] if s in sites}
    assert set(run["sites"]) <= set(sites)  # every rejection came from a known raise site
    for module in MODULES:
        assert any(s.startswith(module + ":") for s in hit), module
    bounds = [s for s in sites if ":_check_bounds:" in s]  # the three container limits
    assert len(bounds) == 3 and set(bounds) <= hit
    assert len(hit) >= 0.5 * len(sites), f"{len(hit)}/{len(sites)} rejection sites reached"


def test_seeds_are_valid_and_mutations_deterministic() -> None:
    seeds = seed_containers()
    for b in seeds:
        read_container(b)
    a = [mutate(seeds[0], random.Random(5)) for _ in range(3)]
    b = [mutate(seeds[0], random.Random(5)) for _ in range(3)]
    assert a == b


def test_fuzz_cli_with_memory_cap() -> None:
    # Separate process: the CLI sets RLIMIT_AS (1 GiB here), which must not leak into the test process.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.entropy.fuzz", "--cases", "300", "--seed", "3",
                        "--max-memory-mib", "1024"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failures" in r.stdout and "rejection sites reached" in r.stdout
    assert main(["--cases", "20", "--max-memory-mib", "0"]) == 0
