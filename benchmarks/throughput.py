"""Training throughput and prediction cost, per backend, model and jit mode,
against a per-example Python input pipeline feeding the same model.

Runs (each in a child process: `KERAS_BACKEND` is read once per process):

- for every backend in `--backends`, model in `--models` and jit mode
  (`jit_compile` on and off on JAX and TensorFlow; torch always runs
  eagerly, `KerasRecommender` turns its compile off): `KerasRecommender.fit`
  on the P1 train split of the configured data (the shipped MovieLens
  ml-latest-small by default) for `--epochs` epochs; "s/epoch" is the mean
  of the epochs after the first (which includes compilation), examples/s
  is train examples over it; then `serving.retrieval.top_k_by_score` for
  all users, top-10 (every item scored, ranked blockwise), timed, and the
  child's peak RSS;
- with `--reference` (default on), the same two-tower fit on JAX with the
  batches built by `PerExampleBatches`: the straightforward way, one
  example at a time in Python (Python lists and sets, `random`, rejection
  sampling of negatives against the user's seen items, per-row feature
  copies). Its s/epoch over the vectorised pipeline's is the end-to-end
  speed-up; both pipelines are also timed alone, without a model, building
  one epoch of batches ("pipeline s/epoch").

Example:
    python -m benchmarks.throughput
    python -m benchmarks.throughput --backends jax --models two_tower
"""

import argparse
import os
import random
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

SCRIPT = "throughput"
MODELS = ("two_tower", "ncf")
JIT_MODES = ("on", "off")
TOP_K = 10


def parse_args(argv):
    parser = common.parser(
        SCRIPT,
        "examples/s, s/epoch, predict time and peak RSS per "
        "backend, model and jit mode,\nand the speed-up over a per-example "
        "Python input pipeline.",
    )
    common.add_backends_option(parser)
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument(
        "--jit",
        default=",".join(JIT_MODES),
        help="jit modes to run where they apply: on,off",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help=">= 2; epoch 1 (compilation) is left out",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the per-example Python pipeline",
    )
    common.add_set_option(
        parser, "config override forwarded to every child (repeatable)"
    )
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 3600.0, per="run")
    common.add_child_option(parser)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--jit-on", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--pipeline", default="vectorised", help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    args.backends = common.parse_choices(
        parser, "--backends", args.backends, common.BACKENDS
    )
    args.models = common.parse_choices(parser, "--models", args.models, MODELS)
    args.jit = common.parse_choices(parser, "--jit", args.jit, JIT_MODES)
    if args.epochs < 2:
        parser.error(f"`--epochs` must be >= 2. Received: {args.epochs}")
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
    plan = []
    for backend in args.backends:
        for model in args.models:
            modes = ["off"] if backend == "torch" else args.jit
            for jit in modes:
                plan.append((backend, model, jit, "vectorised"))
    if args.reference:
        plan.append(("jax", "two_tower", "on", "per_example"))
    results = []
    for backend, model, jit, pipeline in plan:
        print(f"running {backend} {model} jit={jit} {pipeline} ...", flush=True)
        results.append(run_one(backend, model, jit, pipeline, args))
    print()
    print(format_table(results))
    ratio = speedup(results)
    if ratio:
        print()
        print(ratio["text"])
    print()
    common.finish_machine(machine)
    common.print_failures({_label(r): r for r in results})
    payload = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "machine": machine,
        "results": results,
        "speedup": ratio,
    }
    runs.write_json(args.json_out, payload)
    print(f"wrote {args.json_out}")
    return 0 if all(r["ok"] for r in results) else 1


def run_one(backend, model, jit, pipeline, args):
    child_args = [
        "--child",
        "--model",
        model,
        "--jit-on",
        str(int(jit == "on")),
        "--pipeline",
        pipeline,
        "--epochs",
        str(args.epochs),
        *common.set_args(args.overrides),
    ]
    base = {
        "backend": backend,
        "model": model,
        "jit": jit,
        "pipeline": pipeline,
    }
    return {
        **base,
        **common.run_child(SCRIPT, child_args, backend, args.timeout),
    }


def _label(r):
    return f"{r['backend']} {r['model']} jit={r['jit']} {r['pipeline']}"


def format_table(results):
    head = (
        "| backend | model | jit | input pipeline | first epoch s | "
        "s/epoch | examples/s | pipeline alone s/epoch | "
        "predict all users s | peak RSS MiB |"
    )
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if not r["ok"]:
            lines.append(
                f"| {r['backend']} | {r['model']} | {r['jit']} | "
                f"{r['pipeline']} | FAILED | | | | | |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['model']} | {r['jit']} | "
            f"{r['pipeline']} | {r['first_epoch_s']:.1f} | "
            f"{r['epoch_s']:.2f} | {r['examples_per_s']:,.0f} | "
            f"{r['pipeline_epoch_s']:.2f} | {r['predict_s']:.2f} | "
            f"{r['peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines)


def speedup(results):
    """Per-example reference vs the vectorised pipeline, same model."""
    ref = [r for r in results if r["ok"] and r["pipeline"] == "per_example"]
    fast = [
        r
        for r in results
        if r["ok"]
        and r["pipeline"] == "vectorised"
        and r["backend"] == "jax"
        and r["model"] == "two_tower"
        and r["jit"] == "on"
    ]
    if not ref or not fast:
        return None
    ref, fast = ref[0], fast[0]
    training = ref["epoch_s"] / fast["epoch_s"]
    pipeline = ref["pipeline_epoch_s"] / fast["pipeline_epoch_s"]
    return {
        "training_epoch_ratio": training,
        "pipeline_ratio": pipeline,
        "text": (
            f"two-tower on JAX, per-example Python pipeline vs vectorised: "
            f"training {ref['epoch_s']:.2f} vs {fast['epoch_s']:.2f} "
            f"s/epoch = {training:.2f}x; input pipeline alone "
            f"{ref['pipeline_epoch_s']:.2f} vs "
            f"{fast['pipeline_epoch_s']:.2f} s/epoch = {pipeline:.1f}x"
        ),
    }


# ---------------------------------------------------------------------------
# Child
# ---------------------------------------------------------------------------


def run_child(args):
    cfg = config_lib.override(
        config_lib.default(),
        args.overrides
        + [
            f"model.name={args.model!r}",
            "train.verbose=0",
            f"train.jit_compile={bool(args.jit_on)}",
        ],
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
    batches_cls = (
        PerExampleBatches
        if args.pipeline == "per_example"
        else data.InteractionBatches
    )
    made = []

    def make_batches(*a, **k):
        made.append(batches_cls(*a, **k))
        return made[-1]

    # KerasRecommender builds its batches through data.InteractionBatches.
    data.InteractionBatches = make_batches
    timer = common.EpochTimer()
    rec = recommenders.build(cfg, dataset)
    common.time_fit(rec, timer)
    rec.fit(train_split, None, epochs=args.epochs)
    epoch_s = float(np.mean(timer.seconds[1:]))

    batches = made[-1]
    start = time.perf_counter()
    for idx in range(len(batches)):
        batches[idx]
    pipeline_epoch_s = time.perf_counter() - start

    start = time.perf_counter()
    retrieval.top_k_by_score(
        rec,
        np.arange(dataset.interactions.num_users),
        dataset.interactions.to_csr(),
        TOP_K,
        cfg.eval.memory_budget_mb,
        progress=False,
    )
    predict_s = time.perf_counter() - start
    common.print_result(
        {
            "keras_backend": keras.backend.backend(),
            "jit_compile_used": bool(getattr(rec.model, "jit_compile", False)),
            "train_examples": len(train_split),
            "batch_size": cfg.train.batch_size,
            "epoch_seconds": timer.seconds,
            "first_epoch_s": timer.seconds[0],
            "epoch_s": epoch_s,
            "examples_per_s": len(train_split) / epoch_s,
            "pipeline_epoch_s": pipeline_epoch_s,
            "predict_s": predict_s,
            "num_users": int(dataset.interactions.num_users),
            "num_items": int(dataset.interactions.num_items),
            "peak_rss_mib": common.peak_rss_mib(),
            "loadavg": list(os.getloadavg()),
            "final_loss": rec.fit_history.get("loss", [None])[-1],
        }
    )
    return 0


class PerExampleBatches(keras.utils.PyDataset):
    """The reference input pipeline: the batches `data.InteractionBatches`
    makes (same keys, shapes and meaning), built one example at a time in
    Python, as a first implementation usually is.

    Per example: the user's most recent items from a Python list (target
    hidden, each other slot dropped with probability `history_dropout`
    using `random.random()`), padded; the item's feature row and log
    probability copied; negatives drawn with `random.randrange` and redrawn
    while the user has seen them. Accepts `data.InteractionBatches`'s
    arguments so that `KerasRecommender` can be given it unchanged.
    """

    def __init__(
        self,
        interactions,
        batch_size,
        seed=0,
        history=None,
        history_dropout=0.0,
        user_features=None,
        item_features=None,
        num_negatives=0,
        sampler=None,
        item_logq=None,
        labels=None,
        shuffle=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        x = interactions
        self.batch_size = batch_size
        self.seed = seed
        self.history_length = 0 if history is None else history.shape[1]
        self.history_dropout = history_dropout
        self.user_features = user_features
        self.item_features = item_features
        self.num_negatives = num_negatives
        self.num_items = x.num_items
        self.item_logq = item_logq
        self.labels = None if labels is None else labels.tolist()
        self.shuffle = shuffle
        self.epoch = 0
        self.pairs = list(zip(x.user.tolist(), x.item.tolist()))
        events = sorted(
            zip(x.user.tolist(), x.ts.tolist(), x.item.tolist()),
            key=lambda e: (e[0], -e[1], -e[2]),
        )
        self.recent = {}
        self.seen = {}
        for user, _, item in events:
            self.recent.setdefault(user, []).append(item)
            self.seen.setdefault(user, set()).add(item)
        self.order = list(range(len(self.pairs)))

    def __len__(self):
        return -(-len(self.pairs) // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        rng = random.Random(f"{self.seed}-{self.epoch}-{idx}")
        order = list(self.order)
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        rows = order[idx * self.batch_size : (idx + 1) * self.batch_size]
        rows += order[: self.batch_size - len(rows)]
        users, items, histories, feats, logq, negs, labels = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for row in rows:
            user, item = self.pairs[row]
            users.append(user)
            items.append(item)
            if self.history_length:
                hist = []
                for past in self.recent[user][: self.history_length]:
                    keep = rng.random() >= self.history_dropout
                    if past != item and keep:
                        hist.append(past + 1)
                    else:
                        hist.append(0)
                histories.append(hist)
            if self.item_features is not None:
                feats.append(self.item_features[item])
            if self.item_logq is not None:
                logq.append(self.item_logq[item])
            if self.num_negatives:
                row_negs = []
                for _ in range(self.num_negatives):
                    neg = rng.randrange(self.num_items)
                    while neg in self.seen[user]:
                        neg = rng.randrange(self.num_items)
                    row_negs.append(neg)
                negs.append(row_negs)
            labels.append(1.0 if self.labels is None else self.labels[row])
        batch = {
            "user": np.array(users, np.int32),
            "item": np.array(items, np.int32),
        }
        if self.history_length:
            padded = [
                h + [0] * (self.history_length - len(h)) for h in histories
            ]
            batch["history"] = np.array(padded, np.int32)
        if self.user_features is not None:
            batch["user_features"] = np.stack(
                [self.user_features[u] for u in users]
            )
        if feats:
            batch["item_features"] = np.stack(feats)
        if logq:
            batch["item_logq"] = np.array(logq, np.float32)
        if negs:
            batch["neg_item"] = np.array(negs, np.int32)
            if self.item_features is not None:
                batch["neg_item_features"] = np.stack(
                    [np.stack([self.item_features[n] for n in r]) for r in negs]
                )
        return batch, np.array(labels, np.float32)


if __name__ == "__main__":
    sys.exit(main())
