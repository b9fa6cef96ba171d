"""Tests for `eda.py`: hand-computed summaries, written files, atomicity."""

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import eda

PNG_HEADER = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = [
    "interactions_per_user.png",
    "interactions_per_item.png",
    "long_tail.png",
    "rating_distribution.png",
    "interactions_over_time.png",
    "summary.png",
]
DAY = 86400


@pytest.fixture
def tiny():
    """7 rows, 3 users, 3 items; (u1, x) appears twice.

    Per user: u1=4, u2=2, u3=1. Per item: x=4, y=2, z=1.
    """
    return pd.DataFrame(
        {
            "user": ["u1", "u1", "u1", "u2", "u2", "u3", "u1"],
            "item": ["x", "y", "z", "x", "y", "x", "x"],
            "rating": [4.0, 4.0, 3.5, 5.0, 1.0, 4.0, 2.0],
            "timestamp": np.array(
                [0, DAY, 2 * DAY, 3 * DAY, 4 * DAY, 5 * DAY, 31 * DAY],
                dtype=np.int64,
            ),
        }
    )


@pytest.fixture(scope="module")
def frames():
    """A raw frame with a skewed catalog and its `item >= 3 hits` subset."""
    rng = np.random.default_rng(0)
    n = 400
    raw = pd.DataFrame(
        {
            "user": rng.integers(0, 20, n),
            "item": np.minimum(rng.zipf(1.5, n), 30),
            "rating": rng.integers(1, 11, n) / 2.0,
            "timestamp": rng.integers(1_500_000_000, 1_560_000_000, n),
        }
    )
    item_hits = raw["item"].map(raw["item"].value_counts())
    return raw, raw[item_hits >= 3]


@pytest.fixture(scope="module")
def full_run(frames, tmp_path_factory):
    """One `run_eda` on frames with every column; rendering is the slow part,
    so the tests below share it."""
    out_dir = tmp_path_factory.mktemp("eda") / "out"
    return out_dir, eda.run_eda(*frames, out_dir)


def test_summarize_tiny_frame(tiny):
    s = eda.summarize(tiny)
    assert s["num_interactions"] == 7
    assert s["num_users"] == 3
    assert s["num_items"] == 3
    assert s["num_unique_pairs"] == 6
    assert s["density"] == pytest.approx(6 / 9)
    assert s["sparsity"] == pytest.approx(3 / 9)
    assert s["num_duplicate_rows"] == 1
    assert s["num_duplicate_pairs"] == 1
    per_user = s["interactions_per_user"]
    assert per_user["min"] == 1
    assert per_user["median"] == 2.0
    assert per_user["mean"] == pytest.approx(7 / 3)
    assert per_user["max"] == 4
    assert per_user["p50"] == 2.0
    # np.quantile's linear rule on [1, 2, 4]: 1 + 0.2 * (2 - 1).
    assert per_user["p10"] == pytest.approx(1.2)
    assert s["interactions_per_item"]["max"] == 4
    # Item counts [1, 2, 4]: mean |xi - xj| over ordered pairs is 12 / 9,
    # Gini = that / (2 * mean) = (12 / 9) / (14 / 3) = 2 / 7.
    assert s["item_gini"] == pytest.approx(2 / 7)
    # With 3 items every top-k% is the single most popular item (x: 4/7).
    for share in s["top_item_share"].values():
        assert share == pytest.approx(4 / 7)
    rating = s["rating"]
    assert rating["value_counts"] == {
        "1.0": 1,
        "2.0": 1,
        "3.5": 1,
        "4.0": 3,
        "5.0": 1,
    }
    assert rating["mean"] == pytest.approx(23.5 / 7)
    assert (rating["min"], rating["max"], rating["median"]) == (1.0, 5.0, 4.0)
    assert s["time"] == {
        "first_date": "1970-01-01",
        "last_date": "1970-02-01",
        "span_days": 31.0,
        "num_missing": 0,
    }


def test_gini_and_top_share_on_known_distribution():
    # Item i (1..10) gets i interactions, each from a distinct user.
    items = np.repeat(np.arange(1, 11), np.arange(1, 11))
    df = pd.DataFrame({"user": np.arange(len(items)), "item": items})
    s = eda.summarize(df)
    # Sorted-rank form: 2 * sum(i * i) / (10 * 55) - 11 / 10 = 0.3.
    assert s["item_gini"] == pytest.approx(0.3)
    assert s["top_item_share"] == pytest.approx(
        {"top_1pct": 10 / 55, "top_10pct": 10 / 55, "top_20pct": 19 / 55}
    )
    uniform = pd.DataFrame({"user": np.arange(8), "item": np.arange(8) % 4})
    assert eda.summarize(uniform)["item_gini"] == pytest.approx(0.0)


def test_summarize_without_optional_columns(tiny):
    s = eda.summarize(tiny[["user", "item"]])
    assert s["rating"] is None
    assert s["time"] is None
    assert s["num_interactions"] == 7


def test_summarize_continuous_ratings_have_no_value_counts():
    rng = np.random.default_rng(1)
    n = eda.MAX_RATING_LEVELS + 50
    df = pd.DataFrame(
        {
            "user": np.arange(n) % 7,
            "item": np.arange(n),
            "rating": rng.random(n),
        }
    )
    rating = eda.summarize(df)["rating"]
    assert rating["value_counts"] is None
    assert 0.0 <= rating["min"] <= rating["max"] <= 1.0


@pytest.mark.parametrize("missing", ["user", "item"])
def test_missing_id_column_raises(tiny, missing, tmp_path):
    df = tiny.drop(columns=[missing])
    present = str(list(df.columns)).replace("[", r"\[").replace("]", r"\]")
    match = f"`{missing}`.*Present columns: {present}"
    with pytest.raises(ValueError, match=match):
        eda.summarize(df)
    with pytest.raises(ValueError, match=f"`filtered` has no `{missing}`"):
        eda.run_eda(tiny, df, tmp_path)


def test_millisecond_timestamps_raise(tiny):
    df = tiny.assign(timestamp=tiny["timestamp"] * 1000 + 1_600_000_000_000)
    with pytest.raises(ValueError, match="`timestamp`.*milliseconds"):
        eda.summarize(df)


def test_run_eda_writes_figures_and_json(frames, full_run):
    raw, filtered = frames
    out_dir, result = full_run
    assert result["figures"] == ALL_FIGURES
    for name in ALL_FIGURES:
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_HEADER)
        assert len(data) > 1000
    loaded = json.loads((out_dir / eda.SUMMARY_NAME).read_text())
    assert loaded == result
    assert loaded["raw"] == eda.summarize(raw)
    assert loaded["filtered"]["num_interactions"] == len(filtered)
    assert loaded["labels"] == ["raw", "filtered"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ALL_FIGURES + [eda.SUMMARY_NAME]
    )


def test_run_eda_without_rating_and_timestamp(frames, tmp_path, caplog):
    raw, filtered = (f[["user", "item"]] for f in frames)
    with caplog.at_level(logging.INFO, logger="eda"):
        result = eda.run_eda(raw, filtered, tmp_path, ("all", "kept"))
    expected = [
        name
        for name in ALL_FIGURES
        if name not in ("rating_distribution.png", "interactions_over_time.png")
    ]
    assert result["figures"] == expected
    assert not (tmp_path / "rating_distribution.png").exists()
    assert not (tmp_path / "interactions_over_time.png").exists()
    for name in expected:
        assert (tmp_path / name).read_bytes().startswith(PNG_HEADER)
    assert "skipping rating_distribution.png" in caplog.text
    assert "skipping interactions_over_time.png" in caplog.text
    assert result["labels"] == ["all", "kept"]


def test_run_eda_with_one_side_rated(frames, tmp_path):
    raw, filtered = frames
    result = eda.run_eda(raw.drop(columns=["rating"]), filtered, tmp_path)
    assert "rating_distribution.png" in result["figures"]
    assert result["raw"]["rating"] is None


def test_failed_save_keeps_earlier_files(
    frames, full_run, tmp_path, monkeypatch
):
    out_dir = tmp_path / "out"
    shutil.copytree(full_run[0], out_dir)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    def broken_savefig(self, fname, **kwargs):
        fname.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    raw, filtered = frames
    with pytest.raises(OSError, match="disk full"):
        eda.run_eda(raw.iloc[:100], filtered.iloc[:50], out_dir)
    after = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    # Same names (no temp file left) and same bytes: neither the PNGs nor
    # eda_summary.json were touched.
    assert after == before


def test_bad_prefix_labels_raise(frames, tmp_path):
    with pytest.raises(ValueError, match="`prefix_labels`"):
        eda.run_eda(*frames, tmp_path, prefix_labels=("only one",))
