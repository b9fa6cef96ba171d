"""How load, training and prediction grow with the data: 1M / 5M / 20M.

For each size in `--sizes` (interactions), a child process (fresh memory,
so peak RSS belongs to that size alone):

1. generates a MovieLens-20M-shaped synthetic log
   (`benchmarks.synthetic.generate`: Pareto user activity, Zipf item
   popularity, latent taste clusters; users grow linearly with the size
   and items with its square root, 138,493 x 26,744 at 20M) and writes it
   to parquet (not timed);
2. times `data.load` + `data.split` (chrono) + `data.history_matrix`:
   "load + preprocess";
3. fits the default two-tower model (`config.default()`, no item feature
   file, `--set` overrides applied) on the train split for one epoch,
   without validation: "epoch s" (compilation included, reported apart as
   the first `--warmup-steps` steps). With `--max-steps` only that many
   steps run and the epoch time is extrapolated from the measured steps/s
   (the JSON says so);
4. times `serving.retrieval.top_k_by_score` (top-10 unseen items for
   every user: every item scored, ranked blockwise with `ops.top_k`,
   bounded memory);
5. reports the child's peak RSS (`ru_maxrss`) after each phase.

The parent prints a Markdown table and writes JSON (`--json-out`).

Example:
    python -m benchmarks.scaling --sizes 1000000,5000000
    python -m benchmarks.scaling --sizes 20000000 --set train.batch_size=4096
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

import config as config_lib

# Keras reads the backend once, at import. The parent's (it only parses
# options and starts children) is chosen as main.py does; each child's is
# set by its parent (`--backend`).
os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

import keras
import numpy as np

import data
import recommenders
from benchmarks import common
from benchmarks import synthetic
from runtime import runs
from serving import retrieval

SCRIPT = "scaling"
TOP_K = 10


def parse_args(argv):
    parser = common.parser(
        SCRIPT,
        "Load + preprocess, one two-tower epoch, predictions "
        "for all users and peak RSS\nat several synthetic data sizes, each "
        "in its own child process.",
    )
    parser.add_argument(
        "--sizes",
        default="1000000,5000000,20000000",
        help="comma-separated interaction counts (default %(default)s)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="train only this many steps and extrapolate the epoch "
        "(0 = the full epoch, default)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=20,
        help="first steps (with compilation) left out of steps/s",
    )
    common.add_set_option(
        parser,
        "config override for every child, e.g. --set train.batch_size=4096",
    )
    common.add_json_out_option(parser, SCRIPT)
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="where the parquet files go (default: a temporary folder)",
    )
    parser.add_argument(
        "--backend",
        choices=common.BACKENDS,
        default=os.environ["KERAS_BACKEND"],  # chosen at the top
        help="Keras backend of the children (default: $KERAS_BACKEND, "
        "else config's `backend`, %(default)s here; never keras.json's)",
    )
    common.add_timeout_option(parser, 6 * 3600.0, per="size")
    common.add_child_option(parser)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"`--sizes` must be integers. Received: {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1000:
        parser.error(f"`--sizes` must be >= 1000. Received: {args.sizes}")
    common.check_overrides(parser, args.overrides)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    command = common.command_line(SCRIPT, argv)
    machine = common.machine_info()
    common.print_header(command, machine)
    print(f"backend: {args.backend}")
    results = []
    with tempfile.TemporaryDirectory(prefix="recsys-scaling-") as tmp:
        data_dir = (args.data_dir or pathlib.Path(tmp)).resolve()
        for size in args.sizes:
            print(f"running {size:,} interactions ...", flush=True)
            results.append(run_one(size, args, data_dir))
            print(format_table(results[-1:]), flush=True)
    print()
    print(format_table(results))
    print(growth(results))
    print()
    common.finish_machine(machine)
    common.print_failures({f"{r['size']:,}": r for r in results})
    payload = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "backend": args.backend,
        "overrides": args.overrides,
        "machine": machine,
        "results": results,
    }
    runs.write_json(args.json_out, payload)
    print(f"wrote {args.json_out}")
    return 0 if all(r["ok"] for r in results) else 1


def run_one(size, args, data_dir):
    child_args = [
        "--child",
        "--size",
        str(size),
        "--data-dir",
        str(data_dir),
        "--max-steps",
        str(args.max_steps),
        "--warmup-steps",
        str(args.warmup_steps),
        *common.set_args(args.overrides),
    ]
    result = common.run_child(SCRIPT, child_args, args.backend, args.timeout)
    return {"size": size, **result}


def format_table(results):
    head = (
        "| backend | interactions | users | items | load + preprocess s | "
        "epoch s | steps/s | predict all users s | peak RSS GiB |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if not r.get("ok"):
            lines.append(f"| | {r['size']:,} | FAILED | | | | | | |")
            continue
        epoch = f"{r['epoch_s']:,.0f}" + (
            " (extrapolated)" if r["extrapolated"] else ""
        )
        lines.append(
            f"| {r['backend']} | {r['interactions']:,} | {r['num_users']:,} | "
            f"{r['num_items']:,} | {r['load_s']:.1f} | {epoch} | "
            f"{r['steps_per_s']:.2f} | {r['predict_s']:.1f} | "
            f"{r['peak_rss_gib']:.2f} |"
        )
    return "\n".join(lines)


def growth(results):
    """Each figure's growth between consecutive sizes, against the growth
    of interactions (and of users x items for predictions)."""
    ok = [r for r in results if r.get("ok")]
    lines = []
    for a, b in zip(ok, ok[1:]):
        n = b["interactions"] / a["interactions"]
        cells = (
            b["num_users"] * b["num_items"] / (a["num_users"] * a["num_items"])
        )
        lines.append(
            f"{a['interactions']:,} -> {b['interactions']:,} (x{n:.1f} "
            f"interactions, x{cells:.1f} users*items): load x"
            f"{b['load_s'] / a['load_s']:.1f}, epoch x"
            f"{b['epoch_s'] / a['epoch_s']:.1f}, predict x"
            f"{b['predict_s'] / a['predict_s']:.1f}, peak RSS x"
            f"{b['peak_rss_gib'] / a['peak_rss_gib']:.1f}"
        )
    return "\n".join(lines)


def run_child(args):
    size = args.size
    cfg = config_lib.override(
        config_lib.default(),
        ["data.item_features.path=None", "train.verbose=0"] + args.overrides,
    )
    path = pathlib.Path(args.data_dir) / f"synthetic-{size}.parquet"
    if not path.exists():
        synthetic.write(synthetic.generate(size, seed=cfg.seed), path)
    cfg = config_lib.override(cfg, [f"data.path={str(path)!r}"])
    common.start_child(cfg.seed)
    rss = {"start": _peak_rss_gib()}

    start = time.perf_counter()
    dataset = data.load(cfg.data)
    train_split, _, _ = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    rec = recommenders.build(cfg, dataset)
    rec.set_history(train_split)  # history_matrix, as fit() does first
    load_s = time.perf_counter() - start
    rss["after_load"] = _peak_rss_gib()

    timer = StepTimer(args.warmup_steps)
    steps = -(-len(train_split) // cfg.train.batch_size)
    run_steps = min(args.max_steps or steps, steps)
    common.time_fit(rec, timer, steps_per_epoch=run_steps)
    rec.fit(train_split, None, epochs=1)
    if timer.warm_s is None or run_steps <= args.warmup_steps:
        steps_per_s = run_steps / timer.total
        first_s = timer.total
    else:
        steps_per_s = (run_steps - args.warmup_steps) / (
            timer.total - timer.warm_s
        )
        first_s = timer.warm_s
    extrapolated = run_steps < steps
    epoch_s = (
        first_s + (steps - args.warmup_steps) / steps_per_s
        if extrapolated
        else timer.total
    )
    rss["after_epoch"] = _peak_rss_gib()

    users = np.arange(dataset.interactions.num_users)
    start = time.perf_counter()
    items, _ = retrieval.top_k_by_score(
        rec,
        users,
        dataset.interactions.to_csr(),
        TOP_K,
        cfg.eval.memory_budget_mb,
        progress=False,
    )
    predict_s = time.perf_counter() - start
    rss["after_predict"] = _peak_rss_gib()
    common.print_result(
        {
            "size": size,
            "interactions": len(dataset.interactions),
            "train_examples": len(train_split),
            "num_users": int(dataset.interactions.num_users),
            "num_items": int(dataset.interactions.num_items),
            "backend": keras.backend.backend(),
            "batch_size": cfg.train.batch_size,
            "steps_per_epoch": steps,
            "steps_run": run_steps,
            "extrapolated": extrapolated,
            "first_steps_s": first_s,
            "steps_per_s": steps_per_s,
            "epoch_s": epoch_s,
            "load_s": load_s,
            "predict_s": predict_s,
            "predicted_users": int(len(items)),
            "memory_budget_mb": cfg.eval.memory_budget_mb,
            "peak_rss_gib": _peak_rss_gib(),
            "peak_rss_gib_by_phase": rss,
            "loadavg": list(os.getloadavg()),
            "final_loss": rec.fit_history.get("loss", [None])[-1],
        }
    )
    return 0


class StepTimer(keras.callbacks.Callback):
    """Epoch wall time, and the time at the end of step `warmup` (both
    synchronised on the loss; steps in between run asynchronously)."""

    def __init__(self, warmup):
        super().__init__()
        self.warmup = warmup
        self.steps = 0
        self.warm_s = None
        self.total = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.warmup:
            for value in (logs or {}).values():
                float(value)
            self.warm_s = time.perf_counter() - self._start
        if self.steps % 1000 == 0:
            print(
                f"step {self.steps}: {time.perf_counter() - self._start:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def on_epoch_end(self, epoch, logs=None):
        for value in (logs or {}).values():
            float(value)
        self.total = time.perf_counter() - self._start


def _peak_rss_gib():
    return common.peak_rss_mib() / 1024


if __name__ == "__main__":
    sys.exit(main())
