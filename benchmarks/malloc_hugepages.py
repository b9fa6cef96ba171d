"""Huge-page malloc on or off: a SASRec training step on P1's shape, per
backend, with glibc's `glibc.malloc.hugetlb` tunable at 0 and at 1
(`runtime/malloc.py`; `main.py` sets 1 for itself).

Each (backend, setting) runs in its own child process, since glibc reads
the tunable at start-up. A child builds SASRec over `--items` items (the
shipped defaults: width 64, 2 blocks, 2 heads, 50 positions), takes
`--steps` training steps on one random batch of `--positions` predicted
positions, leaves out the first `--warmup` (compilation), and reports the
median ms per step and the user and system CPU seconds per step. The
losses of both settings must be equal: the tunable changes where memory
comes from, not what is computed.

Example:
    python -m benchmarks.malloc_hugepages
    python -m benchmarks.malloc_hugepages --backends jax,torch --positions 6400
"""

import os
import resource
import sys
import time

import config as config_lib

# Keras reads the backend once, at import; children get theirs from the
# parent.
os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from models.sasrec import SASRec  # noqa: E402
from runtime import malloc  # noqa: E402
from runtime import runs  # noqa: E402

SCRIPT = "malloc_hugepages"
SETTINGS = {"off": "glibc.malloc.hugetlb=0", "on": "glibc.malloc.hugetlb=1"}


def child(args):
    common.start_child(0)
    length = 50
    windows = max(1, args.positions // length)
    rng = np.random.default_rng(0)
    model = SASRec(
        num_users=1, num_items=args.items, history_length=length, seed=0
    )
    model.compile(optimizer="adam", jit_compile="auto")
    x = {
        "user": np.zeros(windows, "int32"),
        "history": rng.integers(1, args.items + 1, (windows, length)).astype(
            "int32"
        ),
        "target": rng.integers(1, args.items + 1, (windows, length)).astype(
            "int32"
        ),
    }
    y = np.zeros(windows, "float32")
    times, cpu, losses = [], [], []
    for _ in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        losses.append(float(np.asarray(model.train_on_batch(x, y))))
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(
            (
                after.ru_utime - before.ru_utime,
                after.ru_stime - before.ru_stime,
            )
        )
    kept = np.asarray(cpu[args.warmup :])
    common.print_result(
        {
            "step_ms": 1000 * float(np.median(times[args.warmup :])),
            "user_ms": 1000 * float(np.median(kept[:, 0])),
            "sys_ms": 1000 * float(np.median(kept[:, 1])),
            "losses": losses,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "peak_rss_mib": common.peak_rss_mib(),
        }
    )


def main(argv=None):
    parser = common.parser(SCRIPT, __doc__.split("\n\n")[0])
    common.add_backends_option(parser, default=("jax",))
    parser.add_argument("--items", type=int, default=9724)
    parser.add_argument("--positions", type=int, default=6400)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 900, per="child")
    common.add_child_option(parser)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    backends = common.parse_choices(
        parser, "--backends", args.backends, common.BACKENDS
    )
    machine = common.machine_info()
    command = common.command_line(SCRIPT, sys.argv[1:])
    common.print_header(command, machine)
    if malloc.glibc_version() is None or not malloc.huge_pages_available():
        print(
            "note: no glibc or no transparent huge pages here; both runs "
            "use the same allocator"
        )
    forwarded = [
        "--child",
        f"--items={args.items}",
        f"--positions={args.positions}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    results = {}
    for backend in backends:
        for name, tunables in SETTINGS.items():
            print(f"--- {backend}, huge pages {name}", flush=True)
            results[f"{backend}/{name}"] = common.run_child(
                SCRIPT,
                forwarded,
                backend,
                args.timeout,
                env={"GLIBC_TUNABLES": tunables},
            )
    print(
        "| backend | huge pages | ms/step | user ms/step | sys ms/step | "
        "speed-up | same losses | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend in backends:
        off, on = results[f"{backend}/off"], results[f"{backend}/on"]
        for name, r in (("off", off), ("on", on)):
            if not r["ok"]:
                continue
            same = speedup = ""
            if name == "on" and off["ok"]:
                speedup = f"{off['step_ms'] / r['step_ms']:.2f}x"
                same = str(np.allclose(off["losses"], r["losses"], rtol=1e-5))
            print(
                f"| {backend} | {name} | {r['step_ms']:.0f} | "
                f"{r['user_ms']:.0f} | {r['sys_ms']:.0f} | {speedup} | "
                f"{same} | {r['peak_rss_mib']:.0f} |"
            )
    common.print_failures(results)
    runs.write_json(
        args.json_out,
        {
            "command": command,
            "machine": common.finish_machine(machine),
            "results": results,
        },
    )
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
