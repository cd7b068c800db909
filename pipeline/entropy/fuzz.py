"""Fuzz the LRDC parser and decoders: ``python -m pipeline.entropy.fuzz [--cases N] [--seconds S] [--seed K]``.

Seeds are valid containers (one per coder) packed from a small in-code ONNX model. Each case mutates one of them:
bit flips, truncation, insertion/deletion, random overwrites, header edits (field values replaced by hostile ones:
huge, negative, wrong type, duplicate names...), whole random files, and raw coder payloads with random lengths.
Half of the mutated containers get a *recomputed* sha256 so that the checks behind the hash are exercised too.
Amplification cases (:mod:`.amplify`) are well-formed small containers that declare far more decoded bytes than they
can hold (a one-symbol stream declaring 2**31 bytes, a multiplied symbol count...); they must all be rejected.

Properties checked per case: only :class:`ContainerError` is ever raised (anything else, including MemoryError, is a
failure), amplification cases are rejected, and each case finishes within ``--case-seconds`` (checked, and enforced
with SIGALRM). The CLI also caps the process's address space (RLIMIT_AS, default 2 GiB) so an unbounded allocation
fails loudly instead of swapping; the run reports its peak RSS. Coverage is counted: cases per kind, and how often
each ``raise ContainerError`` site (:func:`rejection_sites`) was the one that rejected a case.
A seeded ``random.Random`` drives everything, so a failing case is reproducible from ``--seed`` and its index.
(atheris, if installed, could drive the same ``one_case`` target; nothing here depends on it.)
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.entropy import amplify
from pipeline.entropy.amplify import split_container
from pipeline.entropy.coders import CODERS
from pipeline.entropy.container import pack_onnx, read_container
from pipeline.entropy.container.format import canonical, seal
from pipeline.errors import ContainerError

MUTATIONS = ("bit-flip", "truncate", "insert-delete", "overwrite", "header-edit", "prefix", "trailing", "random-file")
_PACKAGE = Path(__file__).resolve().parent  # rejection sites are named relative to pipeline/entropy
HOSTILE: list[Any] = [0, -1, 1, 2**31, 2**32, 2**40, 2**63, -(2**63), 1.5, 3.0, "x", "", None, True, [], {}, [2**40],
                      [0], [-1], "float32", "int8", "object", "__lrdc_graph__"]


class CaseTimeout(Exception):
    """Raised by SIGALRM when one case runs past its limit."""


def seed_model(path: Path) -> Path:
    """A small ONNX model: two int8 Laplace weights (pooled into one stream), fp32 scales and biases, small tensors
    that stay inline in the graph record (zero points, an int64 shape, a scalar)."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    tensors = {
        "w_q": np.clip(np.round(rng.laplace(0, 15, (8, 4, 3, 3))), -127, 127).astype(np.int8),
        "w2_q": np.clip(np.round(rng.laplace(0, 15, (8, 4, 3, 3))), -127, 127).astype(np.int8),
        "w_s": (rng.random(8) * 0.01 + 0.001).astype(np.float32),
        "w_zp": np.zeros(8, np.int8),
        "b": rng.standard_normal(8).astype(np.float32),
        "shape": np.array([1, -1], np.int64),
        "half": np.array(0.5, np.float32),
    }
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 128])
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w1"], axis=0),
             helper.make_node("DequantizeLinear", ["w2_q", "w_s", "w_zp"], ["w2"], axis=0),
             helper.make_node("Add", ["w1", "w2"], ["w"]),
             helper.make_node("Conv", ["x", "w", "b"], ["c"]),
             helper.make_node("Mul", ["c", "half"], ["m"]),
             helper.make_node("Reshape", ["m", "shape"], ["y"])]
    g = helper.make_graph(nodes, "fuzz_seed", [x], [y], [numpy_helper.from_array(v, k) for k, v in tensors.items()])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def seed_containers() -> list[bytes]:
    """One valid container per coder, packed from :func:`seed_model`."""
    with tempfile.TemporaryDirectory() as d:
        m = seed_model(Path(d) / "seed.onnx")
        out = []
        for coder in ("raw", "zstd", "huffman", "rans", "rans16", "rans16ch", "planes", "auto"):
            pack_onnx(m, Path(d) / f"{coder}.lrdc", coder=coder, zstd_level=3)
            out.append((Path(d) / f"{coder}.lrdc").read_bytes())
    return out


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def mutate_header(header: dict, r: random.Random) -> None:
    """Replace one value of a parsed (column form) header in place (top level, a column, or one entry of a column)
    by a hostile one. Shared with the native decoder's fuzz test, so both readers see the same corruptions."""
    target = r.choice([header, header["streams"], header["records"]])
    key = r.choice(sorted(target))
    op = r.random()
    if op < 0.1:
        target.pop(key)
    elif op < 0.2:
        target[f"extra{r.randrange(9)}"] = 1
    elif op < 0.7 and isinstance(target.get(key), list) and target[key]:
        col = target[key]  # one entry of a column: the common corruption
        i = r.randrange(len(col))
        if isinstance(col[i], int) and not isinstance(col[i], bool) and r.random() < 0.6:
            col[i] = col[i] + r.choice([-2**40, -1, 1, 7, 2**40])
        elif r.random() < 0.3:
            del col[i]
        else:
            col[i] = r.choice(HOSTILE)
    elif isinstance(target.get(key), int) and not isinstance(target.get(key), bool):
        target[key] = target[key] + r.choice([-2**40, -1, 1, 7, 2**40])
    else:
        target[key] = r.choice(HOSTILE)


def edit_header(data: bytes, r: random.Random, header_coders: tuple[int | None, ...] = (None, 0, 1)) -> bytes:
    """One hostile header value; keep the JSON canonical so the strict schema checks behind it are reached.
    Returns the body without its sha256 (the caller reseals or corrupts it)."""
    raw0, payloads = split_container(data)
    header = json.loads(raw0)
    mutate_header(header, r)
    try:
        raw = canonical(header)
    except (ValueError, TypeError):
        raw = raw0
    return seal(raw, payloads, header_coder=r.choice(header_coders))[:-32]


def mutate(seed: bytes, r: random.Random) -> bytes:
    """One mutated container (see module docstring for the operators)."""
    return mutate_named(seed, r)[1]


def mutate_named(seed: bytes, r: random.Random) -> tuple[str, bytes]:
    """``(operator name, mutated container)``: :func:`mutate` saying which operator of ``MUTATIONS`` it used."""
    d = bytearray(seed)
    op = r.randrange(8)
    return MUTATIONS[op], _apply(d, op, r)


def _apply(d: bytearray, op: int, r: random.Random) -> bytes:
    """Mutation operator ``op`` (index into ``MUTATIONS``) applied to container bytes ``d``."""
    reseal = r.random() < 0.5
    body = d[:-32]
    if op == 0:  # bit flips
        for _ in range(r.randint(1, 4)):
            i = r.randrange(len(body))
            body[i] ^= 1 << r.randrange(8)
    elif op == 1:  # truncation (anywhere, including inside the trailer)
        return bytes(d[:r.randrange(len(d))])
    elif op == 2:  # insert or delete a run of bytes
        i = r.randrange(len(body))
        if r.random() < 0.5:
            body[i:i] = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
        else:
            del body[i:i + r.randint(1, 16)]
    elif op == 3:  # overwrite a run with random bytes
        i = r.randrange(len(body))
        n = r.randint(1, 32)
        body[i:i + n] = bytes(r.randrange(256) for _ in range(min(n, len(body) - i)))
    elif op == 4:  # header value edits, canonical JSON kept so the strict schema checks are reached
        body = bytearray(edit_header(bytes(d), r))
    elif op == 5:  # prefix fields: version, header length, header coder, coded header length
        field = r.randrange(4)
        if field == 0:
            struct.pack_into("<H", body, 4, r.choice([0, 1, 2, 4, 255, 65535]))
        elif field == 1:
            struct.pack_into("<I", body, 6, r.choice([0, 1, len(body), 2**24, 2**32 - 1]))
        elif field == 2:
            body[10] = r.choice([0, 1, 2, 3, 4, 5, 6, 255])
        else:
            struct.pack_into("<I", body, 11, r.choice([0, 1, len(body), 2**24, 2**32 - 1]))
    elif op == 6:  # trailing garbage after the trailer
        return bytes(d) + bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
    else:  # random file, sometimes with a valid magic
        n = r.randint(0, 512)
        rnd = bytes(r.randrange(256) for _ in range(n))
        return (b"LRDC\x03\x00" + rnd) if r.random() < 0.5 else rnd
    return _reseal(bytes(body)) if reseal else bytes(body) + bytes(d[-32:])


def _coder_case(seed: bytes, r: random.Random) -> tuple[str, Callable[[], Any]]:
    """A direct decoder call with a mutated payload and a random (bounded) symbol count."""
    coder = CODERS.get(r.choice(CODERS.names()))
    u = r.random()
    if u < 0.35:
        src = bytes(r.randrange(256) for _ in range(r.randint(0, 300)))
    elif u < 0.6:  # small alphabets: huffman packs several symbols per literal, rANS gets a short table
        alphabet = [r.randrange(256) for _ in range(r.randint(1, 17))]
        src = bytes(r.choice(alphabet) for _ in range(r.randint(0, 600)))
    else:
        src = seed[15:400]
    # Segment hints (rans16ch): k equal segments when they cover the input, else ignored (one segment).
    segs = r.randint(1, 12)
    hint = [(segs, len(src) // segs)] if src and len(src) % segs == 0 else None
    payload = bytearray(coder.encode(src, level=3, itemsize=r.choice([1, 2, 4]), segments=hint))
    op = r.random()
    if op < 0.3 or not payload:
        pass  # intact: decodes when the count is right
    elif op < 0.6:  # bit flips
        for _ in range(r.randint(1, 3)):
            payload[r.randrange(len(payload))] ^= 1 << r.randrange(8)
    elif op < 0.75:  # truncation
        del payload[r.randrange(len(payload)):]
    elif op < 0.85:  # the head's first bytes (mode, precision, alphabet size, plane count) replaced
        for i in range(min(len(payload), r.randint(1, 2))):
            payload[i] = r.randrange(256)
    else:  # continuation bytes where the LEB128 count starts: over-long, non-minimal or truncated counts
        i = min(len(payload), r.choice([1, 2]))
        payload[i:i] = b"\x80" * r.randint(1, 12) + (b"\x00" if r.random() < 0.5 else b"")
    n = len(src) if r.random() < 0.6 else r.choice([len(src) + 1, max(0, len(src) - 1), r.randint(0, 1 << 16)])
    return coder.name, lambda: coder.decode(bytes(payload), n)


def rejection_sites() -> list[str]:
    """Every ``raise ContainerError(...)`` under pipeline/entropy as ``"path:function:line"`` (what coverage counts)."""
    sites = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                        and getattr(node.exc.func, "id", None) == "ContainerError"):
                    sites.append(f"{path.relative_to(_PACKAGE).as_posix()}:{fn.name}:{node.lineno}")
    return sorted(set(sites))


def _site(e: BaseException) -> str:
    """Where ``e`` was raised, in :func:`rejection_sites`' naming."""
    frame = traceback.extract_tb(e.__traceback__)[-1]
    try:
        rel = Path(frame.filename).resolve().relative_to(_PACKAGE).as_posix()
    except ValueError:
        rel = frame.filename
    return f"{rel}:{frame.name}:{frame.lineno}"


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB.

    ``resource.getrusage``'s ru_maxrss (KiB on Linux, bytes on macOS); on Linux the smaller of it and
    /proc/self/status VmHWM, because Linux carries ru_maxrss over from the parent across fork and exec, so a child
    of a large process (a test runner) would report the parent's peak.
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = rss / (1 << 20) if sys.platform == "darwin" else rss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                mib = min(mib, int(line.split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        pass
    return mib


def _next_case(seeds: list[bytes], r: random.Random) -> tuple[str, Callable[[], Any], bool]:
    """``(kind, call, must_reject)`` of the next case: a direct decoder call, an amplification case or a mutant."""
    s = r.choice(seeds)
    u = r.random()
    if u < 0.25:
        name, call = _coder_case(s, r)
        return f"coder:{name}", call, False
    if u < 0.35:
        kind, data = amplify.case(s, r)
        return f"amplify:{kind}", (lambda: read_container(data)), True
    op, data = mutate_named(s, r)
    return f"mutate:{op}", (lambda: read_container(data)), False


def fuzz(cases: int = 1000, seconds: float | None = None, seed: int = 0, case_seconds: float = 5.0) -> dict[str, Any]:
    """Run the fuzzer in this process (containers are read with the reader's default limits).

    Args:
        cases: maximum number of cases. seconds: stop earlier after this wall time. seed: RNG seed.
        case_seconds: per-case limit (a case taking longer is a "hang" failure).

    Returns:
        ``{"cases", "accepted", "rejected", "failures": [{"case", "kind", "error"}], "seconds", "max_case_s",
        "by_kind": {kind: {"cases", "accepted", "rejected"}}, "sites": {rejection site: count}, "peak_rss_mib"}``.
        Kinds are ``coder:<name>``, ``amplify:<kind>`` (:mod:`.amplify`; accepting one is a failure) and
        ``mutate:<operator>`` (``MUTATIONS``); sites are named as in :func:`rejection_sites`. "accepted" counts
        mutants that are still valid containers (e.g. a flip inside an unused bit was resealed).
    """
    seeds = seed_containers()
    r = random.Random(seed)
    t0 = time.monotonic()
    stats: dict[str, Any] = {"cases": 0, "accepted": 0, "rejected": 0, "failures": [], "max_case_s": 0.0,
                             "by_kind": {}, "sites": {}}

    def on_alarm(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise CaseTimeout()

    use_alarm = hasattr(signal, "SIGALRM")
    old = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    try:
        for i in range(cases):
            if seconds is not None and time.monotonic() - t0 > seconds:
                break
            kind, call, must_reject = _next_case(seeds, r)
            counts = stats["by_kind"].setdefault(kind, {"cases": 0, "accepted": 0, "rejected": 0})
            counts["cases"] += 1
            c0 = time.monotonic()
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, case_seconds * 2)
            try:
                call()
                stats["accepted"] += 1
                counts["accepted"] += 1
                if must_reject:
                    stats["failures"].append({"case": i, "kind": "amplification accepted", "error": kind})
            except ContainerError as e:
                stats["rejected"] += 1
                counts["rejected"] += 1
                site = _site(e)
                stats["sites"][site] = stats["sites"].get(site, 0) + 1
            except CaseTimeout:
                stats["failures"].append({"case": i, "kind": "hang", "error": f"> {case_seconds * 2} s"})
            except Exception as e:  # noqa: BLE001 - the point of a fuzzer: any other exception is a finding
                stats["failures"].append({"case": i, "kind": type(e).__name__, "error": str(e)[:300]})
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.monotonic() - c0
            stats["max_case_s"] = max(stats["max_case_s"], dt)
            if dt > case_seconds:
                stats["failures"].append({"case": i, "kind": "slow", "error": f"{dt:.2f} s"})
            stats["cases"] += 1
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
    stats["seconds"] = time.monotonic() - t0
    stats["peak_rss_mib"] = peak_rss_mib()
    return stats


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit code 1 when any case raised something other than ContainerError or hung."""
    p = argparse.ArgumentParser(prog="python -m pipeline.entropy.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-seconds", type=float, default=5.0)
    p.add_argument("--max-memory-mib", type=int, default=2048, help="RLIMIT_AS for this process (0: no limit)")
    a = p.parse_args(argv)
    if a.max_memory_mib:
        try:
            lim = a.max_memory_mib << 20
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        except (ValueError, OSError) as e:
            print(f"warning: could not cap memory: {e}", file=sys.stderr)
    s = fuzz(a.cases, a.seconds, a.seed, a.case_seconds)
    sites = rejection_sites()
    hit = sum(1 for x in sites if x in s["sites"])
    print(f"fuzz: {s['cases']} cases in {s['seconds']:.1f} s (seed {a.seed}): {s['rejected']} rejected with "
          f"ContainerError, {s['accepted']} still valid, {len(s['failures'])} failures; slowest case "
          f"{s['max_case_s'] * 1000:.1f} ms; {hit}/{len(sites)} rejection sites reached; peak RSS "
          f"{s['peak_rss_mib']:.0f} MiB")
    for f in s["failures"][:20]:
        print(f"  case {f['case']}: {f['kind']}: {f['error']}")
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
