"""The evaluation actions end to end on tiny data: the benchmark wires Keras
models and baselines, and both cold-start actions rank never-trained items
with models that read item content well above chance."""

import config
import data
from eval import actions as eval_actions
from eval import protocols
from tests.conftest import with_item_features


def test_benchmark_action_runs_keras_and_baselines(tiny_cfg, monkeypatch):
    dataset = data.load(tiny_cfg.data)
    train_, valid, test = data.split(dataset.interactions)
    split = protocols.Split(
        train=train_,
        valid=valid,
        test=test,
        name="P1",
        description="tiny",
        refit=True,
        dataset=dataset,
    )
    monkeypatch.setattr(protocols, "load_protocol", lambda name: split)
    cfg = config.override(
        tiny_cfg,
        [
            "eval.benchmark_models=('most_popular', 'two_tower')",
            "eval.num_bootstrap=20",
        ],
    )
    report = eval_actions.benchmark(cfg)
    tt = report["models"]["two_tower"]
    # The refit reuses the epoch the validation fit selected.
    assert tt["refit_params"]["epochs"] in (1, 2)
    assert 0.0 <= tt["test"]["ndcg@20"] <= 1.0
    assert "segments" in tt
    out = cfg.run_dir / "benchmark-p1"
    assert (out / "benchmark.md").exists() and (out / "config.json").exists()


def _cold_report(cfg, *sets):
    cfg = config.override(cfg, ["eval.cold_item_fraction=0.3", *sets])
    return eval_actions.evaluate_cold_items(cfg), cfg


def test_cold_items_two_tower_with_features_beats_random(tiny_cfg, tmp_path):
    report, cfg = _cold_report(
        with_item_features(tiny_cfg, tmp_path), "train.epochs=8"
    )
    assert set(report["models"]) == {"two_tower", "random", "content_profile"}
    assert report["cold_items"] == 9
    ndcg = {n: r["summary"]["ndcg@10"] for n, r in report["models"].items()}
    # Genres separate the two user groups perfectly: the content profile
    # and the two-tower model, whose item tower reads the genres, rank a
    # user's cold items far above chance.
    assert ndcg["content_profile"] > ndcg["random"] + 0.1
    assert ndcg["two_tower"] > ndcg["random"] + 0.1
    tests = report["models"]["random"]["paired_test_vs_model"]
    assert tests["ndcg@10"]["diff"] > 0
    assert (cfg.run_dir / "cold_items" / "metrics.json").exists()


def test_cold_items_ncf_features_mode_beats_random(tiny_cfg, tmp_path):
    report, _ = _cold_report(
        with_item_features(tiny_cfg, tmp_path),
        "model.name='ncf'",
        "model.item_input='features'",
        "train.epochs=30",
        "train.early_stopping_patience=30",
        "train.monitor='ndcg@10'",
        "train.learning_rate=0.01",
    )
    ndcg = {n: r["summary"]["ndcg@10"] for n, r in report["models"].items()}
    # Chance is already high with 9 cold items (about .69).
    assert ndcg["ncf"] > ndcg["random"] + 0.1
