"""Tests for eval/benchmark.py on tiny synthetic data."""

import json

import numpy as np
import pytest

from data import Interactions
from eval import baselines
from eval import benchmark
from eval import metrics
from eval import protocols


class _Popularity:
    """Test model: `sign=1` ranks popular items first, `sign=-1` last.

    Records every fit and exposes `refit_params`, like the Keras models.
    """

    fits = []

    def __init__(self, sign=1.0, epochs=1):
        self.sign = sign
        self.epochs = epochs

    def fit(self, train, valid=None):
        _Popularity.fits.append(
            {"sign": self.sign, "epochs": self.epochs, "n": len(train)}
        )
        self._counts = train.item_counts().astype(np.float32)
        # Like a Keras history: arrays and numpy scalars must reach JSON.
        return {"epochs": np.int64(self.epochs), "loss": np.array([1.0, 0.5])}

    def score(self, user_idx, item_idx=None):
        scores = np.tile(self.sign * self._counts, (len(user_idx), 1))
        return scores if item_idx is None else scores[:, item_idx]

    def refit_params(self):
        return {"epochs": 7}


def _factory(params):
    return _Popularity(**params)


def _skewed_split(refit, num_users=30, num_items=60, seed=0):
    """Zipf-like item popularity; per user 8 train, 2 valid, 2 test."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_items + 1) ** 1.5
    p /= p.sum()
    parts = {"train": [], "valid": [], "test": []}
    for u in range(num_users):
        items = rng.choice(num_items, size=12, replace=False, p=p)
        rng.shuffle(items)
        for name, chunk in zip(parts, (items[:8], items[8:10], items[10:])):
            parts[name] += [(u, i) for i in chunk]
    built = {}
    for offset, (name, pairs) in enumerate(parts.items()):
        pairs = np.asarray(pairs)
        built[name] = Interactions(
            user=pairs[:, 0],
            item=pairs[:, 1],
            value=np.ones(len(pairs)),
            ts=np.arange(len(pairs)) + offset * 10_000,
            num_users=num_users,
            num_items=num_items,
        )
    return protocols.Split(
        name="tiny",
        description="tiny skewed",
        refit=refit,
        **built,
    )


def _candidates():
    return {
        "popularity": benchmark.Candidate(
            factory=_factory,
            grid=[{"sign": -1.0}, {"sign": 1.0}],
            label="Popularity",
        ),
        "most_popular": benchmark.Candidate.baseline("most_popular"),
        "itemknn": benchmark.Candidate.baseline(
            "itemknn", [{"k": 2}, {"k": 5}]
        ),
    }


@pytest.fixture
def refit_report(tmp_path):
    _Popularity.fits = []
    report = benchmark.run_benchmark(
        _skewed_split(refit=True),
        _candidates(),
        tmp_path,
        num_bootstrap=50,
        reference="most_popular",
        progress=False,
    )
    return report, tmp_path


def test_picks_the_better_grid_point_and_refits(refit_report):
    report, _ = refit_report
    popularity = report["models"]["popularity"]
    assert popularity["chosen_params"] == {"sign": 1.0}
    valid = [row["valid"]["recall@20"] for row in popularity["grid"]]
    assert valid[1] > valid[0]
    assert popularity["refit_params"] == {"epochs": 7}
    assert popularity["grid"][0]["fit_info"] == {"epochs": 1, "loss": [1, 0.5]}
    # Two grid fits on train (8 per user), one refit on train+valid.
    assert _Popularity.fits == [
        {"sign": -1.0, "epochs": 1, "n": 240},
        {"sign": 1.0, "epochs": 1, "n": 240},
        {"sign": 1.0, "epochs": 7, "n": 300},
    ]
    # Refit popularity ranks like MostPopular refit on the same data.
    np.testing.assert_allclose(
        popularity["test"]["ndcg@20"],
        report["models"]["most_popular"]["test"]["ndcg@20"],
    )


def test_writes_reports(refit_report):
    report, out = refit_report
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "benchmark.json",
        "benchmark.md",
        "benchmark.png",
        "per_user.npz",
    ]
    assert json.loads((out / "benchmark.json").read_text()) == report
    markdown = (out / "benchmark.md").read_text()
    assert (
        "| method | R@10 | N@10 | R@20 | N@20 | HR@10 | MRR@10 | chosen "
        "| fit s | eval s |"
    ) in markdown
    assert "| Popularity | " in markdown and "sign=1" in markdown
    assert "popularity vs most_popular on ndcg@20" in markdown
    assert "## Validation grids" in markdown
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "per_user.npz") as arrays:
        assert len(arrays["users"]) == report["num_test_users"] == 30
        assert arrays["itemknn__ndcg@20"].shape == (30,)


def test_statistics(refit_report):
    report, _ = refit_report
    model = report["models"]["itemknn"]
    ci = model["ci"]["ndcg@20"]
    assert ci["low"] <= ci["mean"] <= ci["high"]
    assert ci["mean"] == pytest.approx(model["test"]["ndcg@20"])
    tests = model["vs_reference"]
    assert set(tests) == {"ndcg@20", "recall@20"}
    assert 0 < tests["ndcg@20"]["p_value"] <= 1
    assert "vs_reference" not in report["models"]["most_popular"]
    assert model["fit_seconds"] >= 0 and model["eval_seconds"] >= 0


def test_no_refit_reuses_the_tuned_model(tmp_path):
    _Popularity.fits = []
    report = benchmark.run_benchmark(
        _skewed_split(refit=False),
        {"popularity": _candidates()["popularity"]},
        tmp_path,
        num_bootstrap=20,
        progress=False,
    )
    assert len(_Popularity.fits) == 2
    model = report["models"]["popularity"]
    assert model["refit_params"] == {}
    assert model["fit_seconds"] == model["grid"][1]["fit_seconds"]
    assert report["reference"] is None


def test_rejects_bad_arguments(tmp_path):
    split = _skewed_split(refit=True)
    with pytest.raises(ValueError, match="`select_metric`"):
        benchmark.run_benchmark(
            split, _candidates(), tmp_path, select_metric="recall@50"
        )
    with pytest.raises(ValueError, match="`candidates"):
        benchmark.run_benchmark(
            split, {"x": benchmark.Candidate(_factory, grid=[])}, tmp_path
        )
    with pytest.raises(ValueError, match="Received: 'nope'"):
        benchmark.Candidate.baseline("nope")


@pytest.mark.parametrize(
    "protocol,chosen",
    [
        ("p1", {"itemknn": {"k": 50}, "ease": {"l2": 250.0}}),
        ("P2", {"itemknn": {"k": 100}, "ease": {"l2": 1000.0}}),
    ],
)
def test_default_grids_hold_the_reference_choices(protocol, chosen):
    grids = benchmark.default_baseline_grids(protocol)
    assert list(grids) == [
        "random",
        "most_popular",
        "itemknn",
        "als",
        "bpr",
        "ease",
    ]
    for name, params in chosen.items():
        assert params in grids[name].grid
    model = grids["ease"].factory(grids["ease"].grid[0])
    assert model.get_config() == {"l2": 250.0, "dtype": "float32"}
    with pytest.raises(ValueError, match="`protocol`"):
        benchmark.default_baseline_grids("p9")


def test_segments_match_direct_evaluation(refit_report):
    report, out = refit_report
    split = _skewed_split(refit=True)
    history = protocols.history_for_test(split)
    segs = report["models"]["most_popular"]["segments"]
    assert set(segs) == {"cold users", "warm users", "head items", "tail items"}
    cold = metrics.user_segments(history.user_counts())["cold"]
    assert (
        segs["cold users"]["num_users"] + segs["warm users"]["num_users"]
        == report["num_test_users"]
    )
    assert segs["cold users"]["num_users"] == int(
        cold[np.unique(split.test.user)].sum()
    )
    # Tail-item ndcg recomputed directly with an item mask.
    model = baselines.make_baseline("most_popular")
    model.fit(history)
    direct = metrics.evaluate(
        model.score,
        split.test.to_csr(),
        exclude=protocols.exclude_for_test(split),
        item_mask=metrics.item_segments(history.item_counts())["tail"],
    )
    assert segs["tail items"]["ndcg@20"]["mean"] == pytest.approx(
        direct.summary()["ndcg@20"], abs=1e-4
    )
    assert "## Segments" in (out / "benchmark.md").read_text()
