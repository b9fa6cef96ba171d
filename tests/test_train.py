"""The template actions end to end on a tiny synthetic dataset, on the
current backend: outputs, recommendations, errors, and atomic run folders."""

import json

import pytest

import config
import data
import recommenders
import train
from tests.conftest import tiny_config


def _read(path):
    return json.loads(path.read_text())


def test_validation_production_predictions(tiny_cfg):
    report = train.train_validation_model(tiny_cfg)
    run = tiny_cfg.run_dir
    folder = run / "validation"
    for name in (
        "metrics.json",
        "metrics.md",
        "config.json",
        "encoders.json",
        "model/model.keras",
        "model/tables.npz",
    ):
        assert (folder / name).exists(), name
    metrics = _read(folder / "metrics.json")
    assert set(metrics["models"]) == {"two_tower", "most_popular"}
    tt = metrics["models"]["two_tower"]
    for split_name in ("valid", "test"):
        for key in ("recall@10", "ndcg@20", "hr@10", "mrr@10"):
            assert 0.0 <= tt[split_name]["summary"][key] <= 1.0
    assert tt["best_epoch"] in (1, 2)
    assert "ci" in tt["test"] and "ndcg@20" in tt["test"]["ci"]
    assert (
        report["split"]["train"]
        + report["split"]["valid"]
        + report["split"]["test"]
        == 24 * 12
    )
    saved_cfg = _read(folder / "config.json")
    assert saved_cfg["train"]["epochs"] == 2

    train.train_production_model(tiny_cfg)
    prod = _read(run / "production" / "metrics.json")
    assert prod["epochs"] == tt["best_epoch"]
    assert prod["interactions"] == 24 * 12

    payload = train.compute_predictions(tiny_cfg)
    recs = _read(run / "recommendations.json")["recommendations"]
    assert payload["k"] == tiny_cfg.output.top_k
    frame = data.load(tiny_cfg.data).filtered_frame()
    seen = frame.groupby("user")["item"].apply(set)
    assert len(recs) == 24
    for user, items in recs.items():
        ids = [entry["item"] for entry in items]
        assert len(ids) == tiny_cfg.output.top_k
        assert not set(ids) & seen[int(user)]  # never recommends seen items
        scores = [entry["score"] for entry in items]
        assert scores == sorted(scores, reverse=True)


def test_production_needs_validation_run(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="train_validation_model"):
        train.train_production_model(tiny_cfg)


def test_predictions_need_production_run(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="train_production_model"):
        train.compute_predictions(tiny_cfg)


def test_failed_run_leaves_earlier_outputs_untouched(tiny_cfg, monkeypatch):
    cfg = config.override(tiny_cfg, ["model.name='most_popular'"])
    train.train_validation_model(cfg)
    folder = cfg.run_dir / "validation"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(train.reports, "format_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train.train_validation_model(cfg)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    leftovers = [
        p.name for p in cfg.run_dir.iterdir() if p.name.startswith(".")
    ]
    assert leftovers == []


def test_bad_data_fails_clearly_and_keeps_outputs(tiny_cfg, tmp_path):
    cfg = config.override(tiny_cfg, ["model.name='most_popular'"])
    train.train_validation_model(cfg)
    metrics = (cfg.run_dir / "validation" / "metrics.json").read_bytes()
    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,5\n1,3,oops,6\n")
    bad_cfg = config.override(cfg, [f"data.path={str(bad)!r}"])
    with pytest.raises(ValueError, match=r"rating.*row 2 \(line 3\).*oops"):
        train.train_validation_model(bad_cfg)
    assert (cfg.run_dir / "validation" / "metrics.json").read_bytes() == metrics


def test_tiny_config_helper_is_tiny(tmp_path):
    cfg = tiny_config(tmp_path)
    assert cfg.train.epochs == 2 and cfg.data.item_features.path is None


def test_exploratory_data_analysis_writes_figures(tiny_cfg):
    summary = train.exploratory_data_analysis(tiny_cfg)
    folder = tiny_cfg.run_dir / "eda"
    assert (folder / "eda_summary.json").exists()
    assert summary["raw"]["num_interactions"] == 24 * 12
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert "long_tail.png" in pngs and "interactions_per_user.png" in pngs
    for name in pngs:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ncf_through_template_actions(tiny_cfg):
    cfg = config.override(tiny_cfg, ["model.name='ncf'", "eval.baselines=()"])
    report = train.train_validation_model(cfg)
    assert report["models"]["ncf"]["best_epoch"] in (1, 2)
    scorer = report["models"]["ncf"]["scorer"]
    assert scorer["auc_ci"]["low"] <= scorer["auc"] <= scorer["auc_ci"]["high"]
    folder = cfg.run_dir / "validation" / "scorer"
    assert (folder / "roc.png").exists() and (
        folder / "calibration.png"
    ).exists()
    train.train_production_model(cfg)
    recs = train.compute_predictions(cfg)["recommendations"]
    assert len(recs) == 24 and all(len(v) == 10 for v in recs.values())


def test_baseline_params_go_to_the_main_model_only(tiny_cfg):
    cfg = config.override(
        tiny_cfg,
        ["model.name='ease'", "model.baseline_params={'l2': 50.0}"],
    )
    report = train.train_validation_model(cfg)
    assert set(report["models"]) == {"ease", "most_popular"}
    bad = config.override(cfg, ["model.baseline_params={'lambda_': 1.0}"])
    with pytest.raises(ValueError, match="takes the parameters.*l2"):
        recommenders.build(bad, data.load(bad.data))
