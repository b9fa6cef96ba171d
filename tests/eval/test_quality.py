"""The quality guard: on the shipped P1 data, EASE and ItemKNN reproduce
the reference numbers of BENCHMARK.md within 1%, and the default model,
fit with a bounded number of epochs, beats MostPopular by at least .02
N@20. Slow, full runs stay in benchmarks/."""

import dataclasses

import pytest

import config
import recommenders
from eval import baselines
from eval import metrics
from eval import protocols

# BENCHMARK.md, P1 test after refit on train + valid.
REFERENCE = {
    "ease": (
        {"l2": 250.0},
        {
            "recall@10": 0.0680,
            "ndcg@10": 0.1303,
            "recall@20": 0.1255,
            "ndcg@20": 0.1422,
            "hr@10": 0.5459,
            "mrr@10": 0.2513,
        },
    ),
    "itemknn": (
        {"k": 50},
        {
            "recall@10": 0.0614,
            "ndcg@10": 0.1200,
            "recall@20": 0.1101,
            "ndcg@20": 0.1285,
            "hr@10": 0.5098,
            "mrr@10": 0.2422,
        },
    ),
}
GUARD_EPOCHS = 6  # bound on the default model's fit in CI


@pytest.fixture(scope="module")
def p1():
    return protocols.load_p1()


def _test_metrics(model, split):
    model.fit(protocols.history_for_test(split))
    return metrics.evaluate(
        model.score,
        split.test.to_csr(),
        exclude=protocols.exclude_for_test(split),
        ks=(10, 20),
    ).summary()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_baselines_reproduce_the_reference_within_one_percent(p1, name):
    params, expected = REFERENCE[name]
    got = _test_metrics(baselines.make_baseline(name, **params), p1)
    for metric, value in expected.items():
        assert got[metric] == pytest.approx(value, rel=0.01, abs=5e-5), (
            metric,
            got[metric],
            value,
        )


def test_default_model_beats_most_popular_by_002(p1):
    cfg = config.default()
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, epochs=min(cfg.train.epochs, GUARD_EPOCHS), verbose=0
        ),
    )
    model = recommenders.build(cfg, p1.dataset)
    model.fit(p1.train, p1.valid)
    refit = recommenders.build(cfg, p1.dataset)
    refit.fit(protocols.history_for_test(p1), None, **model.refit_params())
    ours = metrics.evaluate(
        refit.score,
        p1.test.to_csr(),
        exclude=protocols.exclude_for_test(p1),
        ks=(20,),
    ).summary()["ndcg@20"]
    popular = _test_metrics(baselines.MostPopular(), p1)["ndcg@20"]
    assert ours >= popular + 0.02, (cfg.model.name, ours, popular)
