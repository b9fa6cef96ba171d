"""The template actions end to end on a tiny synthetic dataset, on the
current backend: outputs, recommendations, errors, and atomic run folders."""

import json

import pytest

import config
import data
import recommenders
import train
from runtime import runs
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


# ---------------------------------------------------------------------------
# New data, first try: check_data, run folders, damaged artefacts
# ---------------------------------------------------------------------------


def test_check_data_on_the_shipped_data(tmp_path):
    cfg = config.override(
        config.default(), [f"output.runs_dir={str(tmp_path)!r}"]
    )
    report = train.check_data(cfg)
    assert report["steps"]["read"] == 100_836
    assert report["users"] == 610 and report["items"] == 9_724
    assert report["split"] == {
        "method": "chrono",
        "train": 70_061,
        "valid": 10_358,
        "test": 20_417,
        "test_users": 610,
    }
    assert report["time"]["first_date"] == "1996-03-29"
    assert report["item_features"]["share"] == 1.0
    assert report["memory_gib"]["ease"] > report["memory_gib"]["two_tower"]
    assert report["warnings"] == []
    saved = json.loads((cfg.run_dir / "check_data.json").read_text())
    assert saved["interactions"] == 100_836


def test_check_data_on_a_headerless_tab_file(tmp_path):
    path = tmp_path / "u.data"
    rows = [
        f"{u}\t{i}\t{1 + (u + i) % 5}\t{880000000 + 7 * u + i}"
        for u in range(1, 31)
        for i in range(1, 13)
    ]
    path.write_text("\n".join(rows) + "\n")
    sets = [
        f"data.path={str(path)!r}",
        "data.header=False",
        "data.column_names=('user', 'item', 'rating', 'ts')",
        "data.user_col=user",
        "data.item_col=item",
        "data.timestamp_col=ts",
        f"output.runs_dir={str(tmp_path)!r}",
    ]
    with pytest.raises(ValueError, match=r"looks tab-separated.*data.sep"):
        train.check_data(config.override(config.default(), sets))
    report = train.check_data(
        config.override(config.default(), sets + ["data.sep='\\t'"])
    )
    assert report["separator"] == "\t"
    assert report["users"] == 30 and report["items"] == 12
    assert report["item_features"] == {
        "path": str(config.DataConfig().item_features.path),
        "used": False,
    }
    assert any("not used" in w for w in report["warnings"])


def test_check_data_on_a_count_file_without_timestamps(tmp_path):
    path = tmp_path / "plays.tsv"
    rows = ["userID\tartistID\tweight"] + [
        f"{u}\t{a}\t{(u * a) % 900 + 1}" for u in range(40) for a in range(9)
    ]
    path.write_text("\n".join(rows) + "\n")
    base = [
        f"data.path={str(path)!r}",
        "data.user_col=userID",
        "data.item_col=artistID",
        "data.rating_col=weight",
        "data.timestamp_col=None",
        "data.split=random",
        f"output.runs_dir={str(tmp_path)!r}",
    ]
    report = train.check_data(config.override(config.default(), base))
    assert report["time"]["column"] is None
    assert any("no timestamps" in w for w in report["warnings"])
    assert any("data.weight_col" in w for w in report["warnings"])
    as_counts = config.override(
        config.default(),
        base + ["data.rating_col=None", "data.weight_col=weight"],
    )
    report = train.check_data(as_counts)
    assert report["weights"]["transform"] == "log1p"
    assert not any("data.weight_col" in w for w in report["warnings"])


def test_model_runs_get_their_own_folder(tiny_cfg):
    """A baseline's validation run no longer replaces the model's."""
    auto = config.override(tiny_cfg, ["output.run_name='auto'"])
    assert auto.run_dir.name == "two_tower"
    train.train_validation_model(auto)
    baseline = config.override(auto, ["model.name='most_popular'"])
    assert baseline.run_dir.name == "most_popular"
    train.train_validation_model(baseline)
    train.train_production_model(auto)  # finds its own selected epoch
    kept = json.loads(
        (auto.run_dir / "validation" / "metrics.json").read_text()
    )
    assert kept["model"] == "two_tower"


def test_production_of_another_model_than_validated_is_explained(tiny_cfg):
    shared = config.override(tiny_cfg, ["output.run_name='shared'"])
    ease = config.override(shared, ["model.name='ease'"])
    train.train_validation_model(ease)  # a run name given: one folder
    with pytest.raises(
        ValueError,
        match=(
            r"holds a validation run of 'ease', not 'two_tower'.*"
            r"train_validation_model --set model.name=two_tower"
        ),
    ):
        train.train_production_model(shared)


def test_damaged_artefacts_name_the_file_and_the_fix(tiny_cfg):
    train.train_validation_model(tiny_cfg)
    train.train_production_model(tiny_cfg)
    model_dir = tiny_cfg.run_dir / "production" / "model"
    tables = model_dir / "tables.npz"
    good = tables.read_bytes()
    tables.write_bytes(good[: len(good) // 2])
    with pytest.raises(
        runs.ArtifactError,
        match=(
            r"tables.npz is damaged or unreadable.*"
            r"Rebuild it with `python main.py train_production_model`"
        ),
    ):
        train.compute_predictions(tiny_cfg)
    tables.write_bytes(good)
    model_file = model_dir / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:100])
    with pytest.raises(runs.ArtifactError, match="model.keras is damaged"):
        train.compute_predictions(tiny_cfg)
    encoders = tiny_cfg.run_dir / "production" / "encoders.json"
    encoders.write_text('{"user_ids": [1, 2')
    with pytest.raises(
        runs.ArtifactError,
        match=(r"encoders.json is damaged.*train_production_model"),
    ):
        train.compute_predictions(tiny_cfg)
    metrics = tiny_cfg.run_dir / "validation" / "metrics.json"
    metrics.write_text("{")
    with pytest.raises(
        runs.ArtifactError,
        match=(r"metrics.json is damaged.*train_validation_model"),
    ):
        train.train_production_model(tiny_cfg)


def test_a_single_user_file_warns_that_metrics_mean_nothing(tmp_path):
    path = tmp_path / "one.csv"
    rows = [f"1,{i},4,{100 + i}" for i in range(20)]
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows))
    cfg = tiny_config(
        tmp_path, f"data.path={str(path)!r}", "model.name='most_popular'"
    )
    report = train.train_validation_model(cfg)
    assert report["warnings"] and "only 1 user" in report["warnings"][0]


def test_saved_validation_model_is_the_tested_one(tiny_cfg):
    """`validation/model` reproduces the reported test metrics; the model
    fit on train alone is `validation/model_train_only`."""
    report = train.train_validation_model(tiny_cfg)
    dataset = data.load(tiny_cfg.data)
    tr, va, te = data.split(
        dataset.interactions,
        tiny_cfg.data.split,
        tiny_cfg.data.valid_fraction,
        tiny_cfg.data.test_fraction,
        seed=tiny_cfg.seed,
    )
    folder = tiny_cfg.run_dir / "validation"
    tested = recommenders.load(folder / "model")
    again = train.evaluate_split(tested, te, tr.concat(va), tiny_cfg)
    reported = report["models"]["two_tower"]["test"]["summary"]
    for metric in ("ndcg@20", "recall@10"):
        assert again.summary()[metric] == pytest.approx(
            reported[metric], abs=1e-6
        )
    selected = recommenders.load(folder / "model_train_only")
    valid = train.evaluate_split(selected, va, tr, tiny_cfg).summary()
    assert valid["recall@20"] == pytest.approx(
        report["models"]["two_tower"]["valid"]["summary"]["recall@20"],
        abs=1e-6,
    )
