"""Tests for tracking.py: MLflow runs of a train action in a temporary
local file store (params, per-epoch and final metrics, artifacts), failed
runs, and that tracking off touches nothing."""

import json

import pytest

import train
from runtime import tracking
from tests.conftest import tiny_config


def _client(store):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=store.as_uri())


def _runs(store, experiment):
    client = _client(store)
    exp = client.get_experiment_by_name(experiment)
    return {
        run.info.run_name: run
        for run in client.search_runs([exp.experiment_id])
    }


def _artifacts(client, run_id, path=None):
    out = set()
    for entry in client.list_artifacts(run_id, path):
        out.add(entry.path)
        if entry.is_dir:
            out |= _artifacts(client, run_id, entry.path)
    return out


def test_train_actions_log_params_metrics_and_artifacts(tmp_path):
    store = tmp_path / "mlruns"
    cfg = tiny_config(
        tmp_path,
        "track.mlflow=True",
        f"track.tracking_uri={store.as_uri()!r}",
        "track.experiment='tiny'",
        "train.early_stopping_patience=5",
    )
    report = train.train_validation_model(cfg)
    runs = _runs(store, "tiny")
    assert set(runs) == {"two_tower/validation"}
    client = _client(store)

    run = runs["two_tower/validation"]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.epochs"] == "2"
    assert params["model.name"] == "two_tower"
    assert params["model.hidden_dims"] == "(16,)"
    assert params["track.mlflow"] == "True"
    assert run.data.tags["keras_backend"] == train.keras.backend.backend()
    # Per-epoch metrics of the selection fit, as Keras logged them.
    main = report["models"]["two_tower"]
    curve = client.get_metric_history(
        run.info.run_id, "two_tower/select/val_recall_at_20"
    )
    assert [m.step for m in curve] == [1, 2]
    assert [m.value for m in curve] == pytest.approx(
        main["history"]["val_recall@20"]
    )
    loss = client.get_metric_history(run.info.run_id, "two_tower/fit/loss")
    assert len(loss) == main["best_epoch"]  # the refit on train+valid
    # Final metrics of the model and the baseline.
    metrics = run.data.metrics
    assert metrics["test/ndcg_at_20"] == pytest.approx(
        main["test"]["summary"]["ndcg@20"]
    )
    assert metrics["valid/recall_at_20"] == pytest.approx(
        main["valid"]["summary"]["recall@20"]
    )
    assert "baselines/most_popular/test/ndcg_at_20" in metrics
    assert metrics["best_epoch"] == main["best_epoch"]
    artifacts = _artifacts(client, run.info.run_id)
    assert {
        "model/model.keras",
        "model/recommender.json",
        "reports/metrics.json",
        "reports/metrics.md",
        "reports/config.json",
    } <= artifacts


def test_figures_are_logged_and_failed_runs_marked(tmp_path):
    store = tmp_path / "mlruns"
    cfg = tiny_config(
        tmp_path,
        "track.mlflow=True",
        f"track.tracking_uri={store.as_uri()!r}",
        "track.experiment='figs'",
        "output.run_name='fig'",
    )

    @tracking.tracked("plots")
    def plots(cfg):
        folder = cfg.run_dir / "plots" / "scorer"
        folder.mkdir(parents=True)
        (folder / "roc.png").write_bytes(b"\x89PNG fake")
        (cfg.run_dir / "plots" / "metrics.json").write_text(
            json.dumps({"auc": 0.75, "label": "text is skipped"})
        )

    @tracking.tracked("broken")
    def broken(cfg):
        assert tracking.epoch_callbacks("x/fit")  # a run is active
        raise ValueError("bad data")

    plots(cfg)
    with pytest.raises(ValueError, match="bad data"):
        broken(cfg)
    runs = _runs(store, "figs")
    ok = runs["fig/plots"]
    assert ok.data.metrics == {"auc": 0.75}
    assert "figures/scorer/roc.png" in _artifacts(
        _client(store), ok.info.run_id
    )
    assert runs["fig/broken"].info.status == "FAILED"
    assert tracking.epoch_callbacks("x/fit") == []  # none active after


def test_tracking_off_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path)
    assert cfg.track.mlflow is False
    with tracking.run(cfg, "validation") as tracker:
        assert tracker is None
        assert tracking.epoch_callbacks("two_tower/fit") == []
    assert not (tmp_path / "mlruns").exists()


def test_metric_names_are_mlflow_safe():
    assert tracking.metric_name("val_recall@20") == "val_recall_at_20"
    assert tracking.metric_name("a/b c:d-e.f") == "a/b c:d-e.f"
    assert tracking.metric_name("x(1)") == "x_1_"
