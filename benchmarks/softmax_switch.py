"""Where full-catalog softmax stops paying: two-tower training step time
and loss-side memory, in-batch (sampled, logQ) against full-catalog
softmax, as the catalog grows.

For each catalog size in `--items`, a two-tower model (ids only, history
of 50, the default widths) takes `--steps` training steps on random
batches of `--batch` examples per loss; the first steps (compilation) are
left out and the median step time is reported. The loss-side memory is the
float32 logits with their softmax and gradient: `3 * batch * batch * 4`
bytes in-batch, `3 * batch * num_items * 4` bytes full-catalog, plus the
item tower over the catalog for the full softmax. Each backend runs in a
child process.

Example:
    python -m benchmarks.softmax_switch
    python -m benchmarks.softmax_switch --items 2810,27278 --backends jax
"""

import os
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
from models.two_tower import TwoTower  # noqa: E402
from runtime import runs  # noqa: E402

SCRIPT = "softmax_switch"
LOSSES = ("softmax", "full_softmax")
DEFAULT_ITEMS = "2810,9742,27278,100000"


def _batch(rng, batch, num_items, length=50):
    history = rng.integers(0, num_items + 1, (batch, length)).astype("int32")
    return {
        "user": np.zeros(batch, "int32"),
        "item": rng.integers(0, num_items, batch).astype("int32"),
        "history": history,
        "item_logq": np.full(batch, -np.log(num_items), "float32"),
    }


def child(args):
    common.start_child(0)
    rng = np.random.default_rng(0)
    rows = []
    for num_items in [int(n) for n in args.items.split(",")]:
        for loss in LOSSES:
            model = TwoTower(
                num_users=1,
                num_items=num_items,
                embedding_dim=64,
                id_embedding_dim=64,
                hidden_dims=(256,),
                history_length=50,
                loss=loss,
                seed=0,
            )
            model.compile(optimizer="adam", jit_compile="auto")
            x = _batch(rng, args.batch, num_items)
            y = np.ones(args.batch, "float32")
            times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - start)
            logits = args.batch * (
                args.batch if loss == "softmax" else num_items
            )
            rows.append(
                {
                    "num_items": num_items,
                    "loss": loss,
                    "step_ms": 1000 * float(np.median(times[args.warmup :])),
                    "loss_memory_mib": 3 * 4 * logits / 2**20,
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    common.print_result({"rows": rows, "peak_rss_mib": common.peak_rss_mib()})


def main(argv=None):
    parser = common.parser(SCRIPT, __doc__.split("\n\n")[0])
    common.add_backends_option(parser, default=("jax",))
    parser.add_argument("--items", default=DEFAULT_ITEMS)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 1800)
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
    forwarded = [
        "--child",
        f"--items={args.items}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    results = common.run_backends(SCRIPT, backends, forwarded, args.timeout)
    print(
        "| backend | items | in-batch ms/step | full ms/step | full / "
        "in-batch | in-batch loss MiB | full loss MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, result in results.items():
        if not result["ok"]:
            continue
        by = {(r["num_items"], r["loss"]): r for r in result["rows"]}
        for n in sorted({r["num_items"] for r in result["rows"]}):
            a, b = by[(n, "softmax")], by[(n, "full_softmax")]
            print(
                f"| {backend} | {n} | {a['step_ms']:.1f} | "
                f"{b['step_ms']:.1f} | {b['step_ms'] / a['step_ms']:.2f} | "
                f"{a['loss_memory_mib']:.0f} | {b['loss_memory_mib']:.0f} |"
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
