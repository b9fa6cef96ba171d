"""Tests for data.py: reading every format, validation messages, filtering,
id encoding, splits, model inputs, batches, feature tables and writers."""

import dataclasses
import json
import math
import pathlib
import zlib

import keras
import numpy as np
import pandas as pd
import pytest

import config
import data
from runtime import runs

COLUMNS = ["userId", "movieId", "rating", "timestamp"]
# (user, item, rating, timestamp); file order is not time order on purpose.
ROWS = [
    (3, 20, 2.5, 104),
    (1, 10, 4.0, 100),
    (2, 10, 5.0, 102),
    (1, 20, 3.0, 101),
    (2, 30, 1.0, 103),
    (3, 40, 4.5, 105),
]
NO_FEATURES = config.FeatureFileConfig()


def _cfg(path, **kwargs):
    """A DataConfig for a test file: no feature files unless given."""
    kwargs.setdefault("item_features", NO_FEATURES)
    return config.DataConfig(path=pathlib.Path(path), **kwargs)


def _write_csv(path, header, rows, sep=","):
    lines = [sep.join(header)] if header else []
    lines += [sep.join(str(v) for v in row) for row in rows]
    pathlib.Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return pathlib.Path(path)


def _frame(rows=ROWS):
    return pd.DataFrame(rows, columns=COLUMNS)


def _write_format(tmp_path, fmt):
    """The ROWS table in `fmt`; returns the DataConfig that reads it."""
    if fmt == "csv":
        return _cfg(_write_csv(tmp_path / "r.csv", COLUMNS, ROWS))
    if fmt == "tsv":
        return _cfg(_write_csv(tmp_path / "r.tsv", COLUMNS, ROWS, "\t"))
    if fmt == "dat":
        path = _write_csv(tmp_path / "r.dat", None, ROWS, "::")
        return _cfg(path, header=False, column_names=tuple(COLUMNS))
    if fmt == "parquet":
        path = tmp_path / "r.parquet"
        _frame().to_parquet(path)
        return _cfg(path)
    if fmt == "jsonl":
        path = tmp_path / "r.jsonl"
        _frame().to_json(path, orient="records", lines=True)
        return _cfg(path)
    raise AssertionError(fmt)


def _interactions(
    user, item, ts=None, value=None, num_users=None, num_items=None
):
    user = np.asarray(user)
    item = np.asarray(item)
    n = len(user)
    return data.Interactions(
        user=user,
        item=item,
        value=np.ones(n) if value is None else np.asarray(value),
        ts=np.arange(n) if ts is None else np.asarray(ts),
        num_users=int(user.max()) + 1 if num_users is None else num_users,
        num_items=int(item.max()) + 1 if num_items is None else num_items,
    )


def _random_interactions(num_users=10, num_items=12, per_user=5, seed=0):
    """Unique (user, item) pairs with distinct timestamps."""
    rng = np.random.default_rng(seed)
    user, item = [], []
    for u in range(num_users):
        user += [u] * per_user
        item += rng.choice(num_items, per_user, replace=False).tolist()
    n = len(user)
    return data.Interactions(
        user=np.array(user),
        item=np.array(item),
        value=rng.integers(1, 6, n).astype(np.float32),
        ts=rng.permutation(n) + 1000,
        num_users=num_users,
        num_items=num_items,
    )


def _keys(x):
    """Sorted (user, item, ts) rows: a multiset key per interaction."""
    return sorted(zip(x.user.tolist(), x.item.tolist(), x.ts.tolist()))


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "dat", "parquet", "jsonl"])
def test_every_format_gives_identical_interactions(tmp_path, fmt):
    ds = data.load(_write_format(tmp_path, fmt))
    x = ds.interactions
    # Hand-computed: users 1,2,3 -> 0,1,2; items 10,20,30,40 -> 0,1,2,3.
    assert ds.user_ids.tolist() == [1, 2, 3]
    assert ds.item_ids.tolist() == [10, 20, 30, 40]
    np.testing.assert_array_equal(x.user, [2, 0, 1, 0, 1, 2])
    np.testing.assert_array_equal(x.item, [1, 0, 0, 1, 2, 3])
    np.testing.assert_array_equal(x.value, [2.5, 4.0, 5.0, 3.0, 1.0, 4.5])
    np.testing.assert_array_equal(x.ts, [104, 100, 102, 101, 103, 105])
    assert (x.num_users, x.num_items) == (3, 4)
    assert x.user.dtype == np.int32 and x.item.dtype == np.int32
    assert x.value.dtype == np.float32 and x.ts.dtype == np.int64
    assert list(ds.raw.columns) == ["user", "item", "rating", "timestamp"]


def test_read_table_formats_agree_and_detect_by_suffix(tmp_path):
    frames = {}
    for fmt in ("csv", "tsv", "parquet", "jsonl"):
        cfg = _write_format(tmp_path, fmt)
        frames[fmt] = data.read_table(cfg.path)  # format="auto"
    dat = _write_format(tmp_path, "dat")
    frames["dat"] = data.read_table(
        dat.path, header=False, column_names=dat.column_names
    )
    for fmt, frame in frames.items():
        assert list(frame.columns) == COLUMNS, fmt
        np.testing.assert_array_equal(
            frame.to_numpy(np.float64), _frame().to_numpy(np.float64), fmt
        )


def test_read_table_explicit_format_and_custom_sep(tmp_path):
    path = _write_csv(tmp_path / "odd.txt", COLUMNS, ROWS, ";")
    frame = data.read_table(path, format="csv", sep=";")
    assert list(frame.columns) == COLUMNS and len(frame) == len(ROWS)


def test_read_table_errors(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    with pytest.raises(ValueError, match="`format` must be one of"):
        data.read_table(path, format="xlsx")
    with pytest.raises(ValueError, match="column_names.*header=False"):
        data.read_table(path, column_names=("a", "b", "c", "d"))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "ratings.csv"
    with pytest.raises(FileNotFoundError, match="nowhere.*ratings.csv"):
        data.load(_cfg(path))


# ---------------------------------------------------------------------------
# Validation messages
# ---------------------------------------------------------------------------


def test_missing_column_names_it_and_lists_present(tmp_path):
    path = _write_csv(
        tmp_path / "r.csv", ["userId", "itemId", "rating", "timestamp"], ROWS
    )
    with pytest.raises(ValueError) as e:
        data.load(_cfg(path))
    msg = str(e.value)
    assert "r.csv" in msg and "`movieId`" in msg and "item_col" in msg
    assert "['userId', 'itemId', 'rating', 'timestamp']" in msg


def test_non_numeric_rating_names_file_column_row_line_value(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[2][2] = "abc"
    path = _write_csv(tmp_path / "bad.csv", COLUMNS, rows)
    with pytest.raises(ValueError) as e:
        data.load(_cfg(path))
    msg = str(e.value)
    assert "bad.csv" in msg and "`rating`" in msg
    assert "data row 3" in msg and "(line 4)" in msg and "'abc'" in msg


def test_non_numeric_rating_line_without_header(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[1][2] = "x"
    path = _write_csv(tmp_path / "bad.dat", None, rows, "::")
    cfg = _cfg(path, header=False, column_names=tuple(COLUMNS))
    with pytest.raises(ValueError, match=r"data row 2 \(line 2\) holds 'x'"):
        data.load(cfg)


def test_empty_user_id_names_column_and_row(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[1][0] = ""
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    with pytest.raises(ValueError) as e:
        data.load(_cfg(path))
    msg = str(e.value)
    assert "r.csv" in msg and "`userId` is empty" in msg
    assert "data row 2 (line 3)" in msg


def test_empty_string_item_id_in_jsonl_is_an_error(tmp_path):
    frame = _frame().astype({"movieId": str})
    frame.loc[3, "movieId"] = "  "
    path = tmp_path / "r.jsonl"
    frame.to_json(path, orient="records", lines=True)
    with pytest.raises(ValueError, match=r"`movieId` is empty at data row 4"):
        data.load(_cfg(path))


def test_unparseable_timestamp_names_column_row_and_value(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[4][3] = "yesterday"
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    with pytest.raises(ValueError) as e:
        data.load(_cfg(path))
    msg = str(e.value)
    assert "`timestamp`" in msg and "'yesterday'" in msg
    assert "data row 5 (line 6)" in msg


def test_empty_after_filtering_mentions_the_filters(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    with pytest.raises(ValueError, match="implicit_threshold=10"):
        data.load(_cfg(path, implicit_threshold=10.0))
    with pytest.raises(ValueError, match="min_user_interactions=5"):
        data.load(_cfg(path, min_user_interactions=5))


def test_implicit_threshold_needs_a_rating_column(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    with pytest.raises(ValueError, match="rating_col"):
        data.load(_cfg(path, rating_col=None, implicit_threshold=3.0))


# ---------------------------------------------------------------------------
# Filters and duplicates
# ---------------------------------------------------------------------------


def test_implicit_threshold_keeps_ratings_at_or_above(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    ds = data.load(_cfg(path, implicit_threshold=4.0))
    frame = ds.filtered_frame()
    assert sorted(frame["rating"].tolist()) == [4.0, 4.5, 5.0]
    # Item 30 (only rated 1.0) and 20 (2.5, 3.0) leave the catalog.
    assert ds.item_ids.tolist() == [10, 40]
    assert len(ds.raw) == len(ROWS)  # raw keeps everything


def test_no_rating_column_means_value_one(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    ds = data.load(_cfg(path, rating_col=None))
    np.testing.assert_array_equal(ds.interactions.value, np.ones(len(ROWS)))
    assert "rating" not in ds.raw


def test_no_timestamp_column_uses_file_order(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    ds = data.load(_cfg(path, timestamp_col=None))
    np.testing.assert_array_equal(ds.interactions.ts, np.arange(len(ROWS)))
    # File rows are no time: `raw` (read by EDA) has no timestamp column.
    assert list(ds.raw.columns) == ["user", "item", "rating"]


DUP_ROWS = [
    (1, 10, 4.0, 100),  # data row 1
    (2, 10, 3.0, 150),
    (1, 10, 2.0, 300),  # data row 3: latest
    (1, 10, 5.0, 200),  # data row 4: highest rating
    (2, 20, 1.0, 160),
]


def _dup_value(tmp_path, rule, rows=DUP_ROWS):
    path = _write_csv(tmp_path / f"{rule}.csv", COLUMNS, rows)
    ds = data.load(_cfg(path, duplicates=rule))
    frame = ds.filtered_frame()
    pair = frame[(frame["user"] == 1) & (frame["item"] == 10)]
    assert len(pair) == 1 and len(frame) == 3
    return float(pair["rating"].iloc[0]), int(pair["timestamp"].iloc[0])


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("last", (2.0, 300)),  # latest timestamp, not last in the file
        ("first", (4.0, 100)),
        ("max", (5.0, 200)),
        ("sum", (11.0, 300)),  # ratings added, latest timestamp
    ],
)
def test_duplicate_rules(tmp_path, rule, expected):
    assert _dup_value(tmp_path, rule) == expected


def test_duplicate_timestamp_tie_broken_by_file_row(tmp_path):
    rows = [(1, 10, 4.0, 100), (1, 10, 2.0, 100), (2, 20, 1.0, 1)]
    assert _dup_value(tmp_path, "last", rows + [(2, 10, 1.0, 1)])[0] == 2.0
    assert _dup_value(tmp_path, "first", rows + [(2, 10, 1.0, 1)])[0] == 4.0


def test_duplicate_error_names_user_item_and_rows(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, DUP_ROWS)
    with pytest.raises(ValueError) as e:
        data.load(_cfg(path, duplicates="error"))
    msg = str(e.value)
    assert "r.csv" in msg and "2 duplicate" in msg
    assert "user 1 and item 10" in msg and "data rows [1, 3, 4]" in msg


def test_unknown_duplicate_rule(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, DUP_ROWS)
    with pytest.raises(ValueError, match="`data.duplicates` must be one of"):
        data.load(_cfg(path, duplicates="mean"))


def test_k_core_is_iterated_until_stable(tmp_path):
    rows = [
        ("u1", "i1"),
        ("u1", "i2"),
        ("u2", "i1"),
        ("u2", "i2"),
        ("u3", "i2"),
        ("u3", "i3"),
        ("u4", "i3"),
    ]
    rows = [(u, i, 1.0, t) for t, (u, i) in enumerate(rows)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    # One pass (items >= 2, then users >= 2) drops only u4, leaving i3 with a
    # single interaction: the case needs a second pass.
    frame = pd.DataFrame(rows, columns=["user", "item", "r", "t"])
    one = frame[frame["item"].map(frame["item"].value_counts()) >= 2]
    one = one[one["user"].map(one["user"].value_counts()) >= 2]
    assert one["item"].value_counts().min() < 2
    ds = data.load(_cfg(path, min_user_interactions=2, min_item_interactions=2))
    x = ds.interactions
    assert ds.user_ids.tolist() == ["u1", "u2"]
    assert ds.item_ids.tolist() == ["i1", "i2"]
    assert len(x) == 4
    assert x.user_counts().min() >= 2 and x.item_counts().min() >= 2


# ---------------------------------------------------------------------------
# Ids and timestamps
# ---------------------------------------------------------------------------


def test_ids_contiguous_int32_sorted_by_raw_id(tmp_path):
    rows = [(70, 5, 1, 1), (7, 500, 1, 2), (700, 50, 1, 3), (7, 5, 1, 4)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    ds = data.load(_cfg(path))
    x = ds.interactions
    assert ds.user_ids.tolist() == [7, 70, 700]
    assert ds.item_ids.tolist() == [5, 50, 500]
    np.testing.assert_array_equal(x.user, [1, 0, 2, 0])
    np.testing.assert_array_equal(x.item, [0, 2, 1, 0])
    assert x.user.dtype == np.int32 and x.item.dtype == np.int32
    np.testing.assert_array_equal(ds.user_ids[x.user], [70, 7, 700, 7])


def test_digit_string_ids_are_ordered_numerically(tmp_path):
    frame = pd.DataFrame(
        {
            "userId": ["10", "9", "100"],
            "movieId": ["2", "10", "9"],
            "rating": [1.0, 2.0, 3.0],
            "timestamp": [1, 2, 3],
        }
    )
    path = tmp_path / "r.parquet"
    frame.to_parquet(path)
    ds = data.load(_cfg(path))
    assert ds.user_ids.tolist() == [9, 10, 100]  # not "10" < "100" < "9"
    assert ds.item_ids.tolist() == [2, 9, 10]
    np.testing.assert_array_equal(ds.interactions.user, [1, 0, 2])


def test_non_digit_string_ids_stay_strings(tmp_path):
    rows = [("b", "x9", 1, 1), ("a", "x10", 1, 2)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    ds = data.load(_cfg(path))
    assert ds.user_ids.tolist() == ["a", "b"]
    assert ds.item_ids.tolist() == ["x10", "x9"]


def _seconds(text):
    return int(pd.Timestamp(text, tz="UTC").timestamp())


def test_date_string_timestamps_parse_to_unix_seconds(tmp_path):
    dates = ["2020-01-01", "2020-01-02 10:00:00", "2021-06-30T12:30:00"]
    rows = [(1, 10 + k, 1.0, d) for k, d in enumerate(dates)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    ts = data.load(_cfg(path)).interactions.ts
    np.testing.assert_array_equal(ts, [_seconds(d) for d in dates])
    assert ts[0] == 1577836800


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_datetime_column_any_resolution(tmp_path, unit):
    frame = _frame()
    frame["timestamp"] = pd.to_datetime(
        frame["timestamp"] + 1_600_000_000, unit="s"
    ).astype(f"datetime64[{unit}]")
    path = tmp_path / "r.parquet"
    frame.to_parquet(path)
    ts = data.load(_cfg(path)).interactions.ts
    np.testing.assert_array_equal(
        ts, np.array([r[3] for r in ROWS]) + 1_600_000_000
    )


def test_jsonl_date_strings_and_epoch_numbers(tmp_path):
    frame = _frame()
    frame["timestamp"] = ["2020-01-0%d" % (k + 1) for k in range(len(ROWS))]
    path = tmp_path / "r.jsonl"
    frame.to_json(path, orient="records", lines=True)
    ts = data.load(_cfg(path)).interactions.ts
    assert ts[0] == _seconds("2020-01-01") and ts[5] == _seconds("2020-01-06")


# ---------------------------------------------------------------------------
# Interactions
# ---------------------------------------------------------------------------


def test_interactions_validate_ranges_and_lengths():
    with pytest.raises(ValueError, match=r"`user` .* in \[0, 2\)"):
        _interactions([0, 2], [0, 1], num_users=2)
    with pytest.raises(ValueError, match=r"`user` indices"):
        _interactions([0, -1], [0, 1], num_users=2)
    with pytest.raises(ValueError, match=r"`item` .* in \[0, 3\)"):
        _interactions([0, 1], [0, 3], num_items=3)
    with pytest.raises(ValueError, match="`item` has 1 rows but `user` has 2"):
        data.Interactions(
            np.array([0, 1]), np.array([0]), np.ones(2), np.zeros(2), 2, 2
        )
    with pytest.raises(ValueError, match="`ts` has 3 rows"):
        data.Interactions(
            np.array([0, 1]), np.array([0, 1]), np.ones(2), np.zeros(3), 2, 2
        )


def test_interactions_cast_dtypes_and_allow_empty():
    x = _interactions([0, 1], [1, 0], value=[1, 2])
    assert x.user.dtype == np.int32 and x.value.dtype == np.float32
    assert x.ts.dtype == np.int64
    empty = data.Interactions(
        np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 2, 2
    )
    assert len(empty) == 0


def test_to_csr_binary_collapses_duplicates():
    x = _interactions(
        [0, 0, 1], [2, 2, 0], value=[3.0, 4.0, 5.0], num_users=3, num_items=3
    )
    binary = x.to_csr().toarray()
    np.testing.assert_array_equal(binary, [[0, 0, 1], [1, 0, 0], [0, 0, 0]])
    summed = x.to_csr(binary=False).toarray()
    assert summed[0, 2] == 7.0 and summed[1, 0] == 5.0
    assert x.to_csr().shape == (3, 3) and x.to_csr().nnz == 2


def test_concat_select_and_counts():
    a = _interactions([0, 1], [1, 2], num_users=2, num_items=3)
    b = _interactions([1], [0], num_users=2, num_items=3)
    c = a.concat(b)
    assert c.user.tolist() == [0, 1, 1] and c.item.tolist() == [1, 2, 0]
    assert c.item_counts().tolist() == [1, 1, 1]
    assert c.user_counts().tolist() == [1, 2]
    assert c.select(c.user == 1).item.tolist() == [2, 0]
    assert c.select(np.array([2])).item.tolist() == [0]
    other = _interactions([0], [0], num_users=2, num_items=4)
    with pytest.raises(ValueError, match="different index spaces"):
        a.concat(other)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def _per_user_interactions(sizes, ts=None):
    user, item, times = [], [], []
    for u, n in enumerate(sizes):
        user += [u] * n
        item += list(range(n))
        times += list(range(n)) if ts is None else ts(u, n)
    return _interactions(user, item, ts=times, num_items=max(sizes))


def _check_partition(x, parts):
    train, valid, test = parts
    assert len(train) + len(valid) + len(test) == len(x)
    assert sorted(_keys(train) + _keys(valid) + _keys(test)) == _keys(x)
    for part in parts:
        assert (part.num_users, part.num_items) == (x.num_users, x.num_items)


def test_chrono_per_user_ceil_counts():
    sizes = [1, 2, 3, 7, 10, 30, 11]
    # Reverse time order inside each user: the split must sort, not trust.
    x = _per_user_interactions(sizes, ts=lambda u, n: list(range(n, 0, -1)))
    parts = data.split(x, "chrono", 0.1, 0.2)
    _check_partition(x, parts)
    train, valid, test = parts
    for u, n in enumerate(sizes):
        n_test, n_valid = -(-2 * n // 10), -(-n // 10)
        n_valid = min(n_valid, n - n_test)
        assert test.user_counts()[u] == n_test, n
        assert valid.user_counts()[u] == n_valid, n
        assert train.user_counts()[u] == n - n_test - n_valid, n
    # n=30 -> valid 3 (not 4), test 6.
    assert (valid.user_counts()[5], test.user_counts()[5]) == (3, 6)
    # The latest timestamps (lowest item ids here) are test.
    assert sorted(test.item[test.user == 5].tolist()) == list(range(6))
    assert sorted(valid.item[valid.user == 5].tolist()) == [6, 7, 8]


def test_chrono_counts_exact_where_float_products_are_not():
    # 0.07 * 100 == 7.000000000000001 and 0.14 * 50 == 7.000000000000001:
    # a plain ceil would give 8.
    assert math.ceil(0.07 * 100) == 8 and math.ceil(0.14 * 50) == 8
    x = _per_user_interactions([100, 50])
    train, valid, test = data.split(x, "chrono", 0.07, 0.14)
    assert valid.user_counts().tolist() == [7, 4]
    assert test.user_counts().tolist() == [14, 7]


def test_chrono_orders_by_timestamp_then_item():
    # One user, all at the same time, items in scrambled file order.
    items = [5, 0, 9, 3, 7, 1, 8, 2, 6, 4]
    x = _interactions([0] * 10, items, ts=[50] * 10)
    train, valid, test = data.split(x, "chrono", 0.1, 0.2)
    assert sorted(test.item.tolist()) == [8, 9]
    assert valid.item.tolist() == [7]
    # A later timestamp beats a larger item index.
    x = _interactions([0] * 5, [4, 3, 2, 1, 0], ts=[1, 1, 1, 1, 2])
    _, valid, test = data.split(x, "chrono", 0.2, 0.2)
    assert test.item.tolist() == [0] and valid.item.tolist() == [4]


def test_leave_last_out():
    x = _per_user_interactions([5, 3, 2, 1])
    parts = data.split(x, "leave_last_out")
    _check_partition(x, parts)
    train, valid, test = parts
    assert test.user.tolist() == [0, 1] and test.item.tolist() == [4, 2]
    assert valid.user.tolist() == [0, 1] and valid.item.tolist() == [3, 1]
    assert train.user_counts().tolist() == [3, 1, 2, 1]


def test_time_cut_is_one_global_cut():
    x = _random_interactions(num_users=6, per_user=5, seed=3)  # n = 30
    parts = data.split(x, "time_cut", 0.1, 0.2)
    _check_partition(x, parts)
    train, valid, test = parts
    assert (len(train), len(valid), len(test)) == (21, 3, 6)
    assert train.ts.max() < valid.ts.min() <= valid.ts.max() < test.ts.min()


def test_random_split_deterministic_per_seed():
    x = _random_interactions(num_users=8, per_user=10, seed=1)
    a = data.split(x, "random", 0.1, 0.2, seed=7)
    b = data.split(x, "random", 0.1, 0.2, seed=7)
    c = data.split(x, "random", 0.1, 0.2, seed=8)
    _check_partition(x, a)
    for pa, pb in zip(a, b):
        assert _keys(pa) == _keys(pb)
    assert _keys(a[2]) != _keys(c[2])
    # Same per-user sizes as chrono, different members.
    chrono = data.split(x, "chrono", 0.1, 0.2)
    for pa, pc in zip(a, chrono):
        np.testing.assert_array_equal(pa.user_counts(), pc.user_counts())
    assert _keys(a[2]) != _keys(chrono[2])


def test_split_errors():
    x = _per_user_interactions([5])
    with pytest.raises(ValueError, match="`split` must be one of"):
        data.split(x, "kfold")
    with pytest.raises(ValueError, match="`valid_fraction` must lie"):
        data.split(x, "chrono", valid_fraction=1.0)
    with pytest.raises(ValueError, match="`test_fraction` must lie"):
        data.split(x, "chrono", test_fraction=-0.1)


def test_shipped_data_p1_split_counts():
    cfg = dataclasses.replace(config.DataConfig(), item_features=NO_FEATURES)
    ds = data.load(cfg)
    x = ds.interactions
    assert (len(x), x.num_users, x.num_items) == (100_836, 610, 9_724)
    train, valid, test = data.split(
        x, cfg.split, cfg.valid_fraction, cfg.test_fraction
    )
    assert (len(train), len(valid), len(test)) == (70_061, 10_358, 20_417)


# ---------------------------------------------------------------------------
# History and negatives
# ---------------------------------------------------------------------------


def test_history_matrix_newest_first_padded_truncated():
    x = _interactions(
        user=[0, 0, 0, 2, 0],
        item=[3, 1, 2, 0, 4],
        ts=[1, 3, 2, 9, 3],  # items 1 and 4 tie: larger item first
        num_users=3,
        num_items=5,
    )
    h = data.history_matrix(x, 6)
    assert h.dtype == np.int32 and h.shape == (3, 6)
    np.testing.assert_array_equal(h[0], [5, 2, 3, 4, 0, 0])
    np.testing.assert_array_equal(h[1], np.zeros(6))  # no interactions
    np.testing.assert_array_equal(h[2], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.history_matrix(x, 2)[0], [5, 2])
    with pytest.raises(ValueError, match="`length` must be >= 1"):
        data.history_matrix(x, 0)


def test_item_log_probs():
    lp = data.item_log_probs(np.array([0, 1, 3]))
    assert lp.dtype == np.float32 and np.all(np.isfinite(lp))
    np.testing.assert_allclose(
        np.exp(lp), np.array([0.5, 1, 3]) / 4.5, rtol=1e-6
    )


def test_uniform_sampler_in_range():
    sample = data.negative_sampler(np.array([5, 0, 1, 2]), "uniform")
    draw = sample(np.random.default_rng(0), (500, 3))
    assert draw.shape == (500, 3) and draw.dtype == np.int32
    assert set(np.unique(draw).tolist()) == {0, 1, 2, 3}
    again = sample(np.random.default_rng(0), (500, 3))
    np.testing.assert_array_equal(draw, again)


def _chi2(observed, expected_p):
    expected = expected_p * observed.sum()
    keep = expected > 0
    return float(
        np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
    )


def test_popularity_sampler_follows_count_power_alpha():
    counts = np.array([0, 1, 4, 9, 100, 30])
    sample = data.negative_sampler(counts, "popularity", alpha=0.75)
    draw = sample(np.random.default_rng(0), (100_000,))
    assert draw.dtype == np.int32
    observed = np.bincount(draw, minlength=len(counts)).astype(float)
    assert observed[0] == 0  # never seen, never sampled
    p = counts**0.75 / np.sum(counts**0.75)
    # 4 degrees of freedom: chi2 > 25 has p < 1e-4 under the right law.
    assert _chi2(observed, p) < 25
    wrong = counts / counts.sum()  # alpha=1: the test can tell them apart
    assert _chi2(observed, wrong) > 1000


def test_negative_sampler_errors():
    with pytest.raises(ValueError, match="'uniform' or 'popularity'"):
        data.negative_sampler(np.ones(3), "zipf")
    with pytest.raises(ValueError, match="needs interactions"):
        data.negative_sampler(np.zeros(3), "popularity")


# ---------------------------------------------------------------------------
# InteractionBatches
# ---------------------------------------------------------------------------


def _batches(x, **kwargs):
    kwargs.setdefault("batch_size", 8)
    return data.InteractionBatches(x, **kwargs)


def _same(a, b):
    (xa, ya), (xb, yb) = a, b
    return (
        xa.keys() == xb.keys()
        and all(np.array_equal(xa[k], xb[k]) for k in xa)
        and np.array_equal(ya, yb)
    )


def test_batches_depend_only_on_seed_epoch_idx():
    x = _random_interactions()
    hist = data.history_matrix(x, 6)
    sampler = data.negative_sampler(x.item_counts())
    kwargs = dict(
        history=hist,
        history_dropout=0.3,
        num_negatives=2,
        sampler=sampler,
        seed=5,
    )
    ds = _batches(x, **kwargs)
    assert isinstance(ds, keras.utils.PyDataset)
    first = ds[2]
    ds[0], ds[4]
    assert _same(ds[2], first)  # re-requested, out of order
    fresh = _batches(x, **kwargs)
    assert _same(fresh[2], first)  # a new object (a worker) agrees
    ds.on_epoch_end()
    assert not _same(ds[2], first)
    fresh.epoch = 1
    assert _same(fresh[2], ds[2])
    other = _batches(x, **{**kwargs, "seed": 6})
    assert not _same(other[2], first)


def test_batch_randomness_is_keyed_by_seed_epoch_idx():
    """Spell the contract out: the epoch order is
    `default_rng([seed, epoch]).permutation(n)` and a batch's draws come from
    `default_rng([seed, epoch, idx])`, so no two batches share state."""
    x = _random_interactions()
    sampler = data.negative_sampler(x.item_counts())
    ds = _batches(x, num_negatives=3, sampler=sampler, seed=11)
    for epoch in (0, 1):
        order = np.random.default_rng([11, epoch]).permutation(len(x))
        for idx in (0, 3):
            batch, _ = ds[idx]
            rows = order[idx * 8 : (idx + 1) * 8]
            np.testing.assert_array_equal(batch["item"], x.item[rows])
            rng = np.random.default_rng([11, epoch, idx])
            np.testing.assert_array_equal(
                batch["neg_item"], sampler(rng, (8, 3))
            )
        ds.on_epoch_end()
    # Different batches of one epoch draw differently.
    ds = _batches(x, num_negatives=3, sampler=sampler, shuffle=False)
    assert not np.array_equal(ds[0][0]["neg_item"], ds[1][0]["neg_item"])


def test_each_interaction_once_per_epoch_last_batch_filled():
    x = _random_interactions()  # 50 rows, unique (user, item)
    ds = _batches(x, batch_size=8)
    assert len(ds) == 7
    orders = []
    for _ in range(2):
        seen = []
        for idx in range(len(ds)):
            batch, label = ds[idx]
            assert len(label) == 8  # one shape: XLA compiles once
            seen += list(zip(batch["user"].tolist(), batch["item"].tolist()))
        # 48 rows once, then the last batch's 2 new rows plus the first 6
        # rows of this epoch's order again.
        assert sorted(set(seen)) == sorted(
            zip(x.user.tolist(), x.item.tolist())
        )
        assert seen[-6:] == seen[:6]
        orders.append(seen)
        ds.on_epoch_end()
    assert orders[0] != orders[1]  # reshuffled each epoch


def test_no_shuffle_keeps_order():
    x = _random_interactions()
    batch, _ = _batches(x, shuffle=False)[1]
    np.testing.assert_array_equal(batch["item"], x.item[8:16])


def test_history_hides_the_target_item():
    x = _random_interactions()
    hist = data.history_matrix(x, 5)
    ds = _batches(x, history=hist, batch_size=50)
    batch, _ = ds[0]
    h = batch["history"]
    assert h.dtype == np.int32 and h.shape == (50, 5)
    for row, u, i in zip(h, batch["user"], batch["item"]):
        assert i + 1 not in row
        expected = np.where(hist[u] == i + 1, 0, hist[u])
        np.testing.assert_array_equal(row, expected)
    # The target is in the full history often enough for this to matter.
    assert np.sum(hist[batch["user"]] == batch["item"][:, None] + 1) > 20


def test_history_dropout_hides_the_requested_share():
    x = _random_interactions(num_users=20, num_items=60, per_user=40)
    hist = data.history_matrix(x, 40)
    for rate in (0.0, 0.5):
        ds = _batches(x, history=hist, history_dropout=rate, batch_size=800)
        batch, _ = ds[0]
        full = hist[batch["user"]]
        shown = full != batch["item"][:, None] + 1
        share = 1 - np.mean(batch["history"][shown] != 0)
        assert abs(share - rate) < 0.03, (rate, share)


def test_features_negatives_logq_shapes():
    x = _random_interactions()
    rng = np.random.default_rng(0)
    uf = rng.random((x.num_users, 3)).astype(np.float32)
    itf = rng.random((x.num_items, 5)).astype(np.float32)
    logq = data.item_log_probs(x.item_counts())
    ds = _batches(
        x,
        user_features=uf,
        item_features=itf,
        num_negatives=4,
        sampler=data.negative_sampler(x.item_counts()),
        item_logq=logq,
    )
    batch, label = ds[0]
    assert batch["user_features"].shape == (8, 3)
    assert batch["item_features"].shape == (8, 5)
    assert batch["neg_item"].shape == (8, 4)
    assert batch["neg_item_features"].shape == (8, 4, 5)
    assert batch["item_logq"].shape == (8,)
    np.testing.assert_array_equal(batch["user_features"], uf[batch["user"]])
    np.testing.assert_array_equal(
        batch["neg_item_features"], itf[batch["neg_item"]]
    )
    np.testing.assert_array_equal(batch["item_logq"], logq[batch["item"]])
    assert batch["neg_item"].min() >= 0
    assert batch["neg_item"].max() < x.num_items
    assert label.dtype == np.float32
    np.testing.assert_array_equal(label, np.ones(8))
    assert "history" not in batch


def test_scaled_labels_reach_batches():
    x = _interactions([0, 0, 0, 1], [0, 1, 2, 0], value=[1.0, 3.0, 5.0, 2.0])
    labels = data.scaled_labels(x.value, 1.0, 5.0)
    np.testing.assert_allclose(labels, [-1.0, 0.0, 1.0, -0.5])
    batch, label = _batches(x, labels=labels, shuffle=False)[0]
    assert label.dtype == np.float32
    np.testing.assert_allclose(label, [-1.0, 0.0, 1.0, -0.5])
    with pytest.raises(ValueError, match="`labels` has 3 entries"):
        _batches(x, labels=labels[:3])


def test_graded_labels():
    got = data.graded_labels([1.0, 2.0, 3.0, 4.0, 5.0], like=4.0, dislike=2.0)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(data.graded_labels([3.0, 1.0]), [1, 1])
    with pytest.raises(ValueError, match="dislike"):
        data.graded_labels([1.0], like=2.0, dislike=3.0)


def test_batches_errors():
    x = _random_interactions()
    with pytest.raises(ValueError, match="`batch_size` must be >= 1"):
        _batches(x, batch_size=0)
    with pytest.raises(ValueError, match="zero interactions"):
        _batches(x.select(np.zeros(len(x), bool)))
    with pytest.raises(ValueError, match="needs a `sampler`"):
        _batches(x, num_negatives=2)
    with pytest.raises(ValueError, match="`history_dropout` must be in"):
        _batches(x, history_dropout=1.0)


# ---------------------------------------------------------------------------
# Feature tables
# ---------------------------------------------------------------------------

ITEM_FEATURES = """id,genre,tags,year,views,title
10,drama,Comedy|Drama,1990,1,Toy Story
20,comedy,Drama,2000,2,Heat heat HEAT
30,drama,,,1000,
99,horror,Horror,1980,5,Not Rated Here
"""
# Items in the interactions: 10, 20, 30, 40 (40 has no feature row; 99 is
# not in the interactions).


def _feature_dataset(tmp_path, table=ITEM_FEATURES, **kwargs):
    feat = tmp_path / "items.csv"
    feat.write_text(table, encoding="utf-8")
    fcfg = config.FeatureFileConfig(path=feat, **kwargs)
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    return data.load(_cfg(path, item_features=fcfg))


def _block(table, prefix):
    cols = [k for k, n in enumerate(table.names) if n.startswith(prefix)]
    return table.values[:, cols], [table.names[k] for k in cols]


def test_items_without_feature_row_are_flagged(tmp_path):
    ds = _feature_dataset(tmp_path, categorical=("genre",))
    t = ds.item_features
    assert ds.item_ids.tolist() == [10, 20, 30, 40]
    assert t.values.shape == (4, t.num_features)
    assert t.values.dtype == np.float32
    np.testing.assert_array_equal(t.missing, [False, False, False, True])
    assert t.names[-1] == "_missing_row"
    np.testing.assert_array_equal(t.values[:, -1], [0, 0, 0, 1])
    np.testing.assert_array_equal(t.values[3, :-1], 0)
    assert ds.user_features is None


def test_categorical_one_hot(tmp_path):
    t = _feature_dataset(tmp_path, categorical=("genre",)).item_features
    block, names = _block(t, "genre=")
    # The vocabulary comes from the rows of catalog items only (no horror).
    assert names == ["genre=comedy", "genre=drama"]
    np.testing.assert_array_equal(block, [[0, 1], [1, 0], [0, 1], [0, 0]])
    assert t.stats["genre"] == {
        "type": "categorical",
        "vocabulary": ["comedy", "drama"],
    }


def test_categorical_max_categories_keeps_most_frequent(tmp_path):
    t = _feature_dataset(
        tmp_path, categorical=("genre",), max_categories=1
    ).item_features
    block, names = _block(t, "genre=")
    assert names == ["genre=drama"]
    np.testing.assert_array_equal(block[:, 0], [1, 0, 1, 0])


def test_multivalued_multi_hot(tmp_path):
    t = _feature_dataset(tmp_path, multivalued=("tags",)).item_features
    block, names = _block(t, "tags=")
    assert names == ["tags=Comedy", "tags=Drama"]
    np.testing.assert_array_equal(block, [[1, 1], [0, 1], [0, 0], [0, 0]])


def test_multivalued_custom_separator(tmp_path):
    text = "id,tags\n10,a;b\n20,b\n"
    t = _feature_dataset(
        tmp_path, text, multivalued=("tags",), multivalued_sep=";"
    ).item_features
    block, names = _block(t, "tags=")
    assert names == ["tags=a", "tags=b"]
    np.testing.assert_array_equal(block[:2], [[1, 1], [0, 1]])


def test_numeric_standardised_with_missing_indicator(tmp_path):
    t = _feature_dataset(tmp_path, numeric=("year",)).item_features
    year = t.values[:, t.names.index("year")]
    flag = t.values[:, t.names.index("year_missing")]
    # 1990 and 2000 present: mean 1995, std 5. Item 30 has an empty cell,
    # item 40 no row: both flagged, value 0.
    np.testing.assert_allclose(year, [-1, 1, 0, 0], atol=1e-6)
    np.testing.assert_array_equal(flag, [0, 0, 1, 1])
    assert t.stats["year"] == {
        "type": "numeric",
        "mean": 1995.0,
        "std": 5.0,
        "log1p": False,
    }


def test_numeric_skewed_gets_log1p(tmp_path):
    # Skew of [1, 1, 1, 1e5] is 2/sqrt(3) = 1.15: below 2, no log.
    text = "id,views\n10,1\n20,1\n30,1\n40,100000\n"
    t = _feature_dataset(tmp_path, text, numeric=("views",)).item_features
    assert t.stats["views"]["log1p"] is False
    np.testing.assert_allclose(
        t.values[:, 0], [-1 / 3**0.5] * 3 + [3**0.5], rtol=1e-5
    )
    # 24 items, one huge: skew 22/sqrt(23) = 4.6 > 2, so log1p first.
    views = [100000, 1, 2] + [1] * 21
    items = list(range(1, 25))
    inter = [(1, i, 1.0, k) for k, i in enumerate(items)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, inter)
    feat = tmp_path / "views.csv"
    feat.write_text(
        "id,views\n" + "".join(f"{i},{v}\n" for i, v in zip(items, views))
    )
    ds = data.load(
        _cfg(
            path,
            item_features=config.FeatureFileConfig(
                path=feat, numeric=("views",)
            ),
        )
    )
    t = ds.item_features
    assert t.stats["views"]["log1p"] is True
    logged = np.log1p(np.array(views, np.float64))
    expected = (logged - logged.mean()) / logged.std()
    np.testing.assert_allclose(
        t.values[:, t.names.index("views")], expected, rtol=1e-5, atol=1e-6
    )


def test_non_numeric_feature_names_file_column_and_row(tmp_path):
    text = "id,year\n10,1990\n20,nineteen\n"
    with pytest.raises(ValueError) as e:
        _feature_dataset(tmp_path, text, numeric=("year",))
    msg = str(e.value)
    assert "items.csv" in msg and "`year`" in msg
    assert "data row 2 (line 3)" in msg and "'nineteen'" in msg


def test_hashed_text_l2_normalised_and_crc32(tmp_path):
    buckets = 64
    t = _feature_dataset(
        tmp_path, text=("title",), text_buckets=buckets
    ).item_features
    block, names = _block(t, "title#")
    assert names == [f"title#{b}" for b in range(buckets)]

    # Reference: lower-cased words, crc32 buckets (stable across processes,
    # unlike `hash`), counts, then L2 normalisation.
    def ref(words):
        v = np.zeros(buckets)
        for w in words:
            v[zlib.crc32(w.encode()) % buckets] += 1
        return v / np.linalg.norm(v)

    np.testing.assert_allclose(block[0], ref(["toy", "story"]), rtol=1e-6)
    np.testing.assert_allclose(block[1], ref(["heat"] * 3), rtol=1e-6)
    np.testing.assert_array_equal(block[2], 0)  # empty title
    np.testing.assert_array_equal(block[3], 0)  # no row
    np.testing.assert_allclose(np.linalg.norm(block[:2], axis=1), 1, rtol=1e-6)
    assert t.stats["title"] == {"type": "text", "buckets": buckets}


def test_missing_feature_column_names_it(tmp_path):
    with pytest.raises(ValueError) as e:
        _feature_dataset(tmp_path, categorical=("studio",))
    msg = str(e.value)
    assert "items.csv" in msg and "item feature column `studio`" in msg
    assert "'genre'" in msg and "'title'" in msg


def test_user_features_and_string_feature_ids(tmp_path):
    users = pd.DataFrame(
        {"uid": ["3", "1"], "age": [30.0, 20.0], "city": ["x", "y"]}
    )
    users.to_parquet(tmp_path / "users.parquet")
    fcfg = config.FeatureFileConfig(
        path=tmp_path / "users.parquet",
        id_col="uid",
        numeric=("age",),
        categorical=("city",),
    )
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    ds = data.load(_cfg(path, user_features=fcfg))
    t = ds.user_features
    np.testing.assert_array_equal(t.missing, [False, True, False])
    np.testing.assert_allclose(t.values[:, t.names.index("age")], [-1, 0, 1])
    np.testing.assert_array_equal(
        t.values[:, [t.names.index("city=x"), t.names.index("city=y")]],
        [[0, 1], [0, 0], [1, 0]],
    )
    assert ds.item_features is None


def test_feature_file_without_header(tmp_path):
    feat = tmp_path / "items.dat"
    feat.write_text("10::drama\n20::comedy\n", encoding="utf-8")
    fcfg = config.FeatureFileConfig(
        path=feat,
        header=False,
        column_names=("id", "genre"),
        categorical=("genre",),
    )
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    t = data.load(_cfg(path, item_features=fcfg)).item_features
    assert t.names == ["genre=comedy", "genre=drama", "_missing_row"]
    np.testing.assert_array_equal(t.missing, [False, False, True, True])


# ---------------------------------------------------------------------------
# Dataset helpers and writers
# ---------------------------------------------------------------------------


def test_filtered_frame_has_raw_ids_after_filtering(tmp_path):
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    ds = data.load(_cfg(path, implicit_threshold=3.0))
    frame = ds.filtered_frame()
    assert list(frame.columns) == ["user", "item", "rating", "timestamp"]
    got = sorted(frame.itertuples(index=False, name=None))
    want = sorted(r for r in ROWS if r[2] >= 3.0)
    assert got == want
    ds = data.load(_cfg(path, rating_col=None, timestamp_col=None))
    assert list(ds.filtered_frame().columns) == ["user", "item"]


def test_encoders_are_json_serialisable(tmp_path):
    ds = _feature_dataset(
        tmp_path,
        categorical=("genre",),
        multivalued=("tags",),
        numeric=("year",),
        text=("title",),
        text_buckets=8,
    )
    enc = json.loads(json.dumps(ds.encoders()))
    assert enc["user_ids"] == [1, 2, 3]
    assert enc["item_ids"] == [10, 20, 30, 40]
    assert enc["item_features"]["genre"]["vocabulary"] == ["comedy", "drama"]
    assert enc["item_features"]["year"]["mean"] == 1995.0
    assert enc["user_features"] is None
    runs.write_run_info(config.default(), tmp_path / "run", ds)
    out = tmp_path / "run" / "encoders.json"
    assert json.loads(out.read_text()) == enc


def test_encoders_string_ids(tmp_path):
    rows = [("b", "x", 1, 1), ("a", "y", 1, 2)]
    ds = data.load(_cfg(_write_csv(tmp_path / "r.csv", COLUMNS, rows)))
    enc = json.loads(json.dumps(ds.encoders()))
    assert enc["user_ids"] == ["a", "b"] and enc["item_ids"] == ["x", "y"]


def test_split_rejects_fractions_leaving_no_train():
    x = data.Interactions(
        user=[0, 0, 0],
        item=[0, 1, 2],
        value=[1, 1, 1],
        ts=[1, 2, 3],
        num_users=1,
        num_items=3,
    )
    with pytest.raises(ValueError, match="train keeps data"):
        data.split(x, "chrono", valid_fraction=0.5, test_fraction=0.5)


def test_cold_items_split_holds_out_whole_items():
    rng = np.random.default_rng(3)
    n = 400
    x = data.Interactions(
        user=rng.integers(0, 20, n),
        item=rng.integers(0, 50, n),
        value=np.ones(n),
        ts=np.arange(n),
        num_users=20,
        num_items=50,
    )
    train, valid, test = data.split(x, "cold_items", 0.1, 0.2, seed=1)
    assert len(train) + len(valid) + len(test) == n
    cold = np.unique(test.item)
    present = np.unique(x.item)
    assert len(cold) == int(np.ceil(0.2 * len(present)))
    assert not np.isin(train.item, cold).any()
    assert not np.isin(valid.item, cold).any()
    assert np.isin(x.item[np.isin(x.item, cold)], test.item).all()
    again = data.split(x, "cold_items", 0.1, 0.2, seed=1)[2]
    np.testing.assert_array_equal(np.unique(again.item), cold)
    other = data.split(x, "cold_items", 0.1, 0.2, seed=2)[2]
    assert not np.array_equal(np.unique(other.item), cold)


# ---------------------------------------------------------------------------
# New-data guard rails (a dataset the toolkit has never seen)
# ---------------------------------------------------------------------------


def _no_time_file(tmp_path):
    rows = [(u, 100 + i, 1) for u in range(1, 4) for i in range(6)]
    return _write_csv(tmp_path / "plays.csv", ["user", "artist", "plays"], rows)


def test_chrono_without_timestamps_is_refused_with_the_choices(tmp_path):
    path = _no_time_file(tmp_path)
    sets = [
        f"data.path={str(path)!r}",
        "data.timestamp_col=None",
        "data.rating_col=None",
        "data.user_col=user",
        "data.item_col=artist",
        "data.item_features.path=None",
    ]
    for split in ("chrono", "leave_last_out", "time_cut"):
        with pytest.raises(
            ValueError,
            match=(r"timestamp_col.*data.split='random'.*order_by_file=True"),
        ):
            config.override(config.default(), sets + [f"data.split={split}"])
    # The library refuses too, for code that splits by hand.
    x = data.load(
        _cfg(
            path,
            user_col="user",
            item_col="artist",
            rating_col=None,
            timestamp_col=None,
        )
    ).interactions
    assert not x.ordered
    with pytest.raises(ValueError, match="no timestamps"):
        data.split(x, "chrono")
    train, valid, test = data.split(x, "random", seed=0)
    assert len(train) + len(valid) + len(test) == len(x)
    # With order_by_file the file row is the time.
    ordered = data.load(
        _cfg(
            path,
            user_col="user",
            item_col="artist",
            rating_col=None,
            timestamp_col=None,
            order_by_file=True,
        )
    ).interactions
    _, _, test = data.split(ordered, "chrono", 0.0, 0.3)
    assert sorted(test.item[test.user == 0]) == [4, 5]  # the last rows


def test_shipped_movie_features_only_join_the_shipped_ratings(tmp_path, caplog):
    path = _no_time_file(tmp_path)
    cfg = config.DataConfig(
        path=path,
        user_col="user",
        item_col="artist",
        rating_col=None,
        timestamp_col=None,
    )
    assert cfg.item_features.path is not None  # the shipped default
    with caplog.at_level("WARNING"):
        dataset = data.load(cfg)
    assert dataset.item_features is None
    assert "not joined" in caplog.text
    assert data.load(config.DataConfig()).item_features is not None


def test_feature_file_that_misses_most_ids_is_an_error(tmp_path):
    feat = tmp_path / "items.csv"
    feat.write_text("id,genre\n999,a\n998,b\n10,c\n")
    path = _write_csv(tmp_path / "r.csv", COLUMNS, ROWS)
    fcfg = config.FeatureFileConfig(path=feat, categorical=("genre",))
    with pytest.raises(
        ValueError,
        match=(
            r"items.csv: the item feature file has rows for only 1 of the 4 "
            r"items.*data.item_features.id_col.*data.item_features.path=None"
        ),
    ):
        data.load(_cfg(path, item_features=fcfg))
    relaxed = dataclasses.replace(fcfg, min_coverage=0.0)
    assert data.load(_cfg(path, item_features=relaxed)).item_features


@pytest.mark.parametrize("value", ["99999999999999999999", "1e30", "inf"])
def test_timestamps_past_int64_are_rejected(tmp_path, value):
    rows = ROWS[:2] + [(5, 50, 3.0, value)]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    with pytest.raises(
        ValueError,
        match=(
            r"r.csv: column `timestamp` holds a time out of range at data "
            r"row 3 \(line 4\)"
        ),
    ):
        data.load(_cfg(path))


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ratings.csv is empty \(0 bytes\)"):
        data.load(_cfg(path))
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="ratings.csv holds no columns"):
        data.load(_cfg(path))


def test_wrong_separator_names_the_setting_and_the_guess(tmp_path):
    path = _write_csv(
        tmp_path / "r.csv",
        ["userID", "artistID", "weight"],
        [(1, 2, 3), (1, 3, 4)],
        sep="\t",
    )
    cfg = _cfg(
        path,
        user_col="userID",
        item_col="artistID",
        rating_col=None,
        timestamp_col=None,
    )
    with pytest.raises(
        ValueError,
        match=(
            r"column `userID` .* not found.*looks tab-separated, not "
            r"','-separated: set `data.sep='\\t'`"
        ),
    ):
        data.load(cfg)
    assert len(data.load(dataclasses.replace(cfg, sep="\t")).interactions)


def test_headerless_tab_file_read_as_csv_gets_a_hint(tmp_path):
    """The MovieLens-100K `u.data` layout read with format=auto."""
    path = tmp_path / "u.data"
    path.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    cfg = _cfg(
        path,
        header=False,
        column_names=("user", "item", "rating", "ts"),
        user_col="user",
        item_col="item",
        timestamp_col="ts",
    )
    with pytest.raises(
        ValueError,
        match=(
            r"column `item` is empty at data row 1.*needs an item id.*"
            r"looks tab-separated.*data.sep='\\t'"
        ),
    ):
        data.load(cfg)
    ok = data.load(dataclasses.replace(cfg, sep="\t"))
    assert ok.interactions.num_users == 2
    # With a header row expected, the first data row is taken for names.
    with pytest.raises(ValueError, match="data.header=False"):
        data.load(_cfg(path, sep="\t", user_col="user", item_col="item"))


def test_latin1_file_read_as_utf8_names_file_and_encoding(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(
        "userId,movieId,rating,timestamp\n1,Am\u00e9lie,4,5\n".encode("latin-1")
    )
    with pytest.raises(
        ValueError,
        match=(r"r.csv is not utf-8 text \(byte 0xe9.*data.encoding.*latin-1"),
    ):
        data.load(_cfg(path))
    assert data.load(_cfg(path, encoding="latin-1")).item_ids[0] == (
        "Am\u00e9lie"
    )


def test_empty_rating_cell_is_reported_as_empty(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,,5\n1,3,4,6\n")
    with pytest.raises(
        ValueError,
        match=(
            r"column `rating` must be numeric; data row 1 \(line 2\) is empty"
        ),
    ):
        data.load(_cfg(path))
    path.write_text("userId,movieId,rating,timestamp\n1,2,oops,5\n")
    with pytest.raises(ValueError, match="data row 1 .* holds 'oops'"):
        data.load(_cfg(path))


def test_count_column_becomes_sample_weights(tmp_path):
    rows = [(1, 10, 0), (1, 20, 3), (2, 10, 1000), (2, 30, 1)]
    path = _write_csv(tmp_path / "plays.csv", ["u", "i", "plays"], rows)
    cfg = _cfg(
        path,
        user_col="u",
        item_col="i",
        rating_col=None,
        timestamp_col=None,
        weight_col="plays",
    )
    x = data.load(cfg).interactions
    np.testing.assert_allclose(
        np.sort(x.weight), np.sort(1 + np.log1p([0, 3, 1000, 1])), rtol=1e-6
    )
    assert x.weighted and (x.value == 1).all()
    assert x.to_csr(weighted=True).sum() == pytest.approx(x.weight.sum())
    assert x.select(x.user == 0).weight.shape == (2,)
    linear = data.load(dataclasses.replace(cfg, weight_transform="linear"))
    assert sorted(linear.interactions.weight) == [0, 1, 3, 1000]
    batches = data.InteractionBatches(x, 2, seed=0)
    assert len(batches[0]) == 3  # (x, y, sample_weight)
    bad = _write_csv(tmp_path / "bad.csv", ["u", "i", "plays"], [(1, 10, -2)])
    with pytest.raises(ValueError, match="counts >= 0; data row 1"):
        data.load(dataclasses.replace(cfg, path=bad))


def test_describe_reports_steps_time_and_duplicates(tmp_path):
    rows = ROWS + [ROWS[0]]
    path = _write_csv(tmp_path / "r.csv", COLUMNS, rows)
    cfg = _cfg(path, min_item_interactions=2)
    facts = data.describe(data.load(cfg), cfg)
    assert facts["steps"] == {"read": 7, "duplicates": 6, "k_core": 4}
    assert facts["duplicate_rows"] == 1
    assert facts["separator"] == "," and facts["separator_detected"] == ","
    assert facts["time"]["first"] == 100 and facts["time"]["ordered"]
    assert facts["ratings"]["max"] == 5.0
    assert len(facts["sample"]) == 5


def test_user_sequences_reverse_to_history_matrix_order():
    x = _interactions(
        user=[0, 0, 0, 2, 0],
        item=[3, 1, 2, 0, 4],
        ts=[1, 3, 2, 9, 3],
        num_users=3,
        num_items=5,
    )
    order, starts, counts = data.user_sequences(x)
    np.testing.assert_array_equal(counts, [4, 0, 1])
    run = x.item[order][starts[0] : starts[0] + counts[0]]
    np.testing.assert_array_equal(run[::-1] + 1, data.history_matrix(x, 4)[0])


def test_age_buckets_and_history_ages():
    day = 86400
    np.testing.assert_array_equal(
        data.age_buckets([0, day // 2, day, 3 * day, 1000 * day], 4),
        [1, 1, 2, 3, 4],  # same day, <1 day, 1 day, 3 days, capped
    )
    x = _interactions(
        user=[0, 0, 0, 1],
        item=[0, 1, 2, 0],
        ts=[0, 7 * day, 10 * day, 5],
        num_users=3,
        num_items=3,
    )
    ages = data.history_ages(x, 4, 8)
    # user 0 newest first: items 2 (age 0), 1 (3 days), 0 (10 days)
    np.testing.assert_array_equal(ages[0], [1, 3, 4, 0])
    np.testing.assert_array_equal(ages[1], [1, 0, 0, 0])
    np.testing.assert_array_equal(ages[2], [0, 0, 0, 0])
    unordered = dataclasses.replace(x, ordered=False)
    with pytest.raises(ValueError, match="timestamp_col"):
        data.history_ages(unordered, 4, 8)


def test_sequence_batches_windows_every_next_item_once():
    rng = np.random.default_rng(0)
    n = 200
    x = _interactions(
        user=rng.integers(0, 9, n),
        item=rng.integers(0, 40, n),
        ts=rng.permutation(n) * 1000,
        num_users=10,  # user 9 has no interactions
        num_items=40,
    )
    length = 4
    batches = data.SequenceBatches(x, length, batch_size=3 * length, seed=1)
    order, starts, counts = data.user_sequences(x)
    targets = []
    for idx in range(len(batches)):
        b, y = batches[idx]
        assert b["history"].shape == (3, length) and len(y) == 3
        assert set(b) == {"history", "target"}
        targets.append(b["target"])
    # Each window: slot k's target is the item after slot k's input; the
    # input runs back in time from slot 0.
    b, _ = batches[0]
    items = x.item[order] + 1
    seqs = {
        u: list(items[starts[u] : starts[u] + counts[u]]) for u in range(10)
    }
    for hist, tgt in zip(b["history"], b["target"]):
        valid = hist > 0
        np.testing.assert_array_equal(valid, tgt > 0)
        window = list(hist[valid][::-1]) + [tgt[0]]  # oldest .. target
        assert any(
            window == seq[i : i + len(window)]
            for seq in seqs.values()
            for i in range(len(seq))
        )
        np.testing.assert_array_equal(tgt[1:][valid[1:]], hist[:-1][valid[1:]])
    # Every interaction but each user's first is a target once per epoch
    # (the last batch repeats windows from the start of the order).
    n_windows = batches.num_windows
    all_targets = np.concatenate([t.ravel() for t in targets])
    per_batch = batches.windows_per_batch
    first_pass = np.concatenate(targets)[:n_windows]
    assert (first_pass > 0).sum() == n - np.sum(counts > 0)
    assert len(all_targets) == len(batches) * per_batch * length
    with pytest.raises(ValueError, match="two interactions"):
        data.SequenceBatches(_interactions([0, 1], [0, 1]), 4, 8)
    aged = data.SequenceBatches(x, length, 8, time_buckets=6)
    assert aged[0][0]["history_age"].shape == (2, length)
    np.testing.assert_array_equal(
        aged[0][0]["history_age"] > 0, aged[0][0]["history"] > 0
    )


def test_interaction_rows_cover_users_with_items_each_epoch():
    x = _interactions(
        user=[0, 0, 2, 3, 3, 3], item=[1, 2, 0, 1, 1, 3], num_users=5
    )
    rows = data.InteractionRows(x, batch_size=2, seed=0)
    assert len(rows) == 2
    seen = np.concatenate([rows[i][0]["interactions"] for i in range(2)])
    assert seen.shape == (4, 4)  # 3 users with items; last batch filled
    dense = x.to_csr().toarray()
    for row in seen:
        assert any(np.array_equal(row, d) for d in dense[[0, 2, 3]])
    assert {tuple(r) for r in seen} == {tuple(d) for d in dense[[0, 2, 3]]}
