"""Command line: argument parsing only; the work is done by :mod:`pipeline.runner` and the packages it calls."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from pipeline.errors import PipelineError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lowrank-deploy",
        description="Factorize, finetune, export, quantize, entropy-code and benchmark a CNN for edge deployment.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the pipeline (cached stages are reused)")
    r.add_argument("--model", help="zoo name (see `list models`), path/to/file.py:factory, or model.onnx")
    r.add_argument("--data", help="dataset: digits, shapes, mnist5k, npz:PATH, imagefolder:PATH, cifar10:PATH")
    r.add_argument("--weights", help="checkpoint for --model (.safetensors, or .pt loaded with weights_only=True)")
    r.add_argument("--config", help="YAML or TOML config file (sections as in README)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set factorize.method=channel_svd (repeatable)")
    r.add_argument("--seed", type=int)
    r.add_argument("--device", help="cpu (default) or cuda")
    r.add_argument("--nproc", type=int, help="data-parallel finetuning processes (torchrun); same as --set finetune.nproc=N")
    r.add_argument("--artifacts", help="artifacts root folder (default: artifacts)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--only", metavar="STAGE", help="run only this stage (earlier ones must be cached)")
    g.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and all later ones")
    r.add_argument("--upto", metavar="STAGE", help="stop after this stage")
    r.add_argument("--force", action="store_true", help="rerun every stage")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.add_argument("-v", "--verbose", action="store_true")

    ls = sub.add_parser("list", help="list registered names")
    ls.add_argument("what", choices=["stages", "formats", "models", "datasets", "targets", "selectors", "coders", "methods"])

    u = sub.add_parser("unpack", help="rebuild the runnable int8 ONNX model from a weights container")
    u.add_argument("container", help="weights.lrdc written by the entropy-code stage")
    u.add_argument("-o", "--output", required=True, help="output .onnx path")

    b = sub.add_parser("bench", help="comparison benchmarks (written to artifacts/bench/)")
    b.add_argument("suite", nargs="?", default="all", help="all | factorize | models | finetune | storage | shapes")
    b.add_argument("--quick", action="store_true", help="smaller sizes and fewer samples (for a smoke run)")
    b.add_argument("--out", default=os.path.join("artifacts", "bench"), help="output folder")
    return p


def _list(what: str) -> list[str]:
    if what == "stages":
        from pipeline.runner import stage_names

        return stage_names()
    if what == "formats":
        from pipeline.factorize.formats import FORMATS

        return FORMATS.names()
    if what == "selectors":
        from pipeline.factorize.ranks import SELECTORS

        return SELECTORS.names()
    if what == "models":
        from pipeline.models import MODELS

        return MODELS.names()
    if what == "datasets":
        from pipeline.data import DATASETS

        return DATASETS.names()
    if what == "targets":
        from benchmarks.targets import TARGETS

        return TARGETS.names()
    if what == "coders":
        from pipeline.entropy.coders import CODERS

        return CODERS.names()
    from pipeline.finetune import FINETUNE_METHODS

    return FINETUNE_METHODS.names()


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lowrank-deploy`` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(_list(args.what)))
            return 0
        if args.command == "unpack":
            from pipeline.entropy.container import unpack_to_onnx

            out = unpack_to_onnx(args.container, args.output)
            print(f"wrote {out}")
            return 0
        if args.command == "bench":
            from pipeline.suites import run_bench

            out = run_bench(args.suite, out_dir=args.out, quick=args.quick)
            print(f"wrote {out}")
            return 0
        from pipeline.config import build_config
        from pipeline.runner import configure_logging, run

        configure_logging(args.verbose)
        overrides = list(args.overrides)
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
        result = run(cfg, only=args.only, from_stage=args.from_stage, force=args.force,
                     progress=not args.no_progress, upto=args.upto)
        print(_summary(result))
        return 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed stages are kept; rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
