"""The evaluation actions: `benchmark` (every model against tuned baselines
on protocol P1 or P2), `tune` (hyper-parameter search on valid with the
same budget for every model), `evaluate_cold_items` (the configured model
on items never seen in training) and `evaluate_cold_start` (the multimodal
model against id-only and content baselines on cold items, with an
ablation)."""

import dataclasses
import logging

import keras
import numpy as np

import config as config_lib
import data
import recommenders
from content import items as content_items
from eval import baselines
from eval import benchmark as bench
from eval import cold_start
from eval import protocols
from eval import reports
from eval import tune as tune_lib
from runtime import runs

logger = logging.getLogger(__name__)

COLD_START_MAIN = "multimodal"


def benchmark(cfg):
    """Every model in `eval.benchmark_models` on protocol `eval.protocol`:
    baselines tuned on small grids, Keras models with early stopping on
    valid; Markdown, JSON and a bar chart with CIs in
    `<run>/benchmark-<protocol>/`."""
    protocol = cfg.eval.protocol.lower()
    split = protocols.load_protocol(protocol)
    grids = bench.default_baseline_grids(protocol)
    candidates = {}
    for name in cfg.eval.benchmark_models:
        if recommenders.get(name).kind == "keras":
            candidates[name] = bench.Candidate(
                factory=_keras_factory(cfg, name, split.dataset), label=name
            )
        elif name in grids:
            candidates[name] = grids[name]
        else:
            candidates[name] = bench.Candidate.baseline(name)
    out = cfg.run_dir / f"benchmark-{protocol}"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage)
        report = bench.run_benchmark(
            split,
            candidates,
            stage,
            ks=cfg.eval.ks,
            select_metric=cfg.train.monitor,
            num_bootstrap=cfg.eval.num_bootstrap,
            seed=cfg.seed,
        )
    print((out / "benchmark.md").read_text())
    logger.info("benchmark %s -> %s", protocol, out)
    return report


def evaluate_cold_items(cfg):
    """Cold-start evaluation of `model.name`: hold out
    `eval.cold_item_fraction` of the items entirely, fit on the rest
    (selecting on a chrono valid split of it), then rank only the held-out
    items for every user who interacted with them, beside Random and a
    content-profile baseline on the same users."""
    dataset = data.load(cfg.data)
    split = cold_start.cold_item_split(
        dataset.interactions,
        cfg.data.valid_fraction,
        cfg.eval.cold_item_fraction,
        seed=cfg.seed,
    )
    fits = {cfg.model.name: lambda: _fit(cfg, dataset, split)}
    fits["random"] = lambda: _fit_baseline(
        baselines.Random(seed=cfg.seed), split
    )
    if dataset.item_features is not None:
        fits["content_profile"] = lambda: _fit_baseline(
            baselines.ContentProfile(dataset.item_features.values), split
        )
    metrics = reports.table_metrics(cfg.eval.ks)
    results, per_user = {}, {}
    for name, fit in fits.items():
        per_user[name], results[name] = cold_start.fit_and_evaluate(
            fit, split, metrics, cfg.eval.ks, cfg.eval.num_bootstrap, cfg.seed
        )
    lines = cold_start.significance(
        results,
        per_user,
        cfg.model.name,
        [f"ndcg@{min(cfg.eval.ks)}", f"recall@{max(cfg.eval.ks)}"],
        "paired_test_vs_model",
        seed=cfg.seed,
    )
    report = {
        "protocol": "cold items: rank only held-out items (no training "
        "interactions) for users who interacted with them",
        **split.sizes(),
        "models": results,
        "significance": lines,
    }
    table = cold_start.cold_table(
        results, [f"{m}@{k}" for k in cfg.eval.ks for m in ("recall", "ndcg")]
    )
    out = cfg.run_dir / "cold_items"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage)
        reports.write_report(stage, report, table)
    print(table)
    for line in lines:
        print(line)
    return report


def evaluate_cold_start(cfg, skip_ablation=None):
    """The multimodal model on cold items against id-only two-tower and NCF
    and content baselines (content profile and content ItemKNN over the
    multimodal model's frozen content vectors, the catalog's own item
    features, Random), then (unless `skip_ablation`) the multimodal model
    without each modality. Markdown and JSON in `<run>/cold_start/`."""
    dataset = data.load(cfg.data)
    split = cold_start.cold_item_split(
        dataset.interactions,
        cfg.data.valid_fraction,
        cfg.eval.cold_item_fraction,
        seed=cfg.seed,
    )
    mm_cfg = _with_model(cfg, name=COLD_START_MAIN)
    features = content_items.multimodal_item_features(
        cfg.multimodal, cfg.data.item_features, dataset.item_ids
    )
    content = content_items.content_vectors(features)
    cold_coverage = {
        m: int(features.values[split.cold, -3 + i].sum())
        for i, m in enumerate(content_items.MODALITIES)
    }
    logger.info(
        "cold items=%d users=%d; with text=%d image=%d numeric=%d",
        len(split.cold),
        int((np.diff(split.truth.indptr) > 0).sum()),
        *cold_coverage.values(),
    )
    comparison = {
        COLD_START_MAIN: lambda: _fit(mm_cfg, dataset, split),
        "two_tower (id only)": lambda: _fit(
            _with_model(cfg, name="two_tower", use_item_features=False),
            dataset,
            split,
        ),
        "ncf (id only)": lambda: _fit(
            _with_model(cfg, name="ncf", item_input="id"), dataset, split
        ),
        "content_knn (multimodal content)": lambda: _fit_baseline(
            baselines.ContentKNN(content), split
        ),
        "content_profile (multimodal content)": lambda: _fit_baseline(
            baselines.ContentProfile(content), split
        ),
        "random": lambda: _fit_baseline(baselines.Random(seed=cfg.seed), split),
    }
    if dataset.item_features is not None:
        comparison["content_profile (item features)"] = lambda: _fit_baseline(
            baselines.ContentProfile(dataset.item_features.values), split
        )
    ablation = {}
    for dropped in () if skip_ablation else content_items.MODALITIES:
        kept = tuple(m for m in cfg.multimodal.modalities if m != dropped)
        if kept == tuple(cfg.multimodal.modalities) or not kept:
            continue
        run_cfg = dataclasses.replace(
            mm_cfg,
            multimodal=dataclasses.replace(mm_cfg.multimodal, modalities=kept),
        )
        ablation[f"no {dropped}"] = lambda c=run_cfg: _fit(c, dataset, split)
    ks = cfg.eval.ks
    metrics = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall", "hr")]
    results, per_user = {}, {}
    for table, fits in (("comparison", comparison), ("ablation", ablation)):
        for name, fit in fits.items():
            per_user[name], results[name] = cold_start.fit_and_evaluate(
                fit,
                split,
                metrics,
                ks,
                cfg.eval.num_bootstrap,
                cfg.seed,
                table=table,
            )
            logger.info(
                "%s: cold ndcg@%d=%.4f (fit %.0fs)",
                name,
                min(ks),
                results[name]["summary"][f"ndcg@{min(ks)}"],
                results[name]["fit_seconds"],
            )
    results[f"all ({COLD_START_MAIN})"] = dict(
        results[COLD_START_MAIN], table="ablation"
    )
    lines = cold_start.significance(
        results,
        per_user,
        COLD_START_MAIN,
        [f"ndcg@{min(ks)}"],
        "paired_test_vs_multimodal",
        seed=cfg.seed,
    )
    report = {
        "protocol": "cold items: a seeded random share of the items has no "
        "train/valid interaction; models rank only those items for the "
        "users who interacted with them",
        "cold_items": int(len(split.cold)),
        "cold_item_fraction": cfg.eval.cold_item_fraction,
        "cold_coverage": cold_coverage,
        "coverage": features.stats["coverage"],
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test),
        "backend": keras.backend.backend(),
        "models": results,
        "significance": lines,
    }
    markdown = "\n\n".join(
        [
            "### Cold items: multimodal vs id-only and content baselines",
            cold_start.cold_table(results, metrics, "comparison", True),
            "### Ablation (cold items)",
            cold_start.cold_table(results, metrics, "ablation", True),
            "\n".join(f"- {line}" for line in lines),
        ]
    )
    out = cfg.run_dir / "cold_start"
    with runs.staging_dir(out) as stage:
        runs.write_run_info(cfg, stage)
        reports.write_report(stage, report, markdown)
    print(markdown)
    return report


def _with_model(cfg, **fields):
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, **fields)
    )


def _fit(run_cfg, dataset, split):
    rec = recommenders.build(run_cfg, dataset)
    rec.fit(split.train, split.valid)
    return rec


def _fit_baseline(model, split):
    model.fit(split.train)
    return model


def _keras_factory(cfg, name, dataset):
    """`params -> Recommender` for the benchmark: `epochs` (from a refit)
    sets `train.epochs`, other keys set `model.*` fields."""

    def factory(params):
        model = {"name": name}
        train = {}
        for key, value in params.items():
            (train if key == "epochs" else model)[key] = value
        run_cfg = dataclasses.replace(
            cfg,
            model=dataclasses.replace(cfg.model, **model),
            train=dataclasses.replace(cfg.train, **train),
        )
        return recommenders.build(run_cfg, dataset)

    return factory


def tune(cfg):
    """Search hyper-parameters on the validation split for each model of
    `tune.models` (or `model.name`) with `tune.trials` trials each: Optuna
    over `tune.space[model]` (or eval/tune.py's default space). Writes
    `<run>/tune/<model>/trials.jsonl` and `best.json`, a preset that
    `--preset` reproduces, and `<run>/tune/summary.json`."""
    names = list(cfg.tune.models) or [cfg.model.name]
    for name in names:
        recommenders.get(name)
    protocol = cfg.tune.protocol
    if protocol == "config":
        dataset = data.load(cfg.data)
        train, valid, _ = data.split(
            dataset.interactions,
            cfg.data.split,
            cfg.data.valid_fraction,
            cfg.data.test_fraction,
            seed=cfg.seed,
        )
    else:
        split = protocols.load_protocol(protocol)
        dataset, train, valid = split.dataset, split.train, split.valid
    out = cfg.run_dir / "tune"
    summary = {}
    for name in names:
        space = cfg.tune.space.get(name) or tune_lib.DEFAULT_SPACES.get(name)
        if not space:
            raise ValueError(
                f"No search space for {name!r}: give one with "
                f"`--set \"tune.space={{'{name}': {{'model.x': (lo, hi)}}}}\"`."
            )
        base = _with_model(cfg, name=name, baseline_params={})

        def build(params, base=base):
            sets = tune_lib.overrides(params)
            return recommenders.build(config_lib.override(base, sets), dataset)

        logger.info(
            "tuning %s: %d trials over %s", name, cfg.tune.trials, sorted(space)
        )
        best, trials = tune_lib.tune_model(
            build,
            train,
            valid,
            space,
            cfg.tune.trials,
            metric=cfg.train.monitor,
            seed=cfg.seed,
            timeout_s=cfg.tune.timeout_s,
            out_dir=out / name,
            ks=cfg.eval.ks,
            sampler=cfg.tune.sampler,
        )
        preset = {
            "preset": "default",
            "overrides": [f"model.name={name!r}", "model.baseline_params={}"]
            + tune_lib.overrides(best.params)
            + ([f"eval.protocol={protocol!r}"] if protocol != "config" else []),
            "metric": cfg.train.monitor,
            "value": best.value,
            "refit": best.refit,
            "protocol": protocol,
            "trials": len(trials),
        }
        runs.write_json(out / name / "best.json", preset)
        summary[name] = {k: preset[k] for k in ("value", "trials")} | {
            "params": best.params,
            "seconds": sum(t.seconds for t in trials),
        }
        print(
            f"{name}: valid {cfg.train.monitor} {best.value:.4f} after "
            f"{len(trials)} trials -> {out / name / 'best.json'}"
        )
    runs.write_json(out / "summary.json", summary)
    return summary
