"""How the plan compiler's passes scale with the number of parameters.

Builds parameter trees of 500 and 5,000 leaves (pure Python ``(path, shape)``
tuples, no JAX) and times what ``Engine`` does with them: ``compile_plan`` with
the default passes, then ``resolve-shardings`` and ``check-stage-balance`` in a
``PassPipeline``, with the IR verifier after every pass (as ``Engine.create_state``
runs them). Three plans on 8 devices:

- ``dp``: data parallelism only (every leaf replicated);
- ``tp``: data x tensor parallelism, with ``column``/``row`` rules splitting five
  leaves out of six (``norm/scale`` stays replicated by the default rule);
- ``pp``: data x pipeline parallelism, the stacked ``blocks`` entry split over the
  pipeline axis and four stages naming ``embed``, ``blocks[i:j]`` and ``head``.

Each case is timed ``--repeat`` times and the fastest run kept, the garbage
collector running as usual (its passes over the live objects are part of the cost). The last line is
JSON: ``seconds_{size}_{plan}`` for every case and ``growth_5000_over_500``, the
worst 5000/500 time ratio over the three plans. Targets: each 5,000-leaf case under
2 s, growth at most 12 (10x the leaves; quadratic passes give about 100).

Run: python benchmarks/ir_scaling.py [--sizes 500,5000] [--repeat 3]
"""

import argparse
import gc
import json
import time

from titanax.frontend import DP, PP, TP, MeshSpec, Plan
from titanax.passes import CheckStageBalance, PassPipeline, ResolveShardings, Target, compile_plan, verify_after_each

DEVICES = 8
LAYERS = 8  # stacked on dimension 0 of every leaf under the pipeline's blocks
TP_LEAVES = (  # (name, shape) of the leaves of one transformer-like layer
    ("attn/qkv/w", (64, 192)),
    ("attn/out/w", (64, 64)),
    ("mlp/in/w", (64, 256)),
    ("mlp/in/b", (256,)),
    ("mlp/out/w", (256, 64)),
    ("norm/scale", (64,)),
)
TP_RULES = {"**/qkv/w": "column", "**/attn/out/w": "row", "**/mlp/in/*": "column", "**/mlp/out/w": "row"}


def dp_case(size: int):
    params = tuple((f"layers/{i}/dense/w", (32, 32)) for i in range(size))
    return MeshSpec(axes=("data",)), Plan(data_parallel=DP(axis="data")), params, ()


def tp_case(size: int):
    params = tuple(
        (f"layers/{i // len(TP_LEAVES)}/{name}", shape)
        for i, (name, shape) in ((i, TP_LEAVES[i % len(TP_LEAVES)]) for i in range(size))
    )
    plan = Plan(data_parallel=DP(axis="data"), tensor_parallel=TP(axis="model", rules=TP_RULES))
    return MeshSpec(axes=("data", "model"), shape=(2, 4)), plan, params, ()


def pp_case(size: int):
    blocks = tuple((f"blocks/unit{i}/w", (LAYERS, 16, 16)) for i in range(size - 2))
    params = (("embed/w", (32, 16)), *blocks, ("head/w", (16, 4)))
    stages = [("embed", "blocks[0:2]"), ("blocks[2:4]",), ("blocks[4:6]",), ("blocks[6:8]", "head")]
    plan = Plan(data_parallel=DP(axis="data"), pipeline_parallel=PP(axis="pipe", microbatches=8, stages=stages))
    return MeshSpec(axes=("data", "pipe"), shape=(2, 4)), plan, params, ()


CASES = {"dp": dp_case, "tp": tp_case, "pp": pp_case}


def run_once(mesh, plan, params, stacked) -> tuple[float, int]:
    """Seconds to compile the plan and resolve ``params`` against it; and the resolved parameter count."""
    target = Target(device_count=DEVICES)
    gc.collect()  # start every run from the same heap; the collector stays on while timing
    start = time.perf_counter()
    ir = compile_plan(mesh, plan, target=target)
    resolve = ResolveShardings(parameters=params, stacked=stacked)
    ir = PassPipeline([resolve, CheckStageBalance()], callbacks=(verify_after_each,)).run(ir, target)
    return time.perf_counter() - start, len(ir.params())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="500,5000", help="comma-separated leaf counts; the first and last set growth"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is kept")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, float] = {}
    for size in sizes:
        for name, case in CASES.items():
            mesh, plan, params, stacked = case(size)
            runs = [run_once(mesh, plan, params, stacked) for _ in range(args.repeat)]
            seconds, resolved = min(r[0] for r in runs), runs[0][1]
            assert resolved == size, f"{name}: resolved {resolved} of {size} parameters"
            results[f"seconds_{size}_{name}"] = round(seconds, 4)
            print(f"{name} {size:6d} leaves: {seconds * 1e3:9.1f} ms ({seconds / size * 1e6:6.1f} us/leaf)", flush=True)
    small, large = sizes[0], sizes[-1]
    growth = max(results[f"seconds_{large}_{n}"] / results[f"seconds_{small}_{n}"] for n in CASES)
    results[f"growth_{large}_over_{small}"] = round(growth, 3)
    results["devices"] = DEVICES
    print(json.dumps(results))


if __name__ == "__main__":
    main()
