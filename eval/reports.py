"""The validation report of the template actions: the metrics table with
95% CIs, paired tests of the main model against the baselines, and the
`metrics.json` / `metrics.md` pair every evaluating action writes."""

from eval import stats as stats_lib
from runtime import runs

TABLE_METRICS_NAMES = ("recall", "ndcg", "hr", "mrr")


def table_metrics(ks=(10, 20)):
    """The metrics of the reports: recall, NDCG, HR and MRR at each K."""
    return tuple(f"{m}@{k}" for k in ks for m in TABLE_METRICS_NAMES)


TABLE_METRICS = table_metrics()


def format_table(results, ks):
    """Markdown table of valid and test metrics (test with 95% CIs) and
    fit seconds, one row per model and split."""
    cols = [m for m in TABLE_METRICS if int(m.split("@")[1]) in ks]
    head = "| model | split | " + " | ".join(cols) + " | fit s |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for name, res in results.items():
        for split_name in ("valid", "test"):
            summary = res[split_name]["summary"]
            cells = []
            for m in cols:
                cell = f"{summary[m]:.4f}"
                ci = res[split_name].get("ci", {}).get(m)
                if ci:
                    cell += f" [{ci['low']:.4f}, {ci['high']:.4f}]"
                cells.append(cell)
            fit = res.get(f"fit_seconds_{split_name}", float("nan"))
            lines.append(
                f"| {name} | {split_name} | "
                + " | ".join(cells)
                + f" | {fit:.1f} |"
            )
    return "\n".join(lines)


def add_significance(report, main, metric, per_user_test, seed=0):
    """Paired tests of `main` against every other model of
    `report["models"]` on `metric` (test split), stored in each model's
    entry as `paired_test_vs_main` and as sentences in
    `report["significance"]`. Models evaluated on other users are skipped.

    Args:
        per_user_test: dict of model name to its test `RankingResult`.
    """
    users = per_user_test[main].users
    same = {
        name: result.per_user
        for name, result in per_user_test.items()
        if len(result.users) == len(users) and (result.users == users).all()
    }
    tests, lines = stats_lib.compare(same, main, [metric], seed=seed)
    for name, by_metric in tests.items():
        report["models"][name]["paired_test_vs_main"] = by_metric[metric]
    report["significance"] = lines
    return lines


def write_report(folder, report, markdown):
    """`metrics.json` (everything) and `metrics.md` (the table)."""
    runs.write_json(folder / "metrics.json", report)
    runs.atomic_write_text(folder / "metrics.md", markdown + "\n")
