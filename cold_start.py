"""Cold-start evaluation of the multimodal model (`evaluate_cold_start`).

The `cold_items` split (`data.split`) holds out a seeded random share of
the items entirely: none of their interactions is in train or valid. Every
model is fit on train (early stopping on the warm valid split, as it would
be in production, where the cold items are not known yet) and then ranks
only the held-out items for each user who interacted with one of them.

Two tables with 95% bootstrap CIs over users, and paired tests against the
full multimodal model:

1. Multimodal vs id-only two-tower and NCF (their item vectors for cold
   items never trained, so they rank them at chance or worse) vs content
   baselines: the content profile over the catalog's own item features
   (`ContentProfile`), and a content ItemKNN and a content profile over the
   multimodal model's frozen content vectors (`ContentKNN`), and Random.
2. Ablation: the multimodal model without image, without text, without
   numeric, and with all modalities.
"""

import json
import logging
import time

import numpy as np

import config as config_lib
import data
import item_content
import train
from eval import baselines
from eval import metrics as metrics_lib
from eval import stats as stats_lib

logger = logging.getLogger(__name__)

MAIN = "multimodal"


def evaluate_cold_start(cfg, skip_ablation=None):
    """Both tables (the first only with `skip_ablation`) on the cold-item
    split of `cfg.data`; Markdown and JSON in `<run>/cold_start/`."""
    dataset = data.load(cfg.data)
    train_, valid, test = data.split(
        dataset.interactions,
        "cold_items",
        cfg.data.valid_fraction,
        cfg.eval.cold_item_fraction,
        seed=cfg.seed,
    )
    cold = np.unique(test.item)
    truth = test.to_csr()[:, cold]
    mm_cfg = config_lib.override(cfg, ["model.name='multimodal'"])
    features = item_content.item_features_from_config(
        mm_cfg, dataset.item_ids
    )
    content = item_content.content_vectors(features)
    cold_coverage = {
        m: int(features.values[cold, -3 + i].sum())
        for i, m in enumerate(item_content.MODALITIES)
    }
    logger.info(
        "cold items=%d users=%d; with text=%d image=%d numeric=%d",
        len(cold),
        int((np.diff(truth.indptr) > 0).sum()),
        *cold_coverage.values(),
    )
    models = {
        MAIN: lambda: _keras(mm_cfg, dataset, train_, valid),
        "two_tower (id only)": lambda: _keras(
            config_lib.override(
                cfg,
                ["model.name='two_tower'", "model.use_item_features=False"],
            ),
            dataset, train_, valid,
        ),
        "ncf (id only)": lambda: _keras(
            config_lib.override(
                cfg, ["model.name='ncf'", "model.item_input='id'"]
            ),
            dataset, train_, valid,
        ),
        "content_knn (multimodal content)": lambda: _baseline(
            baselines.ContentKNN(content), train_
        ),
        "content_profile (multimodal content)": lambda: _baseline(
            baselines.ContentProfile(content), train_
        ),
        "random": lambda: _baseline(baselines.Random(seed=cfg.seed), train_),
    }
    if dataset.item_features is not None:
        models["content_profile (item features)"] = lambda: _baseline(
            baselines.ContentProfile(dataset.item_features.values), train_
        )
    ablation = {}
    for dropped in () if skip_ablation else item_content.MODALITIES:
        kept = tuple(m for m in cfg.multimodal.modalities if m != dropped)
        if kept == tuple(cfg.multimodal.modalities) or not kept:
            continue
        run_cfg = config_lib.override(
            mm_cfg, [f"multimodal.modalities={kept!r}"]
        )
        ablation[f"no {dropped}"] = (
            lambda c=run_cfg: _keras(c, dataset, train_, valid)
        )
    results, per_user = {}, {}
    for table, entries in (("comparison", models), ("ablation", ablation)):
        for name, fit in entries.items():
            start = time.perf_counter()
            scorer = fit()
            seconds = time.perf_counter() - start
            result = metrics_lib.evaluate(
                lambda users, s=scorer: s.score(users, cold),
                truth,
                ks=cfg.eval.ks,
            )
            per_user[name] = result
            results[name] = _summary(result, cfg, table, seconds)
            logger.info(
                "%s: cold ndcg@%d=%.4f (fit %.0fs)",
                name,
                min(cfg.eval.ks),
                results[name]["summary"][f"ndcg@{min(cfg.eval.ks)}"],
                seconds,
            )
    results[f"all ({MAIN})"] = dict(results[MAIN], table="ablation")
    lines = _significance(results, per_user, cfg)
    report = {
        "protocol": "cold items: a seeded random share of the items has no "
        "train/valid interaction; models rank only those items for the "
        "users who interacted with them",
        "cold_items": int(len(cold)),
        "cold_item_fraction": cfg.eval.cold_item_fraction,
        "cold_coverage": cold_coverage,
        "coverage": features.stats["coverage"],
        "train": len(train_),
        "valid": len(valid),
        "test": len(test),
        "backend": train.keras.backend.backend(),
        "models": results,
        "significance": lines,
    }
    markdown = "\n\n".join(
        [
            "### Cold items: multimodal vs id-only and content baselines",
            cold_table(results, cfg.eval.ks, "comparison"),
            "### Ablation (cold items)",
            cold_table(results, cfg.eval.ks, "ablation"),
            "\n".join(f"- {line}" for line in lines),
        ]
    )
    out = cfg.run_dir / "cold_start"
    with train.staging_dir(out) as stage:
        train.write_run_info_config(cfg, stage)
        data.atomic_write_text(
            stage / "metrics.json", json.dumps(report, indent=2)
        )
        data.atomic_write_text(stage / "metrics.md", markdown + "\n")
    print(markdown)
    return report


def cold_table(results, ks, table):
    """Markdown table of mean [95% CI] per metric for one table's rows."""
    cols = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall", "hr")]
    lines = [
        "| model | " + " | ".join(cols) + " | fit s |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name, res in results.items():
        if res["table"] != table:
            continue
        cells = [
            f"{res['ci'][m]['mean']:.4f} [{res['ci'][m]['low']:.4f}, "
            f"{res['ci'][m]['high']:.4f}]"
            for m in cols
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {res['fit_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _keras(run_cfg, dataset, train_, valid):
    rec = train.make_recommender(run_cfg, dataset)
    rec.fit(train_, valid)
    return rec


def _baseline(model, train_):
    model.fit(train_)
    return model


def _summary(result, cfg, table, seconds):
    cols = [f"{m}@{k}" for k in cfg.eval.ks for m in ("ndcg", "recall", "hr")]
    return {
        "table": table,
        "fit_seconds": seconds,
        "users": int(len(result.users)),
        "summary": result.to_json_dict()["summary"],
        "ci": {
            m: stats_lib.bootstrap_ci(
                result.per_user[m], cfg.eval.num_bootstrap, seed=cfg.seed
            )
            for m in cols
        },
    }


def _significance(results, per_user, cfg):
    """Paired tests of the full multimodal model against every other row,
    on NDCG at the smallest cut-off; stored in the rows and returned as
    sentences."""
    metric = f"ndcg@{min(cfg.eval.ks)}"
    main = per_user[MAIN]
    lines = []
    for name, other in per_user.items():
        if name == MAIN:
            continue
        test = stats_lib.paired_test(
            main.per_user[metric], other.per_user[metric], seed=cfg.seed
        )
        results[name]["paired_test_vs_multimodal"] = {
            k: (bool(v) if isinstance(v, (bool, np.bool_)) else v)
            for k, v in test.items()
        }
        lines.append(stats_lib.describe_difference(test, MAIN, name, metric))
    return lines
