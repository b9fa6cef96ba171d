"""Headline numbers: each model x seed on a protocol, mean +- sd, paired
tests against the reference (EASE), fit time and peak memory.

Every (model, seed) runs in its own child process (so its peak RSS is its
own) through `eval.benchmark.run_benchmark` with one grid point: fit on
train with epoch selection on valid, then, on P1 and P3, a refit on train +
valid for the chosen epochs; test scored with the protocol's masks. Models
and their settings (`--set` overrides, usually a `tune` preset's) come from
`benchmarks/headline.json`; a model marked `"deterministic"` (EASE, ItemKNN,
MostPopular) runs once and counts for every seed.

The parent prints and writes (`--json-out`, and Markdown beside it): per
model the test metrics as mean +- sd over the seeds, the fit seconds (the
reported model's fit: the refit on P1/P3) and peak RSS, and a paired test
(bootstrap over users, 10,000 resamples) of the model's seed-averaged
per-user N@20 and R@20 against the reference's.

Example:
    python -m benchmarks.headline --protocol p1
    python -m benchmarks.headline --protocol p2 --models ease,sasrec \\
        --seeds 0,1,2
"""

import argparse
import json
import logging
import os
import pathlib
import sys

import numpy as np

# Keras reads the backend once, at import (`benchmarks.common` imports it).
os.environ.setdefault("KERAS_BACKEND", "jax")

import config as config_lib  # noqa: E402
import recommenders  # noqa: E402
from benchmarks import common  # noqa: E402
from eval import benchmark as bench  # noqa: E402
from eval import protocols  # noqa: E402
from eval import stats  # noqa: E402
from runtime import runs  # noqa: E402

SCRIPT = "headline"
MODELS_FILE = pathlib.Path(__file__).with_name("headline.json")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "hr@10", "mrr@10")
TESTED = ("ndcg@20", "recall@20")
logger = logging.getLogger(SCRIPT)


def load_models(protocol, path=MODELS_FILE):
    """`{name: {"overrides": [...], "deterministic": bool}}` of
    `protocol` in the models file."""
    table = json.loads(pathlib.Path(path).read_text())
    if protocol not in table:
        raise SystemExit(
            f"error: {path} has no models for {protocol!r}; it has "
            f"{sorted(k for k in table if not k.startswith('_'))}."
        )
    return table[protocol]


def run_one(protocol, name, overrides, seed, out_dir):
    """One model, one seed (in a child): the benchmark report's numbers,
    the per-user metrics file and this process's peak RSS."""
    common.start_child(seed)
    cfg = config_lib.override(
        config_lib.default(),
        [*overrides, f"seed={seed}", "train.verbose=0"],
    )
    split = protocols.load_protocol(protocol)
    if recommenders.get(cfg.model.name).kind == "keras":

        def factory(params):
            epochs = params.get("epochs", cfg.train.epochs)
            run_cfg = config_lib.override(cfg, [f"train.epochs={epochs}"])
            return recommenders.build(run_cfg, split.dataset)

        candidate = bench.Candidate(factory=factory, label=name)
    else:
        candidate = bench.Candidate.baseline(
            cfg.model.name, grid=[dict(cfg.model.baseline_params)], label=name
        )
    report = bench.run_benchmark(
        split,
        {name: candidate},
        out_dir,
        seed=seed,
        reference=None,
        progress=False,
    )
    result = report["models"][name]
    common.print_result(
        {
            "test": result["test"],
            "valid": result["grid"][0]["valid"],
            "fit_seconds": result["fit_seconds"],
            "select_fit_seconds": result["grid"][0]["fit_seconds"],
            "refit_params": result["refit_params"],
            "refit": bool(split.refit),
            "peak_rss_mib": common.peak_rss_mib(),
            "per_user": str(pathlib.Path(out_dir) / "per_user.npz"),
        }
    )


def summarise(runs_by_model, reference, num_samples=10000):
    """Mean +- sd per model and metric, and paired tests of seed-averaged
    per-user metrics against `reference`."""
    per_user, rows = {}, {}
    for name, seeds in runs_by_model.items():
        arrays = []
        for run in seeds:
            with np.load(run["per_user"]) as npz:
                arrays.append({m: npz[f"{name}__{m}"] for m in TESTED})
                users = npz["users"]
        per_user[name] = {
            m: np.mean([a[m] for a in arrays], axis=0) for m in TESTED
        }
        rows[name] = {
            "seeds": len(seeds),
            "mean": {
                m: float(np.mean([r["test"][m] for r in seeds]))
                for m in METRICS
            },
            "sd": {
                m: float(np.std([r["test"][m] for r in seeds], ddof=1))
                if len(seeds) > 1
                else 0.0
                for m in METRICS
            },
            "valid_recall@20": float(
                np.mean([r["valid"]["recall@20"] for r in seeds])
            ),
            "fit_seconds": float(np.mean([r["fit_seconds"] for r in seeds])),
            "select_fit_seconds": float(
                np.mean([r["select_fit_seconds"] for r in seeds])
            ),
            "refit": all(r.get("refit", True) for r in seeds),
            "peak_rss_mib": float(max(r["peak_rss_mib"] for r in seeds)),
            "users": int(len(users)),
        }
    if reference in per_user:
        for name in per_user:
            if name == reference:
                continue
            rows[name]["vs_reference"] = {
                m: stats.paired_test(
                    per_user[name][m],
                    per_user[reference][m],
                    num_samples=num_samples,
                )
                for m in TESTED
            }
    return rows


def markdown(protocol, rows, reference, seeds):
    lines = [
        f"Protocol {protocol.upper()}, test, mean ± sd over seeds "
        f"{','.join(map(str, seeds))} (deterministic models: one run); "
        f"paired bootstrap test of the seed-averaged per-user metric "
        f"against {reference}.",
        "",
        "| model | R@10 | N@10 | R@20 | N@20 | ΔN@20 vs "
        f"{reference} (p) | ΔR@20 (p) | fit s (select + refit) | "
        "peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cells = [
            f"{row['mean'][m]:.4f} ± {row['sd'][m]:.4f}"
            for m in ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
        ]
        tests = row.get("vs_reference")
        diffs = (
            [
                f"{tests[m]['diff']:+.4f} ({tests[m]['p_value']:.3g})"
                for m in TESTED
            ]
            if tests
            else ["", ""]
        )
        lines.append(
            f"| {name} | "
            + " | ".join(cells + diffs)
            + f" | {row['select_fit_seconds']:.0f} + "
            + (f"{row['fit_seconds']:.0f}" if row["refit"] else "no refit")
            + f" | {row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = common.parser(SCRIPT, __doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="p1", choices=("p1", "p2", "p3"))
    parser.add_argument(
        "--models", default="", help="comma-separated subset (default all)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reference", default="ease")
    parser.add_argument("--backend", default="jax")
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=common.RESULTS_DIR / SCRIPT,
        help="folder for each run's reports (default benchmarks/results/"
        "headline/<protocol>/<model>/seed<k>)",
    )
    common.add_json_out_option(parser, SCRIPT)
    common.add_timeout_option(parser, 7200, per="run")
    common.add_child_option(parser)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    common.add_set_option(parser, argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_one(args.protocol, args.name, args.overrides, args.seed, args.out)
        return 0
    table = load_models(args.protocol)
    names = [n for n in table if not n.startswith("_")]
    if args.models:
        names = common.parse_choices(parser, "--models", args.models, names)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    json_out = (
        args.json_out
        if args.json_out != common.default_json_out(SCRIPT)
        else common.RESULTS_DIR / f"{SCRIPT}-{args.protocol}.json"
    )
    results, failures = {}, {}
    for name in names:
        entry = table[name]
        run_seeds = seeds[:1] if entry.get("deterministic") else seeds
        for seed in run_seeds:
            out = args.out / args.protocol / name / f"seed{seed}"
            logger.info("%s %s seed %d -> %s", args.protocol, name, seed, out)
            result = common.run_child(
                SCRIPT,
                [
                    "--child",
                    "--protocol",
                    args.protocol,
                    "--name",
                    name,
                    "--seed",
                    str(seed),
                    "--out",
                    str(out),
                    *common.set_args(entry["overrides"]),
                ],
                args.backend,
                args.timeout,
            )
            if not result["ok"]:
                failures[f"{name}/seed{seed}"] = result
                print(result["stderr_tail"], file=sys.stderr)
                continue
            results.setdefault(name, []).append(result)
            print(
                f"{name} seed {seed}: test N@20 "
                f"{result['test']['ndcg@20']:.4f} R@20 "
                f"{result['test']['recall@20']:.4f} fit "
                f"{result['fit_seconds']:.0f}s rss "
                f"{result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    rows = summarise(results, args.reference)
    text = markdown(args.protocol, rows, args.reference, seeds)
    print(text)
    report = {
        "protocol": args.protocol,
        "seeds": seeds,
        "backend": args.backend,
        "reference": args.reference,
        "command": common.command_line(SCRIPT, sys.argv[1:]),
        "machine": common.machine_info(),
        "models": {n: table[n] for n in names},
        "rows": rows,
        "runs": results,
        "failures": failures,
    }
    runs.write_json(json_out, report)
    runs.atomic_write_text(json_out.with_suffix(".md"), text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
