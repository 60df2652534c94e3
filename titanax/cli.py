"""The ``titanax`` command line. It never imports JAX: it works on plans only.

Examples::

    titanax check plans/*.tx
    titanax compile plans/3d.tx --dump-ir --format dot | dot -Tsvg > plan.svg
    titanax compile examples/gpt_small/plans/dp_tp.tx --model --devices 8
    titanax audit examples/gpt_small/plans/dp_tp.tx --devices 8
    titanax fmt plans/3d.tx --check
    titanax plan --mesh data=4,model=2 --dp data --devices 8
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from titanax import __version__
from titanax.errors import MeshError, ParseError, PlanError, StepFnError, TitanaxError, TrainingError
from titanax.frontend import DP, MeshSpec, Plan
from titanax.frontend.bounds import MAX_DEVICES, shown
from titanax.frontend.language import format_plan, parse
from titanax.ir import PlanIR, ir_to_dot, ir_to_json, print_ir, schedule_from_ir
from titanax.launch import GRACE_S, launch
from titanax.loader import LoadedPlan, load_plan, read_bounded, read_source
from titanax.passes import (
    DEFAULT_PASSES,
    PASS_REGISTRY,
    VALIDATION_PASSES,
    Target,
    compile_plan,
    parse_pipeline,
    print_after_each,
    verify_after_each,
)

__all__ = ["main"]

_FORMATS = ("text", "json", "dot")


def _render(ir: PlanIR, fmt: str, locations: bool) -> str:
    renderer = {"text": print_ir, "json": ir_to_json, "dot": ir_to_dot}[fmt]
    return renderer(ir, locations=locations)


def _report(err: TitanaxError) -> None:
    """Print every diagnostic, in source order: located ones as ``path:line:col: error[...]``."""
    ordered = sorted(
        err.diagnostics,
        key=lambda d: (
            d.location is None,
            d.location.path if d.location else "",
            d.location.line if d.location else 0,
            d.location.column if d.location else 0,
        ),
    )
    for diagnostic in ordered:
        text = diagnostic.render()
        print(text if diagnostic.location else f"titanax: {text}", file=sys.stderr)
    count = len(ordered)
    print(f"titanax: {count} error{'s' if count > 1 else ''}", file=sys.stderr)


def _target(args: argparse.Namespace, loaded: LoadedPlan | None = None) -> Target:
    count = args.devices if args.devices is not None else (loaded.mesh.requested_device_count if loaded else None)
    return Target(device_count=count)


def _parse_pass_list(text: str | None, default: Sequence[str]) -> tuple[str, ...]:
    return tuple(parse_pipeline(text)) if text else tuple(default)


# -- titanax passes -------------------------------------------------------------
def _cmd_passes(args: argparse.Namespace) -> int:
    for name in sorted(PASS_REGISTRY):
        # The docstring's first paragraph, on one line.
        doc = " ".join((PASS_REGISTRY[name].__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "")
        marker = "*" if name in DEFAULT_PASSES else " "
        print(f"{marker} {name:24} {doc}")
    print("\n* = in the default pipeline, in this order: " + ", ".join(DEFAULT_PASSES))
    return 0


# -- titanax compile ------------------------------------------------------------
def _bytes_text(count: int | None) -> str:
    if count is None:
        return ""
    for unit, size in (("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            return f": {count / size:.1f} {unit}"
    return f": {count} B"


def _runs_text(collective) -> str:
    """How often a collective runs, for the summary (``executions`` and ``cadence`` of its node)."""
    per = "in the loops around it" if collective.cadence == "traced" else f"once per {collective.cadence}"
    if collective.executions is None:
        return f"{per}, trip count unknown"
    return f"{collective.executions} times per step, {per}"


def _summary(loaded: LoadedPlan, ir: PlanIR) -> str:
    axes = " x ".join(f"{a.name}={a.size}" for a in ir.axes())
    count = ir.mesh().device_count
    lines = [f"{loaded.path}: ok: mesh {axes} ({count if count is not None else '?'} devices)"]
    for _, node in ir.items():
        if node.kind == "parallel_dim":
            details = {k: v for k, v in node.attributes().items() if k != "axes"}
            extra = ", ".join(f"{k}={v}" for k, v in details.items())
            kind = node.type_name.removeprefix("parallel_dim.").replace("fully_sharded", "fully sharded data")
            lines.append(f"  {kind} parallel over {', '.join(node.axis_names)} ({extra})")
    if ir.params():
        sharded = [p for p in ir.params() if p.axis_names]
        lines.append(f"  parameters: {len(ir.params())}, of which {len(sharded)} split over devices")
    collectives = ir.collectives()
    for collective in collectives:
        reduction = f" {collective.reduction}" if collective.reduction else ""
        runs = f", {_runs_text(collective)}" if collective.executions != 1 else ""
        lines.append(
            f"  collective {collective.name}: {collective.op}{reduction} of {collective.operand} over "
            f"{', '.join(collective.axes)} (group of {collective.group_size}{runs}){_bytes_text(collective.payload_bytes)}"
        )
    known = [c for c in collectives if c.executions is not None]
    if collectives and all(c.payload_bytes is not None for c in collectives):
        # Each node says how many times it runs per step (pipeline permutes once per tick).
        total = sum(c.payload_bytes * c.executions for c in known)
        unknown = len(collectives) - len(known)
        more = f" (+{unknown} in loops of unknown length)" if unknown else ""
        lines.append(
            f"  {sum(c.executions for c in known)} collectives per step{more}, {_bytes_text(total)[2:]} per device"
        )
    if loaded.model and not ir.params():
        lines.append(f"  model {loaded.model} (named in the file, not imported; add --model to trace it)")
    return "\n".join(lines) + "\n"


def _model_entry(loaded: LoadedPlan, model: str) -> str:
    entry = model or loaded.model
    if not entry:
        raise PlanError.single(
            "TX231",
            f"--model names no entry point and {loaded.path} has no model statement",
            'use --model package.module:function, or add model "package.module:function" to the file',
        )
    return entry


def _model_paths(loaded: LoadedPlan, entry: str, model_path: list[str] | None) -> list[str]:
    """Where the model module is imported from: the ``--model-path`` folders, else the nearest folder
    above the plan file that holds the module path (never the current directory as such)."""
    from titanax.runtime.workload import package_root

    if model_path:
        missing = [path for path in model_path if not os.path.isdir(path)]
        if missing:
            raise StepFnError.single(
                "TX506", f"--model-path {missing[0]} is not a folder", "name the folder the module path starts in"
            )
        return list(model_path)
    root = package_root(entry.partition(":")[0], Path(loaded.path).resolve().parent)
    return [str(root)] if root is not None else []


def _workload_engine(loaded: LoadedPlan, entry: str, devices: int | None, model_path: list[str] | None = None):
    """Import the model's workload and build the Engine for the plan: ``(workload, engine)``."""
    if devices is not None and "jax" not in sys.modules:
        # On CPU, simulate the devices the plan needs (ignored by GPU and TPU backends).
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    from titanax.runtime import Engine, load_workload

    location = loaded.model_location if entry == loaded.model else None
    workload = load_workload(entry, location, paths=_model_paths(loaded, entry, model_path))
    return workload, Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=workload.optimizer)


def _workload_state(loaded: LoadedPlan, entry: str, devices: int | None, model_path: list[str] | None = None):
    """Build the Engine for the plan and lay out the model's parameters: ``(workload, state)``."""
    workload, engine = _workload_engine(loaded, entry, devices, model_path)
    return workload, engine.create_state(workload.params, stacked=workload.stacked)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(text: str) -> int:
    """``80GiB``, ``80GB``, ``1.5e9`` as bytes; TX720 for anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise TrainingError.single(
            "TX720", f"--device-memory {text!r} is not a size", "write it as 80GiB, 80GB or a number of bytes"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _memory(loaded: LoadedPlan, args: argparse.Namespace) -> int:
    """Print the step's per-device memory from an ahead-of-time compile; 1 when it does not fit ``--device-memory``."""
    budget = _parse_size(args.device_memory) if args.device_memory is not None else None
    entry = _model_entry(loaded, args.model or "")
    workload, engine = _workload_engine(loaded, entry, args.devices, args.model_path)
    estimate = engine.memory_estimate(workload.step, workload.params, workload.batch, stacked=workload.stacked)
    sys.stdout.write(f"{loaded.path}: {engine.device_count} devices\n" + estimate.report(budget))
    return 1 if budget is not None and not estimate.fits(budget) else 0


def _trace_model(loaded: LoadedPlan, entry: str, devices: int | None, model_path: list[str] | None):
    """Build the Engine for the plan, lay out the model's parameters and trace its step: ``(ir, engine)``."""
    workload, state = _workload_state(loaded, entry, devices, model_path)
    return workload.step.plan_ir(state, workload.batch), state.engine


# -- titanax audit -----------------------------------------------------------------
def _load(path: str, args: argparse.Namespace) -> LoadedPlan:
    """Load ``path`` with the command's ``--set`` overrides (located as ``--set:N``)."""
    return load_plan(path, validate=False, overrides=getattr(args, "set", None) or [])


def _cmd_audit(args: argparse.Namespace) -> int:
    loaded = _load(args.file, args)
    workload, state = _workload_state(loaded, _model_entry(loaded, args.model or ""), args.devices, args.model_path)
    audit = workload.step.audit(state, workload.batch)
    sys.stdout.write(audit.table())
    if audit.ok:
        print(f"{loaded.path}: ok: the compiled step communicates exactly what the IR lists")
        return 0
    wrong = [row for row in audit.rows if not row.ok]
    print(
        f"titanax: error[TX904]: {loaded.path}: the compiled step and the IR differ in {len(wrong)} row(s)"
        + (f" and {len(audit.unreadable)} unreadable collective(s)" if audit.unreadable else "")
        + "\n  hint: rows marked NOT IN IR communicate something the IR does not list; MISMATCH rows move other "
        "bytes or dtypes than it says (XLA merges identical collectives: give them distinct operands)",
        file=sys.stderr,
    )
    return 1


def _cmd_compile(args: argparse.Namespace) -> int:
    loaded = _load(args.file, args)
    if args.memory or args.device_memory is not None:
        return _memory(loaded, args)
    engine = None
    if args.model is not None:
        ir, engine = _trace_model(loaded, _model_entry(loaded, args.model), args.devices, args.model_path)
    else:
        passes = _parse_pass_list(args.passes, DEFAULT_PASSES)
        callbacks = [verify_after_each]
        if args.print_after_all:
            callbacks.append(print_after_each(sys.stdout))
        ir = loaded.compile(target=_target(args, loaded), passes=passes, callbacks=callbacks)
        if args.print_after_all and not (args.dump_ir or args.schedule or args.schedule_svg):
            return 0
    if args.schedule or args.schedule_svg:
        return _write_schedule(loaded, ir, args)
    if args.dump_ir:
        sys.stdout.write(_render(ir, args.format, args.locations))
    else:
        sys.stdout.write(_summary(loaded, ir))
        if engine is not None and engine.state_memory is not None:
            sys.stdout.write(engine.state_memory.table())
    return 0


def _write_schedule(loaded: LoadedPlan, ir: PlanIR, args: argparse.Namespace) -> int:
    schedule = schedule_from_ir(ir)
    if schedule is None or not schedule.ops:
        raise PlanError.single(
            "TX232",
            f"{loaded.path} has no pipeline schedule to show",
            "add a pipeline statement, and run the default passes (build-schedule makes the table)",
        )
    # A backward that reruns its forward costs one forward more in the cost model.
    dim = ir.pipeline_parallel()
    recompute = 1.0 if dim is not None and dim.remat == "full" else 0.0
    if args.schedule:
        sys.stdout.write(schedule.timeline(recompute))
    if args.schedule_svg:
        _write_text(args.schedule_svg, schedule.svg(recompute), "the schedule picture")
        print(f"wrote {args.schedule_svg}", file=sys.stderr)
    return 0


def _write_text(path: str, text: str, what: str) -> None:
    """Write ``text`` to ``path``, or raise TX615 naming the path and why (read-only, no such folder...)."""
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
    except OSError as err:
        folder = os.path.dirname(path) or "."
        hint = (
            f"create the folder {folder} first, or write somewhere else"
            if not os.path.isdir(folder)
            else "make the file writable (chmod u+w), or write somewhere else"
        )
        raise ParseError.single("TX615", f"cannot write {what} to {path}: {err.strerror or err}", hint) from None


# -- titanax check ---------------------------------------------------------------
def _cmd_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            loaded = _load(path, args)
            target = _target(args, loaded)
            # Rewrites need sizes; with no device count known for an `auto` axis, only the checks run.
            inferable = target.device_count is not None or all(s > 0 for s in loaded.mesh.shape)
            loaded.compile(target=target, passes=DEFAULT_PASSES if inferable else VALIDATION_PASSES)
        except TitanaxError as err:
            _report(err)
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


# -- titanax fmt -----------------------------------------------------------------
def _cmd_fmt(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            source = read_bounded(sys.stdin.buffer, "<stdin>") if path == "-" else read_source(path)
            formatted = format_plan(parse(source))
        except TitanaxError as err:
            _report(err)
            status = 1
            continue
        if args.check:
            if formatted != source.text:
                print(f"would reformat {path}")
                status = 1
        elif path == "-" or args.stdout:
            sys.stdout.write(formatted)
        elif formatted != source.text:
            try:
                _write_text(path, formatted, "the formatted plan")
            except TitanaxError as err:
                _report(err)
                status = 1
                continue
            print(f"reformatted {path}")
    return status


# -- titanax plan (flags instead of a file) -----------------------------------
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


def _cmd_plan(args: argparse.Namespace) -> int:
    mesh = _parse_mesh(args.mesh)
    plan = Plan(
        data_parallel=DP(axis=tuple(args.dp.split(",")), accumulate_steps=args.accumulate_steps) if args.dp else None
    )
    callbacks = [verify_after_each]
    if args.print_after_all:
        callbacks.append(print_after_each(sys.stdout))
    passes = _parse_pass_list(args.passes, DEFAULT_PASSES)
    ir = compile_plan(mesh, plan, target=Target(device_count=args.devices), passes=passes, callbacks=callbacks)
    if not args.print_after_all:
        sys.stdout.write(_render(ir, args.format, False))
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = launch(
        command,
        processes=args.processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        timeout_s=args.timeout,
        grace_s=args.grace,
    )
    return result.status


# -- argument parsing ------------------------------------------------------------
def _subcommand(sub, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, help="device count of the target (default: the mesh's own count)")
    parser.add_argument(
        "--passes", help="comma-separated passes to run instead of the default pipeline; options as name{key=value,...}"
    )
    parser.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument("--format", choices=_FORMATS, default="text", help="IR output format (dot is for Graphviz)")


def _add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change a setting of the plan without editing the file, e.g. --set pipeline.microbatches=8 or "
        "--set mesh.data=4 (repeatable; STATEMENT.SETTING as the .tx file writes it)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titanax",
        description="Explicit-parallel training for JAX: check, format and compile parallel plans; launch runs.",
        epilog="run `titanax COMMAND --help` for each command's options and an example",
    )
    parser.add_argument("--version", action="version", version=f"titanax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = _subcommand(
        sub,
        "compile",
        "compile a .tx plan through the passes and show its IR",
        "Parse a .tx plan, run the pass pipeline, and print a summary or the IR.",
        "titanax compile examples/plans/3d.tx --dump-ir --format dot > plan.dot\n"
        "  titanax compile examples/plans/dp_pp.tx --schedule --schedule-svg schedule.svg\n"
        "  titanax compile examples/plans/dp_pp.tx --schedule --set pipeline.schedule=zbh1 --set pipeline.microbatches=8\n"
        "  titanax compile examples/gpt_small/plans/dp_tp.tx --model --devices 8",
    )
    compile_.add_argument("file", help="the .tx plan file")
    compile_.add_argument("--dump-ir", action="store_true", help="print the IR after all passes")
    compile_.add_argument("--locations", action="store_true", help="annotate IR nodes with their source location")
    compile_.add_argument("--schedule", action="store_true", help="print the pipeline schedule as a timeline")
    compile_.add_argument("--schedule-svg", metavar="OUT.svg", help="draw the pipeline schedule as an SVG picture")
    compile_.add_argument(
        "--model",
        nargs="?",
        const="",
        metavar="MODULE:FUNCTION",
        help="import this tx.Workload entry point (or, with no value, the file's model statement), lay out its "
        "parameters and trace its step, so the IR lists every collective with its bytes per step (imports JAX "
        "and RUNS the model module's code: use it only on code you trust)",
    )
    compile_.add_argument(
        "--memory",
        action="store_true",
        help="compile the model's step ahead of time (the --model entry point, or the file's model statement) and "
        "print its per-device memory, allocating nothing on the devices",
    )
    compile_.add_argument(
        "--device-memory",
        metavar="SIZE",
        help="with --memory: say whether the step fits in SIZE per device (80GiB, 80GB, bytes); exit 1 if not",
    )
    _add_model_path_flag(compile_)
    _add_pipeline_flags(compile_)
    _add_set_flag(compile_)
    compile_.set_defaults(run=_cmd_compile)

    audit = _subcommand(
        sub,
        "audit",
        "compile a model's step and check its collectives against the IR",
        "Import the model's tx.Workload (the file's model statement, or --model), compile its step for the plan on "
        "the devices present, and print the IR's collectives and the compiled HLO's side by side, one row per kind, "
        "mesh axes, reduction, permute pairs and runs per step, with bytes and dtypes. Exit 1 on any difference, "
        "including an HLO collective the IR does not list. Imports JAX and runs the model's code.",
        "titanax audit examples/gpt_small/plans/dp_tp.tx --devices 8",
    )
    audit.add_argument("file", help="the .tx plan file")
    audit.add_argument("--model", metavar="MODULE:FUNCTION", help="the tx.Workload entry point (default: the file's)")
    _add_model_path_flag(audit)
    audit.add_argument("--devices", type=int, help="simulated CPU devices (sets XLA_FLAGS before JAX starts)")
    _add_set_flag(audit)
    audit.set_defaults(run=_cmd_audit)

    check = _subcommand(
        sub,
        "check",
        "validate .tx plans, reporting every error",
        "Parse and validate each plan file; print every error with its location. Exit 1 if any fails.",
        "titanax check examples/plans/*.tx",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help=".tx plan files")
    check.add_argument("--devices", type=int, help="device count of the target (default: the mesh's own count)")
    _add_set_flag(check)
    check.set_defaults(run=_cmd_check)

    fmt = _subcommand(
        sub,
        "fmt",
        "rewrite .tx plans in canonical form",
        "Rewrite plan files in canonical form, keeping comments. Idempotent. `-` reads stdin and writes stdout.",
        "titanax fmt examples/plans/*.tx --check",
    )
    fmt.add_argument("files", nargs="+", metavar="FILE", help=".tx plan files, or - for stdin")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not formatted")
    fmt.add_argument("--stdout", action="store_true", help="print the formatted text instead of rewriting files")
    fmt.set_defaults(run=_cmd_fmt)

    passes = _subcommand(
        sub,
        "passes",
        "list the IR passes",
        "List every registered pass; * marks the default pipeline.",
        "titanax passes",
    )
    passes.set_defaults(run=_cmd_passes)

    plan = _subcommand(
        sub,
        "plan",
        "compile a plan given by flags and print its IR",
        "Compile a data-parallel mesh and plan given as flags (no file) and print the IR.",
        "titanax plan --mesh data=4,model=2 --dp data --devices 8 --format text",
    )
    plan.add_argument("--mesh", required=True, help="axes as NAME=SIZE,... (-1 infers one size)")
    plan.add_argument("--dp", help="data-parallel axis or axes, comma-separated")
    plan.add_argument("--accumulate-steps", type=int, default=1, help="microbatches per device per step")
    _add_pipeline_flags(plan)
    plan.set_defaults(run=_cmd_plan)

    launch = _subcommand(
        sub,
        "launch",
        "run a training script as several cooperating local processes",
        "Start N copies of the command with a jax.distributed coordinator on a free loopback port; "
        "tx.distributed.initialize() in the script joins them. Output lines are prefixed with the rank; if any "
        "process fails, the others are stopped and the launcher exits with its status.",
        "titanax launch --processes 2 --devices-per-process 4 -- python examples/mnist_dp/train.py --steps 200",
    )
    launch.add_argument("--processes", type=int, required=True, help="how many processes to start")
    launch.add_argument(
        "--devices-per-process", type=int, help="simulated CPU devices per process (sets XLA_FLAGS; CPU only)"
    )
    launch.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    launch.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="stop every process and exit with 124 if the run takes longer (a hung rank is found no other way)",
    )
    launch.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        metavar="SECONDS",
        help=f"how long processes get after each signal before a stronger one (default: {GRACE_S:g})",
    )
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run, e.g. python train.py")
    launch.set_defaults(run=_cmd_launch)
    return parser


def _add_model_path_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-path",
        action="append",
        metavar="DIR",
        help="folder the model's module path starts in (repeatable); default: the nearest folder above the plan "
        "file holding that module. The current directory is not searched unless named (--model-path .)",
    )


def _check_devices(args: argparse.Namespace) -> None:
    devices = getattr(args, "devices", None)
    if devices is not None and not 1 <= devices <= MAX_DEVICES:
        raise MeshError.single(
            "TX111",
            f"--devices {shown(devices)} must be from 1 to {MAX_DEVICES:,}",
            "give the number of devices of the target, e.g. --devices 8, or leave it out to use the mesh's own count",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (1 for any Titanax error, 2 for a bug)."""
    args = _parser().parse_args(argv)
    try:
        _check_devices(args)
        return args.run(args)
    except TitanaxError as err:
        _report(err)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away; stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # noqa: BLE001 - the command line never shows a traceback
        print(
            f"titanax: internal error: {type(err).__name__}: {err}\n"
            "titanax: this is a bug in Titanax; please report it with the command and the input file",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
