"""benchmarks/headline.py: mean +- sd over seeds, paired tests against
the reference, and its models file names only registered models."""

import json

import numpy as np
import pytest

import recommenders
from benchmarks import headline


def _run(tmp_path, name, seed, values):
    path = tmp_path / f"{name}{seed}.npz"
    np.savez(
        path,
        users=np.arange(len(values)),
        **{f"{name}__{m}": np.asarray(values) for m in headline.TESTED},
    )
    test = {m: float(np.mean(values)) for m in headline.METRICS}
    return {
        "test": test,
        "valid": {"recall@20": 0.1},
        "fit_seconds": 10.0 + seed,
        "select_fit_seconds": 20.0 + seed,
        "peak_rss_mib": 100.0 * (seed + 1),
        "per_user": str(path),
    }


def test_summary_mean_sd_and_paired_test(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(300) * 0.2
    runs = {
        "ease": [_run(tmp_path, "ease", 0, base)],
        "model": [
            _run(tmp_path, "model", s, base + 0.05 + 0.01 * s) for s in range(3)
        ],
    }
    rows = headline.summarise(runs, "ease", num_samples=500)
    model = rows["model"]
    assert model["seeds"] == 3 and rows["ease"]["sd"]["ndcg@20"] == 0.0
    assert model["mean"]["ndcg@20"] == pytest.approx(base.mean() + 0.06)
    assert model["sd"]["ndcg@20"] == pytest.approx(0.01)
    assert model["fit_seconds"] == pytest.approx(11.0)
    assert model["select_fit_seconds"] == pytest.approx(21.0)
    assert model["peak_rss_mib"] == 300.0
    test = model["vs_reference"]["ndcg@20"]
    assert test["diff"] == pytest.approx(0.06) and test["p_value"] < 0.01
    table = headline.markdown("p1", rows, "ease", [0, 1, 2])
    assert "| model | " in table and "+0.0600" in table
    assert "| 21 + 11 |" in table
    for run in runs["model"]:
        run["refit"] = False  # P2: the selected fit is the reported one
    rows = headline.summarise(runs, "ease", num_samples=100)
    assert "| 21 + no refit |" in headline.markdown("p2", rows, "ease", [0])


def test_models_file_names_registered_models():
    table = json.loads(headline.MODELS_FILE.read_text())
    for protocol in ("p1", "p2", "p3"):
        for name, entry in headline.load_models(protocol).items():
            names = [
                o.split("=", 1)[1].strip("'\"")
                for o in entry["overrides"]
                if o.startswith("model.name=")
            ]
            assert len(names) == 1, name
            recommenders.get(names[0])
    assert set(table) >= {"p1", "p2", "p3"}
    with pytest.raises(SystemExit, match="no models"):
        headline.load_models("p9")
