"""``newtonrl`` command line: train | bench | dataset | pretrain | eval | export.

User errors (:class:`pipeline.errors.NewtonRLError`) print one line and exit with code 2; anything else is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pipeline.errors import NewtonRLError

log = logging.getLogger("newtonrl")

#: sub-commands implemented in pipeline/commands/<module>.py (name -> module)
COMMANDS = {
    "train": "train",
    "dataset": "dataset",
    "pretrain": "pretrain",
    "eval": "eval",
    "export": "export",
}


def bench_verbs() -> list[str]:
    """Names of the bench modules in pipeline/bench (module newton_truth -> verb newton-truth)."""
    import pipeline.bench

    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(pipeline.bench.__path__))


def _bench_main(args: argparse.Namespace) -> int:
    from pipeline.bench import render, write_json

    module = importlib.import_module(f"pipeline.bench.{args.verb.replace('-', '_')}")
    result = module.run(args)
    print(render(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="newtonrl", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"pipeline.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pipeline.commands.{module_name}":
                raise
            continue
        cmd = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.main)
    bench = sub.add_parser("bench", help="benchmarks: print a table, --json PATH writes the same figures")
    verbs = bench.add_subparsers(dest="verb", required=True)
    for verb in bench_verbs():
        module = importlib.import_module(f"pipeline.bench.{verb.replace('-', '_')}")
        doc = (module.__doc__ or verb).strip().splitlines()[0]
        vp = verbs.add_parser(verb, help=doc, description=doc)
        vp.add_argument("--json", help="also write the figures as JSON to this path")
        module.add_arguments(vp)
        vp.set_defaults(func=_bench_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except NewtonRLError as exc:
        print(f"newtonrl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
