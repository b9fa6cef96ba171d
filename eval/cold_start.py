"""Cold-start evaluation: rank items that had no interaction in training.

The `cold_items` split (`data.split`) holds out a seeded random share of
the items entirely: none of their interactions is in train or valid. Every
model is fit on train (early stopping on the warm valid split, as it would
be in production, where the cold items are not known yet) and then ranks
only the held-out items for each user who interacted with one of them.
Id-only models cannot rank such items (their item vectors never trained);
the comparison is meaningful for models that read item content.

`evaluate_cold_items` and `evaluate_cold_start` (eval/actions.py) both use
this module: one split, one scoring rule, one table format, CIs over users
and paired tests against the main model.
"""

import dataclasses
import time

import numpy as np
import scipy.sparse as sp

import data
from eval import metrics as metrics_lib
from eval import stats as stats_lib


@dataclasses.dataclass(frozen=True)
class ColdSplit:
    """Train / valid on the warm items, test on the cold ones.

    Args:
        train, valid, test: `data.Interactions`.
        cold: `(c,)` sorted indices of the cold items.
        truth: `(num_users, c)` CSR: each user's test interactions with
            the cold items (columns in `cold` order).
    """

    train: data.Interactions
    valid: data.Interactions
    test: data.Interactions
    cold: np.ndarray
    truth: sp.csr_matrix

    def sizes(self) -> dict:
        return {
            "cold_items": int(len(self.cold)),
            "train": len(self.train),
            "valid": len(self.valid),
            "test": len(self.test),
        }


def cold_item_split(interactions, valid_fraction, cold_fraction, seed=0):
    """The `ColdSplit` of `interactions`: `cold_fraction` of the items held
    out, a chrono `valid_fraction` of the rest for selection."""
    train, valid, test = data.split(
        interactions, "cold_items", valid_fraction, cold_fraction, seed=seed
    )
    cold = np.unique(test.item)
    return ColdSplit(train, valid, test, cold, test.to_csr()[:, cold])


def evaluate_cold(scorer, split, ks=(10, 20)):
    """Full-ranking metrics of a fitted `scorer` ranking only the cold
    items for the users who interacted with them."""
    return metrics_lib.evaluate(
        lambda users: scorer.score(users, split.cold), split.truth, ks=ks
    )


def fit_and_evaluate(
    fit, split, metrics, ks=(10, 20), num_bootstrap=1000, seed=0, **extra
):
    """Run `fit()` (returning a fitted scorer), evaluate it on the cold
    items and summarise.

    Returns:
        `(result, row)`: the `RankingResult` and a JSON-ready row with the
        summary, a bootstrap CI per metric of `metrics`, the number of
        users, the fit time and `extra`.
    """
    start = time.perf_counter()
    scorer = fit()
    seconds = time.perf_counter() - start
    result = evaluate_cold(scorer, split, ks)
    row = {
        **extra,
        "fit_seconds": seconds,
        "users": int(len(result.users)),
        "summary": result.to_json_dict()["summary"],
        "ci": stats_lib.confidence_intervals(
            result.per_user, metrics, num_bootstrap, seed
        ),
    }
    return result, row


def significance(results, per_user, main, metrics, key, seed=0):
    """Paired tests of `main` against every other row on `metrics`, stored
    in each row under `key`; returns the sentences."""
    tests, lines = stats_lib.compare(
        {name: r.per_user for name, r in per_user.items()},
        main,
        metrics,
        seed=seed,
    )
    for name, by_metric in tests.items():
        results[name][key] = by_metric
    return lines


def cold_table(results, metrics, table=None, fit_seconds=False):
    """Markdown table of mean [95% CI] per metric, one row per model (the
    rows whose `table` field is `table`, when given)."""
    head = "| model | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---|" * len(metrics)
    if fit_seconds:
        head += " fit s |"
        rule += "---|"
    lines = [head, rule]
    for name, res in results.items():
        if table is not None and res.get("table") != table:
            continue
        cells = [
            f"{res['ci'][m]['mean']:.4f} [{res['ci'][m]['low']:.4f}, "
            f"{res['ci'][m]['high']:.4f}]"
            for m in metrics
        ]
        line = f"| {name} | " + " | ".join(cells) + " |"
        if fit_seconds:
            line += f" {res['fit_seconds']:.0f} |"
        lines.append(line)
    return "\n".join(lines)
