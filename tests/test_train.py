"""The template actions end to end on a tiny synthetic dataset, on the
current backend: outputs, recommendations, errors, and atomic run folders."""

import json
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import config
import data
import main
import train
from tests.conftest import tiny_config


def _read(path):
    return json.loads(path.read_text())


def test_validation_production_predictions(tiny_cfg):
    report = train.train_validation_model(tiny_cfg)
    run = tiny_cfg.run_dir
    folder = run / "validation"
    for name in ("metrics.json", "metrics.md", "config.json",
                 "encoders.json", "model/model.keras", "model/tables.npz"):
        assert (folder / name).exists(), name
    metrics = _read(folder / "metrics.json")
    assert set(metrics["models"]) == {"two_tower", "most_popular"}
    tt = metrics["models"]["two_tower"]
    for split_name in ("valid", "test"):
        for key in ("recall@10", "ndcg@20", "hr@10", "mrr@10"):
            assert 0.0 <= tt[split_name]["summary"][key] <= 1.0
    assert tt["best_epoch"] in (1, 2)
    assert "ci" in tt["test"] and "ndcg@20" in tt["test"]["ci"]
    assert report["split"]["train"] + report["split"]["valid"] + report[
        "split"
    ]["test"] == 24 * 12
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

    monkeypatch.setattr(train, "format_table", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train.train_validation_model(cfg)
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    leftovers = [p.name for p in cfg.run_dir.iterdir()
                 if p.name.startswith(".")]
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


def test_keras_recommender_save_load_and_warm_start(tiny_cfg, tmp_path):
    dataset = data.load(tiny_cfg.data)
    rec = train.make_recommender(tiny_cfg, dataset)
    rec.fit(dataset.interactions, None, epochs=1)
    users = np.arange(dataset.interactions.num_users)
    rec.save(tmp_path / "saved")
    loaded = train.load_recommender(tmp_path / "saved")
    np.testing.assert_allclose(
        loaded.score(users), rec.score(users), rtol=1e-5, atol=1e-5
    )
    history = loaded.fit(dataset.interactions, None, epochs=1,
                         warm_start=True)
    assert np.isfinite(history["loss"][0])


def test_recommend_masks_and_matches_argsort():
    class Fixed:
        def __init__(self, scores):
            self.scores = scores

        def score(self, user_idx, item_idx=None):
            return self.scores[user_idx]

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 12)).astype("float32")
    exclude = sp.csr_matrix((rng.random((7, 12)) < 0.3).astype("float32"))
    items, top = train.recommend(Fixed(scores), np.arange(7), exclude, k=4,
                                 budget_mb=1e-4, progress=False)
    masked = np.where(exclude.toarray() > 0, -np.inf, scores)
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(items, expected)
    np.testing.assert_allclose(top, np.take_along_axis(masked, expected, 1))


def test_unknown_model_name_lists_choices(tiny_cfg):
    cfg = config.override(tiny_cfg, ["model.name='deepfm'"])
    dataset = data.load(cfg.data)
    with pytest.raises(ValueError, match="two_tower"):
        train.make_recommender(cfg, dataset)


def test_cli_help_unknown_action_and_bad_override(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    out = capsys.readouterr().out
    for action in main.ACTIONS:
        assert action in out
    with pytest.raises(SystemExit):
        main.parse_args(["fly"])
    err = capsys.readouterr().err
    assert "fly" in err and "train_validation_model" in err
    with pytest.raises(SystemExit, match="train.epoch"):
        main.main(["smoke", "--set", "train.epoch=3"])
    with pytest.raises(SystemExit, match="train.epochs"):
        main.main(["smoke", "--set", "train.epochs='many'"])


def test_cli_reports_missing_file_without_traceback(tmp_path):
    with pytest.raises(SystemExit, match="Data file not found"):
        main.main(
            [
                "train_validation_model",
                "--set",
                f"data.path={str(tmp_path / 'nope.csv')!r}",
                "--set",
                f"output.runs_dir={str(tmp_path)!r}",
            ]
        )


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


def _with_item_features(cfg, tmp_path):
    """Item features for the synthetic data: the group each item belongs
    to (items 0-14 vs 15-29, raw id 100 + 3 * index) as a genre."""
    import pandas as pd

    ids = 100 + 3 * np.arange(30)
    genres = np.where(np.arange(30) < 15, "Comedy|Drama", "Horror")
    path = tmp_path / "items.csv"
    pd.DataFrame({"movieId": ids, "genres": genres}).to_csv(path, index=False)
    return config.override(
        cfg,
        [
            f"data.item_features.path={str(path)!r}",
            "data.item_features.id_col='movieId'",
            "data.item_features.multivalued=('genres',)",
            "data.item_features.text=()",
        ],
    )


def test_cold_items_content_beats_random(tiny_cfg, tmp_path):
    cfg = _with_item_features(tiny_cfg, tmp_path)
    cfg = config.override(cfg, ["eval.cold_item_fraction=0.3"])
    report = train.evaluate_cold_items(cfg)
    assert set(report["models"]) == {"two_tower", "random",
                                     "content_profile"}
    assert report["cold_items"] == 9
    ndcg = {n: r["summary"]["ndcg@10"] for n, r in report["models"].items()}
    # Genres separate the two user groups perfectly, so the content
    # profile must rank a user's cold items far above chance.
    assert ndcg["content_profile"] > ndcg["random"] + 0.1
    assert (cfg.run_dir / "cold_items" / "metrics.json").exists()


def test_ncf_features_mode_scores_cold_items(tiny_cfg, tmp_path):
    cfg = _with_item_features(tiny_cfg, tmp_path)
    cfg = config.override(
        cfg, ["model.name='ncf'", "model.item_input='features'",
              "train.epochs=1"]
    )
    report = train.evaluate_cold_items(cfg)
    summary = report["models"]["ncf"]["summary"]
    assert 0.0 <= summary["ndcg@10"] <= 1.0


def test_ncf_features_mode_needs_features(tiny_cfg):
    cfg = config.override(
        tiny_cfg, ["model.name='ncf'", "model.item_input='features'"]
    )
    with pytest.raises(ValueError, match="item_features.path"):
        train.make_recommender(cfg, data.load(cfg.data))


def test_ncf_through_template_actions(tiny_cfg):
    cfg = config.override(tiny_cfg, ["model.name='ncf'",
                                     "eval.baselines=()"])
    report = train.train_validation_model(cfg)
    assert report["models"]["ncf"]["best_epoch"] in (1, 2)
    scorer = report["models"]["ncf"]["scorer"]
    assert scorer["auc_ci"]["low"] <= scorer["auc"] <= scorer["auc_ci"]["high"]
    folder = cfg.run_dir / "validation" / "scorer"
    assert (folder / "roc.png").exists() and (folder / "calibration.png").exists()
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
        train.make_recommender(bad, data.load(bad.data))


def test_benchmark_action_runs_keras_and_baselines(tiny_cfg, monkeypatch):
    from eval import protocols

    dataset = data.load(tiny_cfg.data)
    train_, valid, test = data.split(dataset.interactions)
    split = protocols.Split(
        train=train_, valid=valid, test=test, name="P1",
        description="tiny", refit=True, dataset=dataset,
    )
    monkeypatch.setattr(protocols, "load_protocol", lambda name: split)
    cfg = config.override(
        tiny_cfg,
        ["eval.benchmark_models=('most_popular', 'two_tower')",
         "eval.num_bootstrap=20"],
    )
    report = train.benchmark(cfg)
    tt = report["models"]["two_tower"]
    # The refit reuses the epoch the validation fit selected.
    assert tt["refit_params"]["epochs"] in (1, 2)
    assert 0.0 <= tt["test"]["ndcg@20"] <= 1.0
    assert "segments" in tt
    out = cfg.run_dir / "benchmark-p1"
    assert (out / "benchmark.md").exists() and (out / "config.json").exists()


def test_cli_action_options_reach_only_their_action(monkeypatch, capsys):
    calls = []
    fake = type("M", (), {"run": staticmethod(
        lambda cfg, probe_user=None, probe_n=3: calls.append(
            (probe_user, probe_n)))})
    monkeypatch.setitem(sys.modules, "fake_action_module", fake)
    monkeypatch.setitem(
        main.ACTIONS,
        "fake",
        main.Action(
            "fake_action_module:run",
            "test action",
            (("--probe-user", {}),
             ("--probe-n", {"type": int, "default": 3})),
        ),
    )
    main.main(["fake", "--probe-user", "7", "--probe-n", "5", "-q"])
    main.main(["fake", "-q"])
    assert calls == [("7", 5), (None, 3)]
    with pytest.raises(SystemExit):
        main.parse_args(["smoke", "--probe-user", "7"])
    assert "--probe-user belongs to fake" in capsys.readouterr().err
