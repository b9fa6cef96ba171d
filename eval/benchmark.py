"""Tune, fit and compare recommenders on one protocol, with honest statistics.

`run_benchmark(split, candidates, out_dir)` does, for every candidate:

1. for each hyper-parameter dict of its grid: fit on train, score valid
   with train items masked, record the validation metrics and timings;
2. choose the grid point with the best `select_metric` (first one on ties);
3. P1 (`split.refit`): refit on train + valid with the chosen parameters,
   merged with `model.refit_params()` when the tuned model has that method
   (Keras models return e.g. `{"epochs": best_epoch}`);
   P2: keep the model trained on train;
4. score test with train + valid masked (`protocols.exclude_for_test`).

Per-user test metrics give bootstrap confidence intervals and paired tests
against a reference model (EASE by default), since a gap of a few
thousandths can be noise. Results go to `out_dir` as `benchmark.json`
(everything), `benchmark.md` (tables in BENCHMARK.md's layout),
`benchmark.png` (N@K and R@K with CI bars) and `per_user.npz` (the per-user
test metrics, for later paired tests against new models), each written
atomically.
"""

import dataclasses
import datetime
import functools
import importlib.metadata
import io
import json
import logging
import math
import os
import pathlib
import platform
import time
from typing import Callable

import numpy as np
import tqdm

from eval import baselines
from eval import metrics
from eval import protocols
from eval import stats

logger = logging.getLogger(__name__)

# Metrics shown, with CIs, in the Markdown table and kept in the JSON.
TABLE_METRICS = ("recall", "ndcg", "hr", "mrr", "precision")
SHORT_NAMES = {
    "recall": "R",
    "ndcg": "N",
    "hr": "HR",
    "mrr": "MRR",
    "precision": "P",
}


@dataclasses.dataclass
class Candidate:
    """A model family to benchmark: how to build it and what to try.

    Args:
        factory: callable `(params: dict) -> Recommender`, an unfitted
            model with `fit(train, valid)` and `score(user_idx)`.
        grid: list of hyper-parameter dicts, tried in order. Defaults to
            `[{}]` (the factory's defaults).
        label: display name in the reports. Defaults to the candidate's
            key in the `candidates` dict.
    """

    factory: Callable[[dict], object]
    grid: list = dataclasses.field(default_factory=lambda: [{}])
    label: str | None = None

    @classmethod
    def baseline(cls, name: str, grid=None, label=None) -> "Candidate":
        """A candidate built by `baselines.make_baseline(name, **params)`."""
        if name not in baselines.BASELINES:
            raise ValueError(
                f"`name` must be one of {sorted(baselines.BASELINES)}. "
                f"Received: {name!r}"
            )
        return cls(
            factory=functools.partial(_make_baseline, name),
            grid=[{}] if grid is None else list(grid),
            label=label,
        )


def run_benchmark(
    split,
    candidates: dict,
    out_dir,
    ks=(10, 20),
    select_metric: str = "recall@20",
    num_bootstrap: int = 1000,
    seed: int = 0,
    reference: str | None = "ease",
    progress: bool = True,
) -> dict:
    """Tune, fit, test and compare `candidates` on `split`.

    Args:
        split: a `protocols.Split`.
        candidates: dict of name to `Candidate`.
        out_dir: folder for the reports (created if needed).
        ks: cut-offs. Defaults to `(10, 20)`.
        select_metric: validation metric maximised by the grid search.
            Defaults to `"recall@20"` (BENCHMARK.md).
        num_bootstrap: resamples for the CIs and paired tests.
        seed: seed of the resampling.
        reference: candidate name every other model is paired-tested
            against; skipped when absent or `None`.
        progress: bool, show a progress bar over candidates x grid points.

    Returns:
        The report dict written to `benchmark.json`.
    """
    if not candidates:
        raise ValueError("`candidates` must not be empty. Received: {}")
    ks = tuple(sorted({int(k) for k in ks}))
    names = [f"{m}@{k}" for k in ks for m in metrics.RANKING_METRICS]
    if select_metric not in names:
        raise ValueError(
            f"`select_metric` must be one of {names} for ks={ks}. "
            f"Received: {select_metric!r}"
        )
    for name, candidate in candidates.items():
        if not isinstance(candidate, Candidate) or not candidate.grid:
            raise ValueError(
                f"`candidates[{name!r}]` must be a Candidate with a "
                f"non-empty grid. Received: {candidate!r}"
            )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info(
        "benchmark %s: %s; candidates=%d grid points=%d",
        split.name,
        split.sizes(),
        len(candidates),
        sum(len(c.grid) for c in candidates.values()),
    )

    valid_truth = split.valid.to_csr(binary=True)
    valid_mask = protocols.exclude_for_valid(split)
    test_truth = split.test.to_csr(binary=True)
    test_mask = protocols.exclude_for_test(split)
    history = protocols.history_for_test(split)
    popularity = history.item_counts()
    bar = _progress_bar(sum(len(c.grid) for c in candidates.values()), progress)

    results, per_user, users = {}, {}, None
    for name, candidate in candidates.items():
        grid_rows, best, best_model = [], None, None
        for params in candidate.grid:
            bar.set_description(f"{name} {_format_params(params)}")
            model = candidate.factory(dict(params))
            fit_s, info = _timed(model.fit, split.train, split.valid)
            eval_s, result = _timed(
                metrics.evaluate,
                model.score,
                valid_truth,
                exclude=valid_mask,
                ks=ks,
            )
            summary = result.summary()
            value = summary[select_metric]
            if not math.isfinite(value):
                raise ValueError(
                    f"Validation {select_metric} of {name} is {value}: no "
                    f"user has a validation item. Received: "
                    f"{split.sizes()}"
                )
            row = {
                "params": _jsonable(params),
                "valid": _round_dict(summary),
                "fit_seconds": fit_s,
                "eval_seconds": eval_s,
                "fit_info": _jsonable(info),
            }
            grid_rows.append(row)
            logger.info(
                "%s %s valid %s=%.4f ndcg@%d=%.4f fit=%.1fs eval=%.1fs",
                name,
                _format_params(params),
                select_metric,
                value,
                ks[-1],
                summary[f"ndcg@{ks[-1]}"],
                fit_s,
                eval_s,
            )
            if best is None or value > best["valid"][select_metric]:
                best, best_model = row, model
            else:
                del model
            bar.update(1)
        chosen = dict(candidate.grid[grid_rows.index(best)])

        refit_params = {}
        if split.refit:
            if hasattr(best_model, "refit_params"):
                refit_params = dict(best_model.refit_params())
            del best_model
            model = candidate.factory({**chosen, **refit_params})
            fit_s, _ = _timed(model.fit, history, None)
            logger.info(
                "%s refit on train+valid n=%d in %.1fs",
                name,
                len(history),
                fit_s,
            )
        else:
            model, fit_s = best_model, best["fit_seconds"]
        eval_s, result = _timed(
            metrics.evaluate,
            model.score,
            test_truth,
            exclude=test_mask,
            ks=ks,
            item_popularity=popularity,
        )
        segments = _segments(
            model,
            result,
            test_truth,
            test_mask,
            history,
            ks,
            num_bootstrap,
            seed,
        )
        del model
        if users is None:
            users = result.users
        elif not np.array_equal(users, result.users):
            raise RuntimeError(
                f"{name} was evaluated on other users than the first "
                "candidate; per-user comparisons would be misaligned."
            )
        per_user[name] = result.per_user
        ci = {
            f"{m}@{k}": stats.bootstrap_ci(
                result.per_user[f"{m}@{k}"], num_bootstrap, seed=seed
            )
            for k in ks
            for m in TABLE_METRICS
        }
        results[name] = {
            "label": candidate.label or name,
            "grid": grid_rows,
            "chosen_params": _jsonable(chosen),
            "refit_params": _jsonable(refit_params),
            "fit_seconds": fit_s,
            "eval_seconds": eval_s,
            "test": _round_dict(result.summary()),
            "ci": {m: _round_dict(v) for m, v in ci.items()},
            "num_users": result.num_users,
            "segments": segments,
        }
        logger.info(
            "%s test %s",
            name,
            " ".join(
                f"{m}={result.summary()[m]:.4f}"
                for m in (f"recall@{ks[-1]}", f"ndcg@{ks[-1]}")
            ),
        )
    bar.close()

    comparisons = _compare(per_user, reference, ks, num_bootstrap, seed)
    for name, tests in comparisons.items():
        results[name]["vs_reference"] = tests
    report = {
        "protocol": split.name,
        "description": split.description,
        "refit": bool(split.refit),
        "sizes": split.sizes(),
        "ks": list(ks),
        "select_metric": select_metric,
        "reference": reference if reference in per_user else None,
        "num_bootstrap": int(num_bootstrap),
        "seed": int(seed),
        "num_test_users": 0 if users is None else int(len(users)),
        "models": results,
        "environment": _environment(),
        "total_seconds": time.perf_counter() - started,
    }
    _write_outputs(report, per_user, users, out_dir)
    logger.info(
        "benchmark %s done in %.1fs -> %s",
        split.name,
        report["total_seconds"],
        out_dir,
    )
    return report


def default_baseline_grids(protocol) -> dict:
    """Baseline candidates with small grids around BENCHMARK.md's choices.

    Args:
        protocol: `"p1"`, `"p2"`, `"p3"` (any case) or a `Split` with
            that name. P3 (chronological, like P1) uses P1's grids.

    Returns:
        dict of baseline name to `Candidate`; each grid contains the
        reference hyper-parameters of BENCHMARK.md.
    """
    key = str(getattr(protocol, "name", protocol)).lower()
    if key not in ("p1", "p2", "p3"):
        raise ValueError(
            "`protocol` must be 'p1', 'p2', 'p3' or a Split named so. "
            f"Received: {protocol!r}"
        )
    key = "p1" if key == "p3" else key
    # BENCHMARK.md's choices: P1 ItemKNN k=50, EASE l2=250, iALS 15 it
    # (implicit's alpha=1), BPR 64 f; P2 k=100, l2=1000, iALS 30 it
    # alpha=10, BPR 128 f. Each grid holds the choice and its neighbours.
    als_iterations, bpr_factors = (15, 64) if key == "p1" else (30, 128)
    grids = {
        "itemknn": [{"k": k} for k in (50, 100, 200)],
        "ease": [{"l2": l2} for l2 in (250.0, 500.0, 1000.0)],
        "als": [
            {
                "factors": 64,
                "regularization": 0.01,
                "iterations": als_iterations,
                "alpha": alpha,
            }
            for alpha in (1.0, 10.0)
        ],
        "bpr": [
            {
                "factors": bpr_factors,
                "learning_rate": 0.01,
                "regularization": 0.01,
                "iterations": 100,
            }
        ],
    }
    labels = {
        "random": "Random",
        "most_popular": "MostPopular",
        "itemknn": "ItemKNN (cosine)",
        "als": "iALS (implicit)",
        "bpr": "BPR (implicit)",
        "ease": "EASE",
    }
    return {
        name: Candidate.baseline(name, grids.get(name), label=label)
        for name, label in labels.items()
    }


def format_markdown(report: dict) -> str:
    """`benchmark.md` from a report dict (see `run_benchmark`)."""
    ks = report["ks"]
    k_small, k_large = ks[0], ks[-1]
    metric_cols = []
    for k in ks:
        metric_cols += [f"recall@{k}", f"ndcg@{k}"]
    metric_cols += [f"hr@{k_small}", f"mrr@{k_small}"]
    header = [_short(m) for m in metric_cols]
    lines = [
        f"# Benchmark {report['protocol']}",
        "",
        f"{report['description']}.",
        "",
        f"Sizes: {_format_sizes(report['sizes'])}; test users evaluated: "
        f"{report['num_test_users']}. Each cell: test mean ± half-width of "
        f"the 95% bootstrap CI over users ({report['num_bootstrap']} "
        f"resamples). Chosen by validation {report['select_metric']}. "
        "Times in seconds (fit = the reported model's fit; eval = its test "
        "evaluation).",
        "",
        "| method | " + " | ".join(header) + " | chosen | fit s | eval s |",
        "|---" * (len(header) + 4) + "|",
    ]
    for name, r in report["models"].items():
        cells = []
        for m in metric_cols:
            ci = r["ci"].get(m)
            if ci is None:
                cells.append(f"{r['test'][m]:.4f}")
            else:
                half = (ci["high"] - ci["low"]) / 2
                cells.append(f"{ci['mean']:.4f} ±{half:.4f}")
        chosen = {**r["chosen_params"], **r["refit_params"]}
        lines.append(
            f"| {r['label']} | "
            + " | ".join(cells)
            + f" | {_format_params(chosen)} | {r['fit_seconds']:.1f} | "
            f"{r['eval_seconds']:.1f} |"
        )
    reference = report["reference"]
    if reference is not None:
        lines += [
            "",
            f"Paired bootstrap tests vs {reference} "
            f"({report['num_bootstrap']} resamples over the same users; "
            "difference = model - reference):",
            "",
        ]
        for name, r in report["models"].items():
            for metric, test in r.get("vs_reference", {}).items():
                lines.append(
                    "- "
                    + stats.describe_difference(test, name, reference, metric)
                )
    lines += _segment_lines(report)
    select = report["select_metric"]
    lines += ["", "## Validation grids", ""]
    for name, r in report["models"].items():
        lines += [
            f"### {r['label']}",
            "",
            f"| params | {_short(select)} (valid) | N@{k_large} (valid) | "
            "fit s | eval s |",
            "|---|---|---|---|---|",
        ]
        chosen = r["chosen_params"]
        for row in r["grid"]:
            mark = " **(chosen)**" if row["params"] == chosen else ""
            lines.append(
                f"| {_format_params(row['params'])}{mark} | "
                f"{row['valid'][select]:.4f} | "
                f"{row['valid'][f'ndcg@{k_large}']:.4f} | "
                f"{row['fit_seconds']:.1f} | {row['eval_seconds']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _segments(model, result, truth, exclude, history, ks, num_bootstrap, seed):
    """Test N@K and R@K (largest K) with CIs for user and item segments.

    Users: cold = the 20% with the fewest interactions in the history the
    model was fit on, warm = the rest (a subset of the evaluated users).
    Items: head / tail = the 20% most / least interacted items of that
    history; the ground truth is restricted to the segment's items (the
    ranking is still over the whole catalog), so e.g. tail recall says how
    much of a user's held-out long-tail items the model found.
    """
    k = ks[-1]
    shown = (f"ndcg@{k}", f"recall@{k}")
    user_seg = metrics.user_segments(history.user_counts())
    item_seg = metrics.item_segments(history.item_counts())
    views = {
        f"{name} users": result.subset(mask[result.users])
        for name, mask in (
            ("cold", user_seg["cold"]),
            ("warm", user_seg["warm"]),
        )
    }
    for name in ("head", "tail"):
        views[f"{name} items"] = metrics.evaluate(
            model.score,
            truth,
            exclude=exclude,
            ks=ks,
            item_mask=item_seg[name],
        )
    out = {}
    for name, view in views.items():
        entry = {"num_users": view.num_users}
        for m in shown:
            values = view.per_user[m]
            entry[m] = (
                _round_dict(
                    stats.bootstrap_ci(values, num_bootstrap, seed=seed)
                )
                if len(values)
                else None
            )
        out[name] = entry
    return out


def _segment_lines(report):
    k = report["ks"][-1]
    rows = [(n, r) for n, r in report["models"].items() if r.get("segments")]
    if not rows:
        return []
    names = list(rows[0][1]["segments"])
    lines = [
        "",
        f"## Segments (test N@{k} and R@{k}, mean [95% CI])",
        "",
        "Cold / warm users: bottom 20% / rest by interactions in the "
        "history the model was fit on. Head / tail items: top / bottom 20% "
        "of items by that count; the ground truth is restricted to them.",
        "",
        "| method | "
        + " | ".join(
            f"{s} (n={rows[0][1]['segments'][s]['num_users']})" for s in names
        )
        + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for name, r in rows:
        cells = []
        for s in names:
            seg = r["segments"][s]
            parts = []
            for m in (f"ndcg@{k}", f"recall@{k}"):
                ci = seg.get(m)
                parts.append(
                    "n/a"
                    if ci is None
                    else f"{ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"
                )
            cells.append(" / ".join(parts))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


def plot_report(report: dict):
    """A matplotlib `Figure`: N@K and R@K per model with 95% CI bars."""
    from matplotlib.figure import Figure  # slow import; plots only

    k = report["ks"][-1]
    shown = [f"ndcg@{k}", f"recall@{k}"]
    models = list(report["models"])
    width = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(max(6.0, 1.1 * len(models) + 3), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(shown))
    for j, name in enumerate(models):
        r = report["models"][name]
        means = np.array([r["ci"][m]["mean"] for m in shown])
        err = np.array(
            [
                [r["ci"][m]["mean"] - r["ci"][m]["low"] for m in shown],
                [r["ci"][m]["high"] - r["ci"][m]["mean"] for m in shown],
            ]
        )
        ax.bar(
            x + (j - (len(models) - 1) / 2) * width,
            means,
            width,
            yerr=np.maximum(err, 0),
            capsize=3,
            label=r["label"],
        )
    ax.set_xticks(x, [_short(m) for m in shown])
    ax.set_ylabel("test mean (95% bootstrap CI)")
    ax.set_title(f"Benchmark {report['protocol']}")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _compare(per_user, reference, ks, num_bootstrap, seed):
    """Paired tests of every model against `reference` on N@K and R@K."""
    if reference is None or reference not in per_user:
        if reference is not None:
            logger.info(
                "reference %r not benchmarked: no paired tests", reference
            )
        return {}
    k = ks[-1]
    tests, lines = stats.compare(
        per_user,
        reference,
        (f"ndcg@{k}", f"recall@{k}"),
        seed=seed,
        num_samples=num_bootstrap,
        anchor_first=False,
    )
    for line in lines:
        logger.info("%s", line)
    return {
        name: {metric: _round_dict(test) for metric, test in by.items()}
        for name, by in tests.items()
    }


def _write_outputs(report, per_user, users, out_dir):
    _atomic_write_bytes(
        out_dir / "benchmark.json",
        json.dumps(report, indent=2, allow_nan=False).encode(),
    )
    _atomic_write_bytes(
        out_dir / "benchmark.md", format_markdown(report).encode()
    )
    buffer = io.BytesIO()
    plot_report(report).savefig(buffer, format="png", dpi=120)
    _atomic_write_bytes(out_dir / "benchmark.png", buffer.getvalue())
    arrays = {"users": np.asarray([] if users is None else users)}
    for name, values in per_user.items():
        for metric, array in values.items():
            arrays[f"{name}__{metric}"] = array
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _atomic_write_bytes(out_dir / "per_user.npz", buffer.getvalue())


def _atomic_write_bytes(path, payload: bytes):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def _make_baseline(name, params):
    return baselines.make_baseline(name, **params)


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def _progress_bar(total, enabled):
    return tqdm.tqdm(total=total, disable=not enabled, unit="fit")


def _environment():
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }
    for package in ("numpy", "scipy", "implicit"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return env


def _round_dict(values):
    return {k: _jsonable(v) for k, v in values.items()}


def _jsonable(value):
    """JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (str, type(None))):
        return value
    if isinstance(value, pathlib.Path):
        return str(value)
    return repr(value)


def _format_params(params):
    if not params:
        return "defaults"
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in params.items()
    )


def _format_sizes(sizes):
    return ", ".join(f"{k}={v:,}" for k, v in sizes.items())


def _short(metric):
    name, k = metric.split("@")
    return f"{SHORT_NAMES.get(name, name)}@{k}"
