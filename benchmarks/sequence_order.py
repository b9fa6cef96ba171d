"""Where a sequence model's gain comes from: the same model on a protocol
with each user's training interactions in their order and shuffled.

SASRec reads the order of a user's interactions (their timestamps, or the
file rows where there are none); EASE and the autoencoders do not. This
fits the model twice on the protocol's train split, once as given and once
with the training order shuffled (a seeded permutation of `ts`: each
user's interactions in a random order), selects the epoch on valid and
reports test recall@20 and NDCG@20 for both. If the shuffled model falls
to the order-blind baselines, the gain is the order of the data.

Example:
    python -m benchmarks.sequence_order --protocol p2 --set train.epochs=10
"""

import dataclasses
import os
import sys

import config as config_lib

os.environ.setdefault(
    "KERAS_BACKEND", config_lib.backend_from_argv(sys.argv[1:])
)

import numpy as np  # noqa: E402

import recommenders  # noqa: E402
from benchmarks import common  # noqa: E402
from eval import metrics  # noqa: E402
from eval import protocols  # noqa: E402
from runtime import runs  # noqa: E402

SCRIPT = "sequence_order"
MODES = ("ordered", "shuffled")


def run(protocol, overrides, seed):
    split = protocols.load_protocol(protocol)
    cfg = config_lib.override(
        config_lib.default(), [*overrides, f"seed={seed}", "train.verbose=0"]
    )
    rows = {}
    for mode in MODES:
        train = split.train
        if mode == "shuffled":
            order = np.random.default_rng(seed).permutation(len(train.ts))
            train = dataclasses.replace(train, ts=order.astype(np.int64))
        rec = recommenders.build(cfg, split.dataset)
        rec.fit(train, split.valid)
        result = metrics.evaluate(
            rec.score,
            split.test.to_csr(),
            exclude=protocols.exclude_for_test(split),
            ks=(20,),
        ).summary()
        rows[mode] = {m: result[m] for m in ("recall@20", "ndcg@20")}
        print(
            f"{mode}: test R@20 {rows[mode]['recall@20']:.4f} "
            f"N@20 {rows[mode]['ndcg@20']:.4f}",
            flush=True,
        )
    return rows


def main(argv=None):
    parser = common.parser(SCRIPT, __doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="p2", choices=("p1", "p2", "p3"))
    parser.add_argument("--seed", type=int, default=0)
    common.add_set_option(
        parser, "config overrides (default: the shipped SASRec)"
    )
    common.add_json_out_option(parser, SCRIPT)
    args = parser.parse_args(argv)
    common.check_overrides(parser, args.overrides)
    machine = common.machine_info()
    command = common.command_line(SCRIPT, sys.argv[1:])
    common.print_header(command, machine)
    overrides = ["model.name='sasrec'", *args.overrides]
    rows = run(args.protocol, overrides, args.seed)
    runs.write_json(
        args.json_out,
        {
            "command": command,
            "machine": common.finish_machine(machine),
            "protocol": args.protocol,
            "overrides": overrides,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
