"""``make arm64-check``: run the shipped graphs on an arm64 ONNX Runtime (qemu user-mode) and compare with x86.

Three sub-commands, so each side imports only what it has:

* ``run`` (x86, project venv; the default): sets up the emulated aarch64 Python (``setup.sh``, cached), writes the
  x86 reference, runs ``verify`` under emulation, runs the native-decoder hook, prints the table and writes
  ``arm64-check.json`` next to the deploy folder. Exit 1 on any mismatch.
* ``reference`` (x86): seeded inputs -> every shipped graph on the x86 ORT -> ``ref.npz`` (+ ``ref.json``).
* ``verify`` (aarch64, numpy + onnxruntime only): reads ``ref.npz``, runs the same graphs on the same inputs,
  compares (``compare.py``) and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (sibling module; scripts/ is not a package)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _session(path: str, optimize: bool = True):
    """An ORT CPU session as an app would open it (default optimisations), one thread for reproducible sums.

    ``optimize=False`` disables every graph optimisation: a QDQ graph then runs as DequantizeLinear -> float op ->
    QuantizeLinear, i.e. what the graph means, without the fused integer kernels (the int8 reference semantics).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _shipped(deploy: str) -> list[str]:
    return [f for f in compare.SHIPPED_GRAPHS if os.path.isfile(os.path.join(deploy, f))]


def _ort_format(path: str) -> str | None:
    if not path.endswith(".ort"):
        return None
    with open(path, "rb") as fh:
        return compare.ort_format_version(fh.read())  # flatbuffers put strings anywhere, often at the end


def _output_steps(onnx_path: str) -> dict[str, float]:
    """Quantisation step (scale) of each graph output produced by a per-tensor DequantizeLinear (x86 side: onnx)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path, load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    producer = {o: n for n in model.graph.node for o in n.output}
    steps = {}
    for out in model.graph.output:
        node = producer.get(out.name)
        if node is None or node.op_type != "DequantizeLinear":
            continue
        scale = inits.get(node.input[1])
        value = numpy_helper.to_array(scale) if scale is not None else None
        if value is None and node.input[1] in consts:
            value = numpy_helper.to_array(consts[node.input[1]].attribute[0].t)
        if value is not None and value.size == 1:
            steps[out.name] = float(value.ravel()[0])
    return steps


def _cpu_flags() -> list[str]:
    """The x86 SIMD features that decide which int8 kernel ORT picks (VNNI avoids the u8s8 saturation)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in set(flags) if f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                                 "amx_int8"))


def cmd_reference(args: argparse.Namespace) -> int:
    """x86 side: run every shipped graph on seeded inputs and save inputs + outputs."""
    import onnxruntime as ort

    files = _shipped(args.deploy)
    if not files:
        print(f"arm64-check: no shipped graph ({', '.join(compare.SHIPPED_GRAPHS)}) in {args.deploy}; "
              "run `make deploy` first or pass DEPLOY=<folder>", file=sys.stderr)
        return 2
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"x86_ort_version": ort.__version__, "machine": platform.machine(), "cpu_flags": _cpu_flags(),
                  "seed": args.seed, "batch": args.batch, "files": {}}
    for f in files:
        path = os.path.join(args.deploy, f)
        try:
            sess = _session(path)
        except Exception as exc:  # noqa: BLE001  (a file x86 cannot load is broken, not an arm64 finding)
            print(f"arm64-check: the x86 ORT {ort.__version__} cannot load {path}: {exc}", file=sys.stderr)
            return 2
        feeds = {}
        for inp in sess.get_inputs():
            key = f"in::{inp.name}"
            if key not in arrays:  # the graphs share one input; every graph gets the very same array
                if args.inputs:
                    with np.load(args.inputs) as z:
                        arrays[key] = np.asarray(z[inp.name] if inp.name in z else z[z.files[0]], np.float32)
                else:
                    arrays[key] = compare.seeded_inputs(inp.shape, seed=args.seed, batch=args.batch)
            feeds[inp.name] = arrays[key]
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, sess.run(names, feeds)):
            arrays[f"out::{f}::{name}"] = value
        steps: dict[str, float] = {}
        if ".int8." in f:
            # The graph's semantics come from the ONNX source: model.int8.onnx for model.int8.ort as well (a Fixed
            # style .ort holds fused integer kernels, so it cannot give them itself).
            source = os.path.join(args.deploy, "model.int8.onnx")
            source = source if os.path.isfile(source) else path
            if source.endswith(".onnx"):
                steps = _output_steps(source)
            sem = _session(source, optimize=False)
            for name, value in zip(names, sem.run(names, feeds)):
                arrays[f"sem::{f}::{name}"] = value
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        meta["files"][f] = {"inputs": [i.name for i in sess.get_inputs()], "outputs": names, "sha256": digest,
                            "ort_format_version": _ort_format(path), "output_steps": steps}
    first_input = next((v for k, v in arrays.items() if k.startswith("in::")), None)
    if first_input is not None and first_input.ndim:
        meta["batch"] = int(first_input.shape[0])  # --inputs decides the batch, not --batch
    np.savez(args.out, **arrays)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump(meta, fh, indent=2)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """arm64 side: load each graph, feed the reference inputs, compare with the reference outputs."""
    import onnxruntime as ort

    with open(os.path.splitext(args.ref)[0] + ".json") as fh:
        meta = json.load(fh)
    rows = []
    with np.load(args.ref) as z:
        arrays = {k: z[k] for k in z.files}
    for f, info in meta["files"].items():
        path = os.path.join(args.deploy, f)
        try:
            sess = _session(path)
            feeds = {n: arrays[f"in::{n}"] for n in info["inputs"]}
            got = dict(zip(info["outputs"], sess.run(info["outputs"], feeds)))
        except Exception as exc:  # noqa: BLE001  (any load/run failure is a verdict, reported with its message)
            rows.append(compare.error_row(f, f"arm64 ORT {ort.__version__} could not load/run it: {exc}"))
            continue
        refs = {n: arrays[f"out::{f}::{n}"] for n in info["outputs"]}
        sem = {n: arrays[f"sem::{f}::{n}"] for n in info["outputs"] if f"sem::{f}::{n}" in arrays} or None
        rows.append(compare.compare_graph(f, refs, got, sem, info.get("output_steps") or None))
    result = {"arm64_ort_version": ort.__version__, "machine": platform.machine(),
              "numpy_version": np.__version__, "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Native decoder hook (native/lrdc, built by `make decoder`): cross-compile for aarch64, run under qemu on the
# shipped weights.lrdc and compare its ONNX bytes with the Python `unpack`. Skipped while native/lrdc is absent.
# ---------------------------------------------------------------------------------------------------------------
def decoder_hook(deploy: str, native_dir: str, cache: str, work: str) -> dict:
    """Returns {"status": "pass"|"FAIL"|"skipped", "why": ...} for the native-decoder comparison."""
    container = os.path.join(deploy, "weights.lrdc")
    if not os.path.isdir(native_dir):
        return {"status": "skipped", "why": f"{native_dir} does not exist yet (native decoder not built here)"}
    if not os.path.isfile(container):
        return {"status": "skipped", "why": f"no weights.lrdc in {deploy}"}
    cc = shutil.which("aarch64-linux-gnu-gcc")
    qemu = shutil.which("qemu-aarch64-static")
    if not cc or not qemu:
        return {"status": "skipped", "why": "aarch64-linux-gnu-gcc or qemu-aarch64-static missing "
                                            "(apt-get install gcc-aarch64-linux-gnu qemu-user-static)"}
    rootfs = os.path.join(cache, "rootfs")
    sources = sorted(os.path.join(native_dir, s) for s in os.listdir(native_dir) if s.endswith(".c"))
    exe = os.path.join(work, "lrdc-decode-aarch64")
    # The decoder links libzstd and zlib: the rootfs holds their arm64 -dev packages (and glibc's, which they pull
    # in), so it serves as the cross compiler's sysroot; one call builds library + CLI from every .c file.
    build = [cc, f"--sysroot={rootfs}", "-std=c99", "-O2", f"-I{native_dir}", *sources, "-lzstd", "-lz", "-o", exe]
    proc = subprocess.run(build, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "FAIL", "why": "cross-compile failed: " + proc.stderr.strip()[-800:]}
    native_out = os.path.join(work, "native.onnx")
    py_out = os.path.join(work, "python.onnx")
    env = dict(os.environ, QEMU_LD_PREFIX=rootfs)
    run = subprocess.run([qemu, exe, container, native_out], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        return {"status": "FAIL", "why": f"native decoder exited {run.returncode}: {run.stderr.strip()[-400:]}"}
    unpack = subprocess.run([sys.executable, "-m", "pipeline.cli", "unpack", container, "-o", py_out],
                            capture_output=True, text=True, cwd=REPO)
    if unpack.returncode != 0:
        return {"status": "FAIL", "why": f"python unpack failed: {unpack.stderr.strip()[-400:]}"}
    with open(native_out, "rb") as a, open(py_out, "rb") as b:
        na, pb = a.read(), b.read()
    same = na == pb
    return {"status": "pass" if same else "FAIL", "bytes": len(na),
            "sha256": hashlib.sha256(na).hexdigest(),
            "why": "byte-identical to `lowrank-deploy unpack`" if same
            else f"differs from unpack ({len(na)} vs {len(pb)} bytes)"}


def _report_path(deploy: str) -> str:
    """arm64-check.json beside the deploy folder (artifacts/<model>/deploy -> artifacts/<model>/arm64-check.json)."""
    parent = os.path.dirname(os.path.abspath(deploy.rstrip(os.sep)))
    return os.path.join(parent, "arm64-check.json")


def cmd_run(args: argparse.Namespace) -> int:
    """x86 driver: set-up, reference, emulated verify, decoder hook, table + JSON."""
    t0 = time.monotonic()
    deploy = os.path.abspath(args.deploy)
    if not os.path.isdir(deploy):
        print(f"arm64-check: deploy folder {deploy} not found; run `make deploy` or pass DEPLOY=<folder>",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.ort_version:  # the flag wins; else $ARM64_ORT_VERSION; else setup.sh's default (1.19.2)
        env["ARM64_ORT_VERSION"] = args.ort_version
    env["ARM64_NATIVE_DIR"] = os.path.join(REPO, args.native_dir)
    setup = subprocess.run(["bash", os.path.join(HERE, "setup.sh"), sys.executable], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, text=True)
    if setup.returncode != 0:
        return 2
    py_arm = setup.stdout.strip().splitlines()[-1]
    cache = os.path.dirname(os.path.dirname(py_arm))
    t_setup = time.monotonic() - t0
    with tempfile.TemporaryDirectory(prefix="arm64-check-") as work:
        ref = os.path.join(work, "ref.npz")
        rc = cmd_reference(argparse.Namespace(deploy=deploy, out=ref, seed=args.seed, batch=args.batch,
                                              inputs=args.inputs))
        if rc:
            return rc
        t_ref = time.monotonic()
        out = os.path.join(work, "arm64.json")
        proc = subprocess.run([py_arm, os.path.join(HERE, "check.py"), "verify", "--ref", ref, "--deploy", deploy,
                               "--out", out])
        if proc.returncode != 0 or not os.path.isfile(out):
            print(f"arm64-check: the emulated verify step failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        t_arm = time.monotonic() - t_ref
        with open(out) as fh:
            arm = json.load(fh)
        with open(os.path.splitext(ref)[0] + ".json") as fh:
            meta = json.load(fh)
        decoder = decoder_hook(deploy, os.path.join(REPO, args.native_dir), cache, work)
    rows = arm["rows"]
    print(f"arm64-check: {deploy}")
    print(f"  x86 ORT {meta['x86_ort_version']} ({meta['machine']})  vs  arm64 ORT {arm['arm64_ort_version']} "
          f"({arm['machine']}, qemu user-mode), inputs {args.inputs or f'seed {args.seed}'}, batch {meta['batch']}")
    print(f"  x86 SIMD: {' '.join(meta['cpu_flags']) or 'unknown'}")
    for f, info in meta["files"].items():
        if info["ort_format_version"]:
            print(f"  {f}: ORT format version {info['ort_format_version']}")
    print(compare.format_table(rows))
    print(f"  native decoder (aarch64): {decoder['status']}: {decoder['why']}")
    ok = all(r["verdict"] == "pass" for r in rows) and decoder["status"] != "FAIL"
    report = {"deploy": deploy, "ok": ok, "x86_ort_version": meta["x86_ort_version"],
              "x86_cpu_flags": meta["cpu_flags"],
              "arm64_ort_version": arm["arm64_ort_version"], "arm64_numpy_version": arm["numpy_version"],
              "emulation": "qemu-aarch64-static (user mode)", "seed": args.seed, "batch": meta["batch"],
              "inputs": args.inputs or "seeded standard normal", "files": meta["files"], "rows": rows,
              "native_decoder": decoder,
              "seconds": {"setup": round(t_setup, 1), "arm64_verify": round(t_arm, 1),
                          "total": round(time.monotonic() - t0, 1)}}
    path = _report_path(deploy)
    with open(path, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"  wrote {path}  ({report['seconds']['total']:.0f} s; timings under emulation mean nothing)")
    print("arm64-check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="full check (x86 driver)")
    r.add_argument("--deploy", default=os.path.join("artifacts", "vgg11", "deploy"))
    r.add_argument("--ort-version", default=None,
                   help="onnxruntime version on the arm64 side (default $ARM64_ORT_VERSION or 1.19.2)")
    r.add_argument("--native-dir", default=os.path.join("native", "lrdc"))
    for q in (r, ref := sub.add_parser("reference", help="x86 reference outputs")):
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--batch", type=int, default=8)
        q.add_argument("--inputs", default=None, help="npz with the input array instead of seeded noise")
    ref.add_argument("--deploy", required=True)
    ref.add_argument("--out", required=True)
    v = sub.add_parser("verify", help="arm64 side (run under the emulated python)")
    v.add_argument("--ref", required=True)
    v.add_argument("--deploy", required=True)
    v.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.command in (None, "run"):
        if args.command is None:
            args = p.parse_args(["run", *(argv if argv is not None else sys.argv[1:])])
        return cmd_run(args)
    return {"reference": cmd_reference, "verify": cmd_verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
