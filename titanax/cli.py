"""The ``titanax`` command line. It never imports JAX: it works on plans only.

Examples::

    titanax passes
    titanax plan --mesh data=4,model=2 --dp data --devices 8
    titanax plan --mesh data=-1 --dp data --devices 8 --print-after-all
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from titanax import __version__
from titanax.errors import MeshError, TitanaxError
from titanax.frontend import DP, MeshSpec, Plan
from titanax.ir import ir_to_dot, ir_to_json, print_ir
from titanax.passes import DEFAULT_PASSES, PASS_REGISTRY, Target, compile_plan, print_after_each, verify_after_each

__all__ = ["main"]

_RENDERERS = {"text": print_ir, "json": ir_to_json, "dot": ir_to_dot}


def _parse_mesh(text: str) -> MeshSpec:
    axes, shape = [], []
    for item in text.split(","):
        name, sep, size = item.partition("=")
        try:
            shape.append(int(size))
        except ValueError:
            raise MeshError.single(
                "TX110", f"--mesh item {item!r} is not NAME=SIZE", "write --mesh data=4,model=2 (-1 infers a size)"
            ) from None
        axes.append(name.strip())
    return MeshSpec(axes=tuple(axes), shape=tuple(shape))


def _cmd_passes(args: argparse.Namespace) -> int:
    for name in sorted(PASS_REGISTRY):
        doc = (PASS_REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        marker = "*" if name in DEFAULT_PASSES else " "
        print(f"{marker} {name:24} {doc}")
    print("\n* = in the default pipeline, in this order: " + ", ".join(DEFAULT_PASSES))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    mesh = _parse_mesh(args.mesh)
    plan = Plan(
        data_parallel=DP(axis=tuple(args.dp.split(",")), accumulate_steps=args.accumulate_steps) if args.dp else None
    )
    callbacks = [verify_after_each]
    if args.print_after_all:
        callbacks.append(print_after_each(sys.stdout))
    passes = tuple(p for p in args.passes.split(",") if p) if args.passes else DEFAULT_PASSES
    ir = compile_plan(mesh, plan, target=Target(device_count=args.devices), passes=passes, callbacks=callbacks)
    if not args.print_after_all:
        sys.stdout.write(_RENDERERS[args.format](ir))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titanax", description="Explicit-parallel training for JAX: inspect plans.")
    parser.add_argument("--version", action="version", version=f"titanax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    passes = sub.add_parser("passes", help="list the IR passes", description="List every registered pass.")
    passes.set_defaults(run=_cmd_passes)
    plan = sub.add_parser(
        "plan",
        help="compile a plan given by flags and print its IR",
        description="Compile a mesh and plan through the pass pipeline and print the IR.",
        epilog="example: titanax plan --mesh data=4,model=2 --dp data --devices 8 --format text",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("--mesh", required=True, help="axes as NAME=SIZE,... (-1 infers one size)")
    plan.add_argument("--dp", help="data-parallel axis or axes, comma-separated")
    plan.add_argument("--accumulate-steps", type=int, default=1, help="microbatches per device per step")
    plan.add_argument("--devices", type=int, help="device count of the target (default: the mesh's product)")
    plan.add_argument("--passes", help="comma-separated passes to run instead of the default pipeline")
    plan.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    plan.add_argument("--format", choices=sorted(_RENDERERS), default="text", help="output format")
    plan.set_defaults(run=_cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (1 for any Titanax error)."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except TitanaxError as err:
        print(f"titanax: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
