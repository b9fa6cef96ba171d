"""Tests for eval/protocols.py: P1 / P2 loading and the masking rules."""

import numpy as np
import pytest

import config
from data import Interactions
from eval import protocols


def _write_p2(folder, train, valid, test):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in zip(protocols.P2_FILES, (train, valid, test)):
        np.save(folder / name, np.asarray(pairs, np.int64))


def _tiny_split(refit):
    def part(users, items, start):
        return Interactions(
            user=users,
            item=items,
            value=np.ones(len(users)),
            ts=np.arange(start, start + len(users)),
            num_users=3,
            num_items=4,
        )

    return protocols.Split(
        train=part([0, 1, 2], [0, 1, 2], 0),
        valid=part([0, 1], [3, 0], 3),
        test=part([0, 2], [1, 3], 5),
        name="tiny",
        description="tiny",
        refit=refit,
    )


def test_load_p2_from_a_folder(tmp_path):
    _write_p2(
        tmp_path,
        train=[[0, 3], [2, 1], [0, 0]],
        valid=[[1, 2]],
        test=[[2, 4], [0, 2]],
    )
    split = protocols.load_p2(tmp_path)
    assert split.name == "P2" and split.refit is False
    assert split.sizes() == {
        "num_users": 3,
        "num_items": 5,
        "train": 3,
        "valid": 1,
        "test": 2,
    }
    np.testing.assert_array_equal(split.train.item, [3, 1, 0])
    # Row order is kept, across the three files.
    np.testing.assert_array_equal(split.train.ts, [0, 1, 2])
    np.testing.assert_array_equal(split.valid.ts, [3])
    np.testing.assert_array_equal(split.test.ts, [4, 5])
    np.testing.assert_array_equal(split.test.value, [1.0, 1.0])


def test_load_p2_missing_raises_a_helpful_error(tmp_path):
    with pytest.raises(protocols.DatasetUnavailable) as info:
        protocols.load_p2(tmp_path / "absent")
    message = str(info.value)
    assert "train_list.npy" in message and "RECSYS_SHARED" in message
    assert str(tmp_path / "absent") in message
    assert isinstance(info.value, FileNotFoundError)


def test_load_p2_rejects_bad_arrays(tmp_path):
    _write_p2(tmp_path, [[0, 1, 2]], [[0, 1, 2]], [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        protocols.load_p2(tmp_path)


def test_shared_folder_from_the_environment(tmp_path, monkeypatch):
    _write_p2(tmp_path / protocols.P2_RELATIVE, [[0, 0]], [[0, 1]], [[1, 1]])
    monkeypatch.setenv(config.SHARED_ENV, str(tmp_path))
    assert protocols.p2_folder() == tmp_path / protocols.P2_RELATIVE
    assert protocols.load_p2().sizes()["num_users"] == 2


def test_default_folder_is_beside_the_repository(monkeypatch):
    monkeypatch.delenv(config.SHARED_ENV, raising=False)
    folder = protocols.p2_folder()
    repo = protocols.pathlib.Path(protocols.__file__).resolve().parents[1]
    assert folder == repo.parent / "shared" / protocols.P2_RELATIVE


def test_real_p2_sizes():
    try:
        split = protocols.load_p2()
    except protocols.DatasetUnavailable as e:
        pytest.skip(str(e))
    assert split.sizes() == {
        "num_users": 5949,
        "num_items": 2810,
        "train": 403277,
        "valid": 110722,
        "test": 57532,
    }


def test_real_p1_sizes():
    split = protocols.load_p1()
    assert split.name == "P1" and split.refit is True
    assert split.sizes() == {
        "num_users": 610,
        "num_items": 9724,
        "train": 70061,
        "valid": 10358,
        "test": 20417,
    }
    assert split.dataset is not None
    assert len(split.dataset.item_ids) == 9724


def test_rules_refit():
    split = _tiny_split(refit=True)
    history = protocols.history_for_test(split)
    assert len(history) == 5
    exclude = protocols.exclude_for_test(split).toarray()
    np.testing.assert_array_equal(
        exclude, [[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0]]
    )
    np.testing.assert_array_equal(
        protocols.exclude_for_valid(split).toarray(),
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
    )


def test_rules_no_refit():
    split = _tiny_split(refit=False)
    # History stays train, but train + valid are still masked at test.
    assert len(protocols.history_for_test(split)) == 3
    assert protocols.exclude_for_test(split).nnz == 5


def test_load_protocol_names(tmp_path):
    _write_p2(tmp_path, [[0, 0]], [[0, 1]], [[1, 1]])
    assert protocols.load_protocol("P2", tmp_path).name == "P2"
    with pytest.raises(ValueError, match="Received: 'p4'"):
        protocols.load_protocol("p4")


def test_real_p3_chronological_and_refit(tmp_path):
    try:
        split = protocols.load_p3()
    except protocols.DatasetUnavailable as e:
        pytest.skip(str(e))
    assert split.name == "P3" and split.refit is True
    sizes = split.sizes()
    total = sizes["train"] + sizes["valid"] + sizes["test"]
    assert total == len(split.dataset.interactions)
    assert 0.17 < sizes["test"] / total < 0.25
    # Every user's test items come no earlier than their train items.
    train, test = split.train, split.test
    last_train = np.full(train.num_users, np.iinfo(np.int64).min)
    np.maximum.at(last_train, train.user, train.ts)
    assert np.all(test.ts >= last_train[test.user])
    with pytest.raises(protocols.DatasetUnavailable, match="P3 data"):
        protocols.load_p3(tmp_path / "nope.json")
