"""content/personas/evaluate.py: the persona rerank judged against its own
first stage: views by user and item segment, CIs and paired tests, the
blend sweep, latency and the Markdown report; and the `evaluate_persona`
action that writes them."""

import json

import numpy as np
import pytest

import data
import recommenders
from content.personas import actions as persona_actions
from content.personas import evaluate as persona_eval
from eval import metrics as metrics_lib
from tests.content.personas.fixtures import persona_config


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cfg = persona_config(tmp_path_factory.mktemp("persona-eval"))
    dataset = data.load(cfg.data)
    train, valid, test = data.split(dataset.interactions, "leave_last_out")
    rec = recommenders.build(cfg, dataset)
    rec.fit(train.concat(valid), None)
    return cfg, rec, train.concat(valid), valid, test


def test_views_cover_every_segment_with_tests(fitted):
    _, rec, known, _, test = fitted
    views, latency = persona_eval.evaluate_reranker(
        rec, known, test, num_bootstrap=20, seed=0
    )
    assert set(views) == {
        "all",
        "cold users",
        "warm users",
        "head items",
        "tail items",
    }
    everyone = views["all"]
    assert everyone["num_users"] == len(np.unique(test.user))
    assert (
        views["cold users"]["num_users"] + views["warm users"]["num_users"]
    ) == everyone["num_users"]
    assert set(everyone["models"]) == {"first_stage", "rerank", "persona_only"}
    # The first stage's numbers are the plain evaluation of its scores.
    direct = metrics_lib.evaluate(
        rec.first_stage.score,
        test.to_csr(),
        exclude=known.to_csr(),
        ks=persona_eval.EVAL_KS,
    ).summary()
    for metric in ("ndcg@10", "hr@5", "mrr@20"):
        ci = everyone["models"]["first_stage"][metric]
        assert ci["mean"] == pytest.approx(direct[metric])
        assert ci["low"] <= ci["mean"] <= ci["high"]
    paired = everyone["paired"]["rerank"]["ndcg@10"]
    assert paired["diff"] == pytest.approx(
        everyone["models"]["rerank"]["ndcg@10"]["mean"] - direct["ndcg@10"]
    )
    assert latency["batched_ms_per_user"] > 0
    assert 0 < latency["single_p50_ms"] <= latency["single_p95_ms"]


def test_blend_weight_zero_is_the_first_stage(fitted):
    _, rec, known, _, test = fitted
    truth, exclude = test.to_csr(), known.to_csr()
    first = metrics_lib.evaluate(
        rec.first_stage.score, truth, exclude=exclude, ks=(10,)
    )
    blended = metrics_lib.evaluate(
        persona_eval.with_blend(rec, 0.0), truth, exclude=exclude, ks=(10,)
    )
    np.testing.assert_allclose(
        blended.per_user["ndcg@10"], first.per_user["ndcg@10"]
    )
    assert rec.blend_weight == fitted[0].persona.blend_weight  # restored


def test_blend_sweep_reports_and_restores_the_weight(fitted):
    _, rec, known, valid, _ = fitted
    sweep = persona_eval.blend_sweep(rec, valid, known, 0.3)
    assert set(sweep) == {"0.0", "0.25", "0.3", "0.5", "0.75", "1.0"}
    assert all(0.0 <= v <= 1.0 for v in sweep.values())
    assert rec.blend_weight == 0.3
    rec.blend_weight = fitted[0].persona.blend_weight


def test_evaluate_persona_action_writes_the_report(tmp_path):
    cfg = persona_config(tmp_path)
    report = persona_actions.evaluate_persona(cfg)
    folder = cfg.run_dir / "persona_eval"
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["first_stage"] == "most_popular"
    assert saved["split"]["test"] == 24  # one held-out item per user
    markdown = (folder / "metrics.md").read_text()
    assert "### all (24 users)" in markdown
    assert "rerank − first_stage" in markdown
    assert set(report["valid_blend_sweep"]) >= {"0.0", "1.0"}
