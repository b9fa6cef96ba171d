"""Speed and memory of the template model on each Keras backend.

For every backend in `--backends`, the parent process starts a child process
(`KERAS_BACKEND` is read once, at `import keras`, so a process cannot switch
backend) that:

1. loads the data (`data.load(cfg.data)`: the shipped MovieLens files
   unless `--set data.*` says otherwise) and splits it with the configured
   split (protocol P1: per-user chronological by default);
2. builds the model with `recommenders.build` from `config.default()` plus
   `--set` overrides (the two-tower by default; any Keras family), and
   fits it on train for `--epochs` epochs without validation
   (`valid=None`, `verbose=0`), timing each epoch with a callback. Epoch 1
   includes tracing / XLA compilation (twice on JAX and TensorFlow: the
   last, partial batch has a new shape) and is reported on its own; "s/epoch"
   is the mean of the later epochs and examples/s is `len(train)` divided
   by it;
3. times `serving.retrieval.top_k_by_score` for every user with all
   interactions masked, top-10, 256 MB blocks: scoring every item and
   ranking blockwise with `ops.top_k`, the work of `main.py
   compute_predictions` for a model without vectors (it ranks dot-product
   models with their vectors, `scale.index`), minus loading the model and
   writing JSON. The first call (which compiles the
   predict function) is the one reported; a second, warm call is kept in
   the JSON;
4. reports the parameter count and the peak resident memory of the child
   (`getrusage(RUSAGE_SELF).ru_maxrss`: data, libraries and model together;
   the child starts as main.py does, with `runtime.startup.prepare()` and
   `runtime.seeding.set_seed`, so TensorFlow is imported only on its own
   backend), as one `RESULT {json}` line on stdout.

The parent prints a table and writes every figure, the command line, the
machine (cores, load average) and library versions to `--json-out`. The
children inherit the environment, so thread settings such as
`OMP_NUM_THREADS=1` (torch's intra-op pool) apply to every backend run.
Timings on a shared machine move with its load: compare runs by the load
averages recorded beside them.

Example:
    python -m benchmarks.template_speed
    python -m benchmarks.template_speed --backends jax,torch --epochs 5 \\
        --set train.batch_size=2048
"""

import os
import sys
import time

import config as config_lib

# Keras reads the backend once, at import. The parent's (it only parses
# options and starts children) is chosen as main.py does; each child's is
# set by its parent.
os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

import keras
import numpy as np

import data
import recommenders
from benchmarks import common
from runtime import runs
from serving import retrieval

SCRIPT = "template_speed"
TOP_K = 10
BUDGET_MB = 256


def parse_args(argv):
    parser = common.parser(
        SCRIPT,
        "Per Keras backend: training time per epoch, examples/s, peak "
        "memory\nand the time to recommend for all users "
        "(compute_predictions) of the\ndefault template model; each backend "
        "runs in its own child process.",
        epilog=f"example:\n  {common.module_command(SCRIPT)} "
        "--backends jax,torch \\\n      --set train.batch_size=2048",
    )
    common.add_backends_option(parser)
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs to fit, >= 2: the first (with compilation) is "
        "reported apart from the mean of the rest (default %(default)s)",
    )
    common.add_set_option(
        parser,
        "config override forwarded to every child, same syntax as "
        "main.py, e.g. --set train.batch_size=2048 (repeatable)",
    )
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 3600.0)
    common.add_child_option(parser)
    args = parser.parse_args(argv)
    args.backends = common.parse_choices(
        parser, "--backends", args.backends, common.BACKENDS
    )
    if args.epochs < 2:
        parser.error(
            "`--epochs` must be >= 2 (epoch 1 includes compilation and is "
            f"reported apart). Received: {args.epochs}"
        )
    common.check_overrides(parser, args.overrides)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    return run_parent(args, argv)


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


def run_parent(args, argv):
    command = common.command_line(SCRIPT, argv)
    machine = common.machine_info()
    common.print_header(command, machine)
    child_args = ["--child", "--epochs", str(args.epochs)]
    results = common.run_backends(
        SCRIPT,
        args.backends,
        child_args + common.set_args(args.overrides),
        args.timeout,
    )
    print()
    print(format_table(results))
    print()
    common.finish_machine(machine)
    failed = common.print_failures(results)
    payload = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "machine": machine,
        "results": results,
    }
    runs.write_json(args.json_out, payload)
    print(f"wrote {args.json_out}")
    return 1 if failed else 0


def format_table(results):
    """Markdown table, one row per backend; FAILED rows for failures."""
    head = (
        "| backend | first epoch s (compile) | s/epoch | examples/s "
        "| predict all users s | peak RSS MiB | params |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for backend, r in results.items():
        if not r["ok"]:
            lines.append(f"| {backend} | FAILED | | | | | |")
            continue
        lines.append(
            f"| {backend} | {r['first_epoch_s']:.2f} | {r['epoch_s']:.2f} "
            f"| {r['examples_per_s']:,.0f} | {r['predict_s']:.2f} "
            f"| {r['peak_rss_mib']:,.0f} | {r['params']:,} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Child
# ---------------------------------------------------------------------------


def run_child(args):
    """Measure one backend in this process and print one RESULT line."""
    load_start = list(os.getloadavg())
    cfg = config_lib.override(
        config_lib.default(), args.overrides + ["train.verbose=0"]
    )
    common.start_child(cfg.seed)
    dataset = data.load(cfg.data)
    train_split, _, _ = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    rss_before_fit = common.peak_rss_mib()
    timer = common.EpochTimer()
    rec = recommenders.build(cfg, dataset)
    common.time_fit(rec, timer)
    rec.fit(train_split, None, epochs=args.epochs)
    if len(timer.seconds) != args.epochs:
        raise RuntimeError(
            f"Timed {len(timer.seconds)} epochs, expected {args.epochs}: "
            "`KerasRecommender.fit` no longer trains the model it compiles "
            "(see `common.time_fit`)."
        )
    rest = timer.seconds[1:]
    epoch_s = float(np.mean(rest))

    users = np.arange(dataset.interactions.num_users)
    exclude = dataset.interactions.to_csr()
    predict_times = []
    for _ in range(2):
        rec._item_cache = None  # recompute item embeddings like a fresh load
        start = time.perf_counter()
        retrieval.top_k_by_score(
            rec, users, exclude, TOP_K, BUDGET_MB, progress=False
        )
        predict_times.append(time.perf_counter() - start)

    backend = keras.backend.backend()
    common.print_result(
        {
            "backend": backend,
            "keras": keras.version(),
            "threads": common.backend_threads(backend),
            "jit_compile": bool(getattr(rec.model, "jit_compile", False)),
            "train_examples": len(train_split),
            "num_users": int(dataset.interactions.num_users),
            "num_items": int(dataset.interactions.num_items),
            "batch_size": cfg.train.batch_size,
            "steps_per_epoch": -(-len(train_split) // cfg.train.batch_size),
            "epochs": args.epochs,
            "epoch_seconds": timer.seconds,
            "first_epoch_s": timer.seconds[0],
            "epoch_s": epoch_s,
            "epoch_s_min": float(np.min(rest)),
            "examples_per_s": len(train_split) / epoch_s,
            "predict_s": predict_times[0],
            "predict_warm_s": predict_times[1],
            "params": int(rec.model.count_params()),
            "peak_rss_mib_before_fit": rss_before_fit,
            "peak_rss_mib": common.peak_rss_mib(),
            "loadavg_start": load_start,
            "loadavg_end": list(os.getloadavg()),
            "final_loss": rec.fit_history.get("loss", [None])[-1],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
