"""Short fuzz runs: mutated containers and payloads only ever raise ContainerError, quickly, with bounded memory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.entropy.fuzz import fuzz, main, mutate, seed_containers
from pipeline.entropy.container import read_container

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_short_in_process() -> None:
    s = fuzz(cases=1500, seconds=20, seed=1)
    assert s["failures"] == [] and s["cases"] >= 200
    assert s["rejected"] > 0.8 * s["cases"]


def test_seeds_are_valid_and_mutations_deterministic() -> None:
    import random

    seeds = seed_containers()
    for b in seeds:
        read_container(b)
    a = [mutate(seeds[0], random.Random(5)) for _ in range(3)]
    b = [mutate(seeds[0], random.Random(5)) for _ in range(3)]
    assert a == b


def test_fuzz_cli_with_memory_cap() -> None:
    # Separate process: the CLI sets RLIMIT_AS (1 GiB here), which must not leak into the test process.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.entropy.fuzz", "--cases", "300", "--seconds", "20",
                        "--seed", "3", "--max-memory-mib", "1024"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failures" in r.stdout
    assert main(["--cases", "20", "--max-memory-mib", "0"]) == 0
