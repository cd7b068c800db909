"""Command line: argument parsing only; the work is done by :mod:`pipeline.runner` and the packages it calls."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Sequence

from pipeline import __version__
from pipeline.catalog import WHAT, describe
from pipeline.errors import PipelineError
from pipeline.validate_args import check_device, check_output_file, check_seed


def _add_inputs(r: argparse.ArgumentParser) -> None:
    """The flags that choose a run's inputs and config (shared by ``run`` and ``config``)."""
    r.add_argument("--model", help="zoo name (see `list models`), path/to/file.py:factory, or model.onnx")
    r.add_argument("--data", help="dataset: digits, shapes, mnist5k, npz:PATH, imagefolder:PATH, cifar10:PATH")
    r.add_argument("--weights", help="checkpoint for --model (.safetensors, or .pt loaded with weights_only=True)")
    r.add_argument("--config", help="YAML or TOML config file (sections as in README)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set factorize.method=channel_svd (repeatable)")
    r.add_argument("--seed", type=int, help="random seed of every stage (default 0)")
    r.add_argument("--device", help="cpu (default) or cuda")
    r.add_argument("--nproc", type=int, help="data-parallel finetuning processes (torchrun); same as --set finetune.nproc=N")
    r.add_argument("--artifacts", help="artifacts root folder (default: artifacts)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowrank-deploy",
        description="Factorize, finetune, export, quantize, entropy-code and benchmark a CNN for edge deployment.",
    )
    p.add_argument("--version", action="version", version=f"lowrank-deploy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    _add_inputs(r)
    r.add_argument("--json", action="store_true",
                   help="print a machine-readable summary of the run (stages, metrics, deliverables) on stdout")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--only", metavar="STAGE", help="run only this stage (earlier ones must be cached)")
    g.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and all later ones")
    r.add_argument("--upto", metavar="STAGE", help="stop after this stage")
    r.add_argument("--force", action="store_true", help="rerun every stage")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("-v", "--verbose", action="store_true")

    c = sub.add_parser("config", help="print the effective config (defaults < file < flags < --set) as YAML")
    _add_inputs(c)

    ls = sub.add_parser("list", help="every accepted value of a name, with a one-line description")
    ls.add_argument("what", choices=list(WHAT), help="which names to list")
    ls.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")

    u = sub.add_parser("unpack", help="rebuild the runnable int8 ONNX model from a weights container")
    u.add_argument("container", help="weights.lrdc written by the entropy-code stage")
    u.add_argument("-o", "--output", required=True, help="output .onnx path")

    b = sub.add_parser("bench", help="comparison benchmarks (written to artifacts/bench/)")
    b.add_argument("suite", nargs="?", default="all", help="all | factorize | models | finetune | storage | shapes | peers")
    b.add_argument("--quick", action="store_true", help="smaller sizes and fewer samples (for a smoke run)")
    b.add_argument("--out", default=os.path.join("artifacts", "bench"), help="output folder")
    return p


def _summary(result) -> str:
    lines = []
    for r in result.records:
        lines.append(f"  {r.artifact.index:02d} {r.artifact.stage:<13} {r.status:<7} {r.seconds:8.1f}s  {r.artifact.dir.name}")
    if result.deploy_dir is not None:
        lines.append(f"deliverables: {result.deploy_dir}")
        md = result.deploy_dir / "report.md"
        if md.is_file():
            head = md.read_text().splitlines()
            lines.extend(h for h in head[:4] if h.strip())
    return "\n".join(lines)


def _json_summary(result) -> dict:
    """``run --json``: stages, their metrics and the deliverables, as the Python API's result reports them."""
    from lowrank_deploy.api import DeployResult, StageResult

    stages = [StageResult(r.artifact.stage, r.status, float(r.seconds), r.artifact.dir, dict(r.artifact.metrics))
              for r in result.records]
    return DeployResult(result.root, result.deploy_dir, stages).to_json()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C (temp folders, child processes)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowrank-deploy`` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # Without a handler SIGTERM kills at once, like SIGKILL: no finally blocks, temp folders and ONNX Runtime
        # tool subprocesses left behind. As an exception, every `with`/`finally` cleans up and children are killed.
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "list":
            rows = describe(args.what)
            width = max(len(n) for n, _ in rows)
            print("\n".join(n if args.names else f"{n:<{width}}  {d}" for n, d in rows))
            return 0
        if args.command == "unpack":
            from pipeline.entropy.container import unpack_to_onnx

            out = unpack_to_onnx(args.container, check_output_file(args.output, "-o"))
            print(f"wrote {out}")
            return 0
        if args.command == "bench":
            from pipeline.suites import run_bench

            out = run_bench(args.suite, out_dir=args.out, quick=args.quick)
            print(f"wrote {out}")
            return 0
        from pipeline.config import build_config, to_dict

        overrides = list(args.overrides)
        if args.seed is not None:
            check_seed(args.seed)
        if args.device is not None:
            check_device(args.device)
        if args.nproc is not None:
            overrides.append(f"finetune.nproc={args.nproc}")
        cfg = build_config(
            args.config,
            overrides,
            model=args.model,
            data=args.data,
            weights=args.weights,
            seed=args.seed,
            device=args.device,
            artifacts=args.artifacts,
        )
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return 0
        from pipeline.runner import configure_logging, run

        configure_logging(args.verbose)
        result = run(cfg, only=args.only, from_stage=args.from_stage, force=args.force,
                     progress=not args.no_progress, upto=args.upto)
        print(json.dumps(_json_summary(result), indent=2) if args.json else _summary(result))
        return 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # `lowrank-deploy list coders | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:
        print("interrupted: completed stages are kept; rerun to resume", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
