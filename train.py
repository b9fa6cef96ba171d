"""The template actions: look at the data, fit and select, fit for
production, predict.

`exploratory_data_analysis`, `train_validation_model`,
`train_production_model`, `compute_predictions` and `smoke` each take the
`Config` and work through the one recommender interface
(`recommenders.build`, `recommenders.load`): nothing here knows which
family it runs. Library code never imports this module.
"""

import dataclasses
import json
import logging
import pathlib
import time

import keras
import numpy as np

import config as config_lib
import data
import eda
import recommenders
from eval import metrics as metrics_lib
from eval import reports
from eval import scorer as scorer_lib
from eval import stats as stats_lib
from runtime import runs
from runtime import tracking
from serving import retrieval

logger = logging.getLogger(__name__)


MIN_EVAL_USERS = 20  # fewer users with test items: metrics are noise


def check_data(cfg):
    """Read the data exactly as the config says and report, without
    training: the file (format, separator, encoding), rows kept by each
    filter step, users and items, sample rows, timestamps, duplicates,
    feature-file coverage, the split, the memory each model family would
    need, and a warning for every risky combination. Writes
    `<run>/check_data.json`; an error in the data stops with its message
    (exit code 1)."""
    dataset = data.load(cfg.data)
    report = data.describe(dataset, cfg.data)
    train, valid, test = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    report["split"] = {
        "method": cfg.data.split,
        "train": len(train),
        "valid": len(valid),
        "test": len(test),
        "test_users": int(len(np.unique(test.user))),
    }
    x = dataset.interactions
    report["memory_gib"] = {
        name: round(
            recommenders.get(name).memory(cfg, x.num_users, x.num_items, len(x))
            / 2**30,
            3,
        )
        for name in recommenders.names()
        if recommenders.get(name).memory is not None
    }
    report["warnings"] = _data_warnings(cfg, report)
    print(_format_check(report))
    runs.write_json(cfg.run_dir / "check_data.json", report)
    return report


def exploratory_data_analysis(cfg):
    """Figures and a JSON summary of the raw and the filtered data."""
    dataset = data.load(cfg.data)
    out = cfg.run_dir / "eda"
    out.mkdir(parents=True, exist_ok=True)
    summary = eda.run_eda(dataset.raw, dataset.filtered_frame(), out)
    logger.info("EDA figures -> %s", out)
    return summary


@tracking.tracked("validation")
def train_validation_model(cfg):
    """Protocol P1 end to end: fit on train with early stopping on the
    validation ranking metric, refit on train+valid for the chosen number of
    epochs, report test metrics beside the configured baselines."""
    dataset = data.load(cfg.data)
    train, valid, test = data.split(
        dataset.interactions,
        cfg.data.split,
        cfg.data.valid_fraction,
        cfg.data.test_fraction,
        seed=cfg.seed,
    )
    warnings = _evaluation_warnings(test)
    out = cfg.run_dir / "validation"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage, dataset)
        names = [cfg.model.name] + [
            b for b in cfg.eval.baselines if b != cfg.model.name
        ]
        results, models, per_user = {}, {}, {}
        for name in names:
            # model.baseline_params belong to the main model only.
            run_cfg = (
                cfg
                if name == cfg.model.name
                else dataclasses.replace(
                    cfg,
                    model=dataclasses.replace(
                        cfg.model, name=name, baseline_params={}
                    ),
                )
            )
            results[name], models[name], per_user[name] = _validate_and_test(
                run_cfg, dataset, train, valid, test, stage
            )
        # The refit model is the one whose test metrics are reported; the
        # model fit on train alone (which chose the epochs) is kept beside.
        selected, tested = models[cfg.model.name]
        tested.save(stage / "model")
        selected.save(stage / "model_train_only")
        report = {
            "model": cfg.model.name,
            "warnings": warnings,
            "protocol": "valid: fit on train, mask train; test: refit on "
            "train+valid with the chosen epochs, mask train+valid",
            "split": {
                "method": cfg.data.split,
                "train": len(train),
                "valid": len(valid),
                "test": len(test),
            },
            "models": results,
        }
        reports.add_significance(
            report,
            cfg.model.name,
            f"ndcg@{max(cfg.eval.ks)}",
            per_user,
            seed=cfg.seed,
        )
        table = reports.format_table(results, cfg.eval.ks)
        reports.write_report(stage, report, table)
    print(table)
    for line in report.get("significance", []) + warnings:
        print(line)
    logger.info("wrote %s", out)
    return report


@tracking.tracked("production")
def train_production_model(cfg):
    """Fit on every interaction with the epoch count the validation run
    chose, and save the model for `compute_predictions`."""
    dataset = data.load(cfg.data)
    epochs = None
    if recommenders.get(cfg.model.name).kind == "keras":
        epochs = _selected_epochs(cfg)
    out = cfg.run_dir / "production"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage, dataset)
        rec = recommenders.build(cfg, dataset)
        start = time.perf_counter()
        if epochs:
            rec.fit(dataset.interactions, None, epochs=epochs)
        else:
            rec.fit(dataset.interactions, None)
        seconds = time.perf_counter() - start
        rec.save(stage / "model")
        runs.write_json(
            stage / "metrics.json",
            {
                "model": cfg.model.name,
                "epochs": epochs,
                "interactions": len(dataset.interactions),
                "fit_seconds": seconds,
            },
        )
    logger.info(
        "production model %s: interactions=%d epochs=%s fit=%.1fs -> %s",
        cfg.model.name,
        len(dataset.interactions),
        epochs,
        seconds,
        out,
    )


def compute_predictions(cfg):
    """Top-K unseen items for every user, with raw ids and scores, written
    atomically to `<run>/recommendations.json`."""
    model_dir = cfg.run_dir / "production" / "model"
    if not model_dir.exists():
        raise FileNotFoundError(
            f"{model_dir} not found: run `python main.py "
            "train_production_model` first."
        )
    encoders_path = cfg.run_dir / "production" / runs.ENCODERS_FILE
    encoders = runs.read_json(
        encoders_path, "python main.py train_production_model"
    )
    user_ids = np.asarray(encoders["user_ids"])
    item_ids = np.asarray(encoders["item_ids"])
    dataset = data.load(cfg.data)
    if not (
        np.array_equal(dataset.user_ids, user_ids)
        and np.array_equal(dataset.item_ids, item_ids)
    ):
        raise ValueError(
            f"The data at {cfg.data.path} no longer matches the production "
            f"model's id maps ({encoders_path}): retrain with "
            "train_production_model."
        )
    rec = recommenders.load(model_dir, "python main.py train_production_model")
    start = time.perf_counter()
    items, scores, _ = retrieval.recommend(
        rec,
        np.arange(len(user_ids)),
        dataset.interactions.to_csr(),
        cfg.output.top_k,
        cfg.scale,
        cfg.eval.memory_budget_mb,
        seed=cfg.seed,
    )
    seconds = time.perf_counter() - start
    recs = {
        str(user_ids[u]): [
            {"item": runs.plain(item_ids[i]), "score": round(float(s), 6)}
            for i, s in zip(items[u], scores[u])
            if np.isfinite(s)
        ]
        for u in range(len(user_ids))
    }
    payload = {
        "model": cfg.model.name,
        "k": cfg.output.top_k,
        "num_users": len(user_ids),
        "backend": keras.backend.backend(),
        "seconds": round(seconds, 3),
        "recommendations": recs,
    }
    path = cfg.run_dir / "recommendations.json"
    runs.atomic_write_text(path, json.dumps(payload))
    logger.info(
        "recommendations for users=%d k=%d in %.2fs -> %s",
        len(user_ids),
        cfg.output.top_k,
        seconds,
        path,
    )
    return payload


def smoke(cfg):
    """A quick end-to-end run of the template actions with a tiny model
    (the `tiny` preset applied over `cfg`) into `<run_name>-smoke`, for
    installation checks."""
    cfg = config_lib.override(
        config_lib.tiny(cfg),
        [f"output.run_name={cfg.run_dir.name + '-smoke'!r}"],
    )
    train_validation_model(cfg)
    train_production_model(cfg)
    payload = compute_predictions(cfg)
    logger.info("smoke run ok on backend=%s", keras.backend.backend())
    return payload


def evaluate_split(recommender, truth, exclude, cfg, item_popularity=None):
    """Full-ranking metrics of a fitted recommender on one split."""
    return metrics_lib.evaluate(
        recommender.score,
        truth.to_csr(),
        exclude=exclude.to_csr(),
        ks=cfg.eval.ks,
        block_size=metrics_lib.block_size_for(
            truth.num_items, cfg.eval.memory_budget_mb
        ),
        item_popularity=item_popularity,
    )


def _selected_epochs(cfg):
    """The epoch count `train_validation_model` selected for this model in
    this run folder."""
    metrics_path = cfg.run_dir / "validation" / "metrics.json"
    report = runs.read_json(
        metrics_path,
        "python main.py train_validation_model"
        + (
            f" --set model.name={cfg.model.name}"
            if cfg.model.name != config_lib.ModelConfig.name
            else ""
        ),
    )
    trained = report.get("model", next(iter(report.get("models", {})), None))
    if trained != cfg.model.name:
        raise ValueError(
            f"{metrics_path} holds a validation run of {trained!r}, not "
            f"{cfg.model.name!r}: run `python main.py train_validation_model "
            f"--set model.name={cfg.model.name}` first, or train the "
            f"production model of {trained!r} with `--set "
            f"model.name={trained}`."
        )
    epochs = report["models"][cfg.model.name].get("best_epoch")
    if not epochs:
        raise ValueError(
            f"{metrics_path} has no best epoch for {cfg.model.name!r}; "
            "rerun train_validation_model with this model."
        )
    return epochs


def _data_warnings(cfg, report):
    """Every risky combination `check_data` can see, as sentences."""
    out = []
    d = cfg.data
    found, used = report.get("separator_detected"), report.get("separator")
    if found and used and found != used:
        out.append(
            f"the file looks {found!r}-separated but is read with "
            f"{used!r}: check `data.sep` / `data.format`."
        )
    time = report["time"]
    if time["column"] is None:
        out.append(
            "no timestamps: "
            + (
                "file order is used as time (`data.order_by_file=True`)."
                if d.order_by_file
                else "only `data.split='random'` is possible; a user's test "
                "items are a random sample of their items."
            )
        )
    ratings = report["ratings"]
    if (
        ratings
        and d.weight_col is None
        and ratings["integral"]
        and ratings["max"] > 10
    ):
        out.append(
            f"`data.rating_col` ({d.rating_col}) holds integers up to "
            f"{ratings['max']:g}: if they are counts (plays, clicks), set "
            "`data.weight_col` to it (and `data.rating_col=None`) so they "
            "become sample weights instead of ratings."
        )
    if report["duplicate_rows"]:
        out.append(
            f"{report['duplicate_rows']} repeated (user, item) rows are "
            f"resolved by `data.duplicates={d.duplicates!r}`."
        )
    items = report["item_features"]
    if items["path"] and not items["used"]:
        out.append(
            f"item features {pathlib.Path(items['path']).name} are not "
            "used: the shipped MovieLens features join only onto the "
            "shipped MovieLens ratings."
        )
    elif items["used"] and items["share"] < 0.9:
        out.append(
            f"the item feature file covers {items['share']:.0%} of the "
            "items; the rest get an all-missing feature row."
        )
    if report["users"] < 2:
        out.append("one user only: every ranking metric is trivial.")
    if report["split"]["test_users"] < MIN_EVAL_USERS:
        out.append(
            f"only {report['split']['test_users']} users have test "
            "interactions: metrics over so few users are not meaningful."
        )
    heavy = {
        name: gib
        for name, gib in report["memory_gib"].items()
        if gib > cfg.eval.memory_warning_gb
    }
    if heavy:
        out.append(
            "models estimated above `eval.memory_warning_gb` "
            f"({cfg.eval.memory_warning_gb:g} GiB): "
            + ", ".join(f"{n} {g:.1f} GiB" for n, g in heavy.items())
        )
    return out


def _format_check(report):
    steps = " -> ".join(f"{k} {v:,}" for k, v in report["steps"].items())
    time = report["time"]
    lines = [
        f"file: {report['file']} ({report['bytes']:,} bytes, "
        f"{report['format']}, encoding {report['encoding']}, "
        f"header {report['header']})",
    ]
    if "separator" in report:
        lines.append(
            f"separator: {report['separator']!r} (detected: "
            f"{report['separator_detected']!r})"
        )
    lines += [
        f"rows: {steps}",
        f"users {report['users']:,}, items {report['items']:,}, "
        f"interactions {report['interactions']:,} (density "
        f"{report['density']:.5f}); per user {report['per_user']}, per "
        f"item {report['per_item']}",
        "time: "
        + (
            f"`{time['column']}` from {time.get('first_date')} to "
            f"{time.get('last_date')}"
            if time["column"]
            else "no timestamp column"
            + (" (file order)" if time["order_by_file"] else "")
        ),
        f"duplicate (user, item) rows: {report['duplicate_rows']:,}",
        f"ratings: {report['ratings']}",
        f"weights: {report['weights']}",
        f"item features: {report['item_features']}",
        f"user features: {report['user_features']}",
        f"split: {report['split']}",
        "memory estimates (GiB): "
        + ", ".join(f"{k} {v:g}" for k, v in report["memory_gib"].items()),
        "sample rows:",
        *(f"  {row}" for row in report["sample"]),
    ]
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)


def _evaluation_warnings(test):
    """Sentences about test sets too small for the metrics to mean much."""
    users = len(np.unique(test.user))
    if users >= MIN_EVAL_USERS:
        return []
    message = (
        f"warning: only {users} user(s) have test interactions; metrics "
        f"over fewer than {MIN_EVAL_USERS} users are not meaningful (see "
        "the confidence intervals)."
    )
    logger.warning("%s", message)
    return [message]


def _validate_and_test(cfg, dataset, train, valid, test, stage):
    """Fit on train (select on valid), then refit on train+valid and test.

    Returns:
        `(entry, (selected, refit), test result)`: the report entry, the
        model fit on train that selected on valid and the model refit on
        train + valid (the tested one), and the per-user test metrics.
    """
    pop_train = train.item_counts()
    rec = recommenders.build(cfg, dataset)
    start = time.perf_counter()
    rec.fit(train, valid)
    fit_valid = time.perf_counter() - start
    valid_result = evaluate_split(rec, valid, train, cfg, pop_train)
    refit = rec.refit_params()
    train_valid = train.concat(valid)
    rec_test = recommenders.build(cfg, dataset)
    start = time.perf_counter()
    rec_test.fit(train_valid, None, **refit)
    fit_test = time.perf_counter() - start
    test_result = evaluate_split(
        rec_test, test, train_valid, cfg, train_valid.item_counts()
    )
    ci = stats_lib.confidence_intervals(
        test_result.per_user,
        reports.TABLE_METRICS,
        cfg.eval.num_bootstrap,
        cfg.seed,
    )
    logger.info(
        "%s: valid recall@20=%.4f test ndcg@20=%.4f",
        cfg.model.name,
        valid_result.summary().get("recall@20", float("nan")),
        test_result.summary().get("ndcg@20", float("nan")),
    )
    scorer = None
    if recommenders.get(cfg.model.name).pointwise:
        scorer = _evaluate_scorer(cfg, rec_test, test, train_valid, stage)
    entry = {
        "scorer": scorer,
        "valid": valid_result.to_json_dict(),
        "test": {**test_result.to_json_dict(), "ci": ci},
        "best_epoch": refit.get("epochs"),
        "fit_seconds_valid": fit_valid,
        "fit_seconds_test": fit_test,
        "history": getattr(rec, "fit_history", {}),
    }
    return entry, (rec, rec_test), test_result


def _evaluate_scorer(cfg, rec, test, known, stage):
    """A pointwise model as a scorer: ROC-AUC with a bootstrap CI, ROC
    curve and calibration plot on held-out test pairs plus one sampled
    unseen item per pair (label 0); with `model.like_threshold`, test
    ratings below it are negatives too."""
    exclude = known.concat(test).to_csr()
    user, item, label = scorer_lib.held_out_pairs(
        test,
        exclude,
        num_negatives=1,
        seed=cfg.seed,
        like_threshold=cfg.model.like_threshold,
    )
    logits = rec.score_pairs(user, item)
    probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    result = scorer_lib.evaluate_scorer(
        label,
        probs,
        out_dir=stage / "scorer",
        num_bootstrap=cfg.eval.num_bootstrap,
        seed=cfg.seed,
        name=cfg.model.name,
    )
    logger.info(
        "%s scorer on %d held-out pairs: AUC=%.4f [%.4f, %.4f] ECE=%.4f",
        cfg.model.name,
        len(label),
        result["auc"],
        result["auc_ci"]["low"],
        result["auc_ci"]["high"],
        result["ece"],
    )
    return result
