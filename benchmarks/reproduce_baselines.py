"""Reproduce BENCHMARK.md's baseline numbers on protocols P1 and P2.

For each protocol this runs `eval.benchmark.run_benchmark` with
`default_baseline_grids` (small grids that hold BENCHMARK.md's chosen
hyper-parameters), so model selection by validation Recall@20 is part of
what is checked. Where the grid picks other hyper-parameters than the
reference, the reference point is also run on its own, so every model is
compared at BENCHMARK.md's hyper-parameters.

It prints our test numbers next to the reference ones with the relative
difference and flags MostPopular, ItemKNN, iALS and EASE numbers outside
+-3% relative (Random is noise; BPR is stochastic with more than one
thread, and is reported only). The exit status is 1 when something is
flagged. Full reports (JSON, Markdown, PNG, per-user metrics) go to
`--out/<protocol>/`; the comparison to `--json-out` and, as Markdown,
beside it.

Example:
    python -m benchmarks.reproduce_baselines
    python -m benchmarks.reproduce_baselines --protocols p2 --no-progress
"""

import logging
import os
import pathlib
import sys
import time

# Keras reads the backend once, at import (`eval.protocols` imports it).
os.environ.setdefault("KERAS_BACKEND", "jax")

from benchmarks import common
from eval import benchmark
from eval import protocols
from runtime import runs
from runtime import startup

SCRIPT = "reproduce_baselines"
logger = logging.getLogger("reproduce_baselines")

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "hr@10", "mrr@10")
CHECKED = ("most_popular", "itemknn", "als", "ease")
TOLERANCE = 0.03

# BENCHMARK.md, "Reference numbers", in METRICS order.
REFERENCE = {
    "p1": {
        "random": (0.0017, 0.0049, 0.0021, 0.0043, 0.0492, 0.0116),
        "most_popular": (0.0388, 0.0884, 0.0686, 0.0922, 0.3885, 0.1957),
        "itemknn": (0.0614, 0.1200, 0.1101, 0.1285, 0.5098, 0.2422),
        "als": (0.0610, 0.1069, 0.1191, 0.1227, 0.5279, 0.2161),
        "bpr": (0.0538, 0.0975, 0.1005, 0.1102, 0.4738, 0.2051),
        "ease": (0.0680, 0.1303, 0.1255, 0.1422, 0.5459, 0.2513),
    },
    "p2": {
        "random": (0.0036, 0.0045, 0.0070, 0.0055, 0.0377, 0.0109),
        "most_popular": (0.0535, 0.0587, 0.0993, 0.0721, 0.2696, 0.1116),
        "itemknn": (0.1018, 0.0904, 0.1702, 0.1136, 0.3841, 0.1491),
        "als": (0.0961, 0.0781, 0.1635, 0.1012, 0.3663, 0.1296),
        "bpr": (0.0802, 0.0661, 0.1320, 0.0836, 0.2974, 0.1119),
        "ease": (0.1066, 0.0910, 0.1816, 0.1165, 0.4041, 0.1496),
    },
}
# BENCHMARK.md's "chosen" column (iALS on P1 uses implicit's alpha=1).
REFERENCE_PARAMS = {
    "p1": {
        "itemknn": {"k": 50},
        "als": {
            "factors": 64,
            "regularization": 0.01,
            "iterations": 15,
            "alpha": 1.0,
        },
        "bpr": {
            "factors": 64,
            "learning_rate": 0.01,
            "regularization": 0.01,
            "iterations": 100,
        },
        "ease": {"l2": 250.0},
    },
    "p2": {
        "itemknn": {"k": 100},
        "als": {
            "factors": 64,
            "regularization": 0.01,
            "iterations": 30,
            "alpha": 10.0,
        },
        "bpr": {
            "factors": 128,
            "learning_rate": 0.01,
            "regularization": 0.01,
            "iterations": 100,
        },
        "ease": {"l2": 1000.0},
    },
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = common.parser(SCRIPT, __doc__.split("\n")[0])
    parser.add_argument("--protocols", nargs="+", default=["p1", "p2"])
    parser.add_argument(
        "--out", type=pathlib.Path, default=common.ROOT / "runs" / "reproduce"
    )
    common.add_json_out_option(parser, SCRIPT)
    parser.add_argument("--num-bootstrap", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.protocols = [p.lower() for p in args.protocols]
    for key in args.protocols:
        if key not in REFERENCE:
            parser.error(f"unknown protocol {key!r}: use p1 and/or p2")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    startup.prepare()
    command = common.command_line(SCRIPT, argv)
    machine = common.machine_info()
    started = time.perf_counter()
    results = {}
    for key in args.protocols:
        try:
            split = protocols.load_protocol(key)
        except protocols.DatasetUnavailable as e:
            logger.warning("skipping %s: %s", key, e)
            continue
        results[key] = _run_protocol(split, key, args)
    total = time.perf_counter() - started
    text = _format(results, total)
    print(text)
    machine["loadavg_end"] = list(os.getloadavg())
    payload = {
        "benchmark": SCRIPT,
        "date": common.now(),
        "command": command,
        "machine": machine,
        "tolerance": TOLERANCE,
        "checked": list(CHECKED),
        "total_seconds": total,
        "protocols": results,
    }
    runs.write_json(args.json_out, payload)
    runs.atomic_write_text(args.json_out.with_suffix(".md"), text + "\n")
    flagged = [
        (key, row["method"])
        for key, r in results.items()
        for row in r["rows"]
        if row["flagged"]
    ]
    if flagged:
        logger.error("outside +-%d%%: %s", TOLERANCE * 100, flagged)
    return 1 if flagged else 0


def _run_protocol(split, key, args):
    started = time.perf_counter()
    candidates = benchmark.default_baseline_grids(key)
    report = benchmark.run_benchmark(
        split,
        candidates,
        args.out / key,
        num_bootstrap=args.num_bootstrap,
        progress=not args.no_progress,
    )
    models = {name: report["models"][name] for name in candidates}
    at_reference = {}
    for name, params in REFERENCE_PARAMS[key].items():
        chosen = models[name]["chosen_params"]
        if any(chosen.get(k) != v for k, v in params.items()):
            at_reference[name] = benchmark.Candidate.baseline(
                name, [params], label=candidates[name].label
            )
    fixed = {}
    if at_reference:
        logger.info(
            "%s: grid chose other parameters for %s; running the "
            "reference points too",
            key,
            sorted(at_reference),
        )
        fixed = benchmark.run_benchmark(
            split,
            at_reference,
            args.out / key / "at_reference",
            num_bootstrap=args.num_bootstrap,
            reference=None,
            progress=not args.no_progress,
        )["models"]
    rows = []
    for name, model in models.items():
        compared = fixed.get(name, model)
        ours = [compared["test"][m] for m in METRICS]
        ref = REFERENCE[key][name]
        rel = [(a - b) / b for a, b in zip(ours, ref)]
        rows.append(
            {
                "method": name,
                "label": model["label"],
                "params": {
                    **compared["chosen_params"],
                    **compared["refit_params"],
                },
                "grid_chose": model["chosen_params"],
                "grid_agrees": name not in fixed,
                "ours": dict(zip(METRICS, ours)),
                "reference": dict(zip(METRICS, ref)),
                "relative": dict(zip(METRICS, rel)),
                "flagged": name in CHECKED
                and any(abs(r) > TOLERANCE for r in rel),
                "fit_seconds": compared["fit_seconds"],
                "eval_seconds": compared["eval_seconds"],
                "grid_seconds": sum(
                    g["fit_seconds"] + g["eval_seconds"] for g in model["grid"]
                ),
            }
        )
    return {
        "protocol": report["protocol"],
        "description": report["description"],
        "num_test_users": report["num_test_users"],
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }


def _format(results, total):
    short = {
        "recall": "R",
        "ndcg": "N",
        "hr": "HR",
        "mrr": "MRR",
    }
    header = [short[m.split("@")[0]] + "@" + m.split("@")[1] for m in METRICS]
    lines = [
        "# Baseline reproduction vs BENCHMARK.md",
        "",
        "Each cell: ours / reference (relative difference). `!` marks a "
        f"checked method ({', '.join(CHECKED)}) outside "
        f"±{TOLERANCE:.0%}. Random is noise and BPR is stochastic "
        "(multi-threaded SGD): both are reported, not checked.",
    ]
    for key, r in results.items():
        lines += [
            "",
            f"## {r['protocol']}: {r['description']}",
            "",
            f"Test users: {r['num_test_users']}; wall time "
            f"{r['seconds']:.0f}s (tuning grids included).",
            "",
            "| method | " + " | ".join(header) + " | params | grid chose "
            "| fit s | eval s | grid s |",
            "|---" * (len(header) + 6) + "|",
        ]
        for row in r["rows"]:
            cells = []
            for m in METRICS:
                rel = row["relative"][m]
                mark = (
                    " !"
                    if row["method"] in CHECKED and abs(rel) > TOLERANCE
                    else ""
                )
                cells.append(
                    f"{row['ours'][m]:.4f} / {row['reference'][m]:.4f} "
                    f"({rel:+.1%}){mark}"
                )
            grid = "same" if row["grid_agrees"] else _params(row["grid_chose"])
            lines.append(
                f"| {row['label']} | "
                + " | ".join(cells)
                + f" | {_params(row['params'])} | {grid} | "
                f"{row['fit_seconds']:.1f} | {row['eval_seconds']:.1f} | "
                f"{row['grid_seconds']:.1f} |"
            )
    lines += ["", f"Total wall time: {total:.0f}s."]
    return "\n".join(lines)


def _params(params):
    if not params:
        return "-"
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in params.items()
    )


if __name__ == "__main__":
    sys.exit(main())
