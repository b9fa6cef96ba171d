"""serving/ (service.py and app.py): every endpoint and error through FastAPI's
TestClient, fold-in for unseen users, the two-stage path, FAISS, and the
OpenAPI schema. One tiny two-tower model is trained per module; the other
served models are fast baselines."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from implicit.cpu.als import AlternatingLeastSquares

import config
import data
import recommenders
from runtime import runs as run_files
from serving import app as app_lib
from serving import retrieval
from tests.conftest import tiny_config
from tests.conftest import write_ratings

ITEMS = [100 + 3 * i for i in range(30)]  # raw ids of conftest.write_ratings


def make_production_run(tmp_path, run_name, *sets):
    """Fit `model.name` on the synthetic data and write the run's
    `production/` folder as train_production_model does; returns the
    config. Item titles and genres come from a small movies.csv."""
    movies = tmp_path / "movies.csv"
    if not movies.exists():
        pd.DataFrame(
            {
                "movieId": ITEMS,
                "title": [f"Movie {i} (1999)" for i in ITEMS],
                "genres": [
                    "Drama|Comedy" if i % 2 else "Horror" for i in ITEMS
                ],
            }
        ).to_csv(movies, index=False)
    cfg = tiny_config(
        tmp_path,
        f"data.item_features.path={str(movies)!r}",
        "data.item_features.text_buckets=16",
        "model.use_item_features=False",
        f"output.run_name={run_name!r}",
        *sets,
    )
    dataset = data.load(cfg.data)
    rec = recommenders.build(cfg, dataset)
    rec.fit(dataset.interactions, None)
    folder = cfg.run_dir / "production"
    run_files.write_run_info(cfg, folder, dataset)
    rec.save(folder / "model")
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    return {
        "two_tower": make_production_run(tmp, "tt"),
        "als": make_production_run(
            tmp,
            "als",
            "model.name='als'",
            "model.baseline_params={'factors': 8, 'iterations': 5}",
        ),
        "ease": make_production_run(
            tmp,
            "ease",
            "model.name='ease'",
            "model.baseline_params={'l2': 10.0}",
        ),
    }


@pytest.fixture(scope="module")
def client(runs):
    return TestClient(app_lib.create_app(runs["two_tower"]))


@pytest.fixture(scope="module")
def dataset(runs):
    return data.load(runs["two_tower"].data)


def _app(cfg, *sets):
    return TestClient(app_lib.create_app(config.override(cfg, list(sets))))


def _items(payload):
    return [entry["item"] for entry in payload["items"]]


def _offline_top(cfg, users, k, exclude):
    """What compute_predictions would recommend: the reference ranking."""
    rec = recommenders.load(cfg.run_dir / "production" / "model")
    items, scores = retrieval.top_k_by_score(
        rec, np.asarray(users), exclude, k, progress=False
    )
    return items, scores


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------


def test_health_and_version(client, runs):
    assert client.get("/health").json() == {
        "status": "ok",
        "users": 24,
        "items": 30,
    }
    version = client.get("/version").json()
    assert version["model"] == "two_tower"
    assert version["retrieval"] == "exact"
    assert version["fold_in"] == "history"
    assert version["reranker"] is None
    assert len(version["config_hash"]) == 16
    saved = runs["two_tower"].run_dir / "production" / "config.json"
    assert (
        json.loads(saved.read_text())["keras_backend"]
        == version["trained_backend"]
    )


def test_recommend_matches_offline_ranking_with_metadata(client, runs, dataset):
    seen = dataset.interactions.to_csr()
    expected, scores = _offline_top(runs["two_tower"], [0, 5], 5, seen)
    for row, user in enumerate((0, 5)):
        raw = int(dataset.user_ids[user])
        body = client.get(f"/recommend/{raw}", params={"k": 5}).json()
        assert body["user"] == raw and body["source"] == "retrieval"
        assert _items(body) == [int(dataset.item_ids[i]) for i in expected[row]]
        np.testing.assert_allclose(
            [e["score"] for e in body["items"]], scores[row], atol=1e-5
        )
        first = body["items"][0]
        assert first["metadata"]["title"] == f"Movie {first['item']} (1999)"
        assert set(first["metadata"]) == {"title", "genres"}


def test_exclude_seen(client, dataset):
    x = dataset.interactions
    seen = set(dataset.item_ids[x.item[x.user == 3]])
    raw = int(dataset.user_ids[3])
    kept = _items(client.get(f"/recommend/{raw}?k=30").json())
    assert not seen & set(kept) and len(kept) == 30 - len(seen)
    everything = _items(
        client.get(f"/recommend/{raw}?k=30&exclude_seen=false").json()
    )
    assert sorted(everything) == ITEMS


def test_batch_equals_single_requests(client):
    batch = client.post(
        "/recommend", json={"users": [1, "2", 24], "k": 4}
    ).json()["results"]
    assert [r["user"] for r in batch] == [1, 2, 24]
    for result in batch:
        single = client.get(f"/recommend/{result['user']}?k=4").json()
        assert _items(result) == _items(single)
        assert result["items"][0]["metadata"] == single["items"][0]["metadata"]
        np.testing.assert_allclose(
            [e["score"] for e in result["items"]],
            [e["score"] for e in single["items"]],
            atol=1e-5,  # batched and single-row matmuls round differently
        )


def test_similar_is_cosine_of_item_embeddings(client, runs):
    rec = recommenders.load(runs["two_tower"].run_dir / "production" / "model")
    vectors = rec.item_embeddings()
    cosine = vectors @ vectors[0]
    cosine[0] = -np.inf
    expected = [ITEMS[i] for i in np.argsort(-cosine, kind="stable")[:5]]
    body = client.get(f"/similar/{ITEMS[0]}?k=5").json()
    assert body["item"] == ITEMS[0]
    assert body["metadata"]["title"] == f"Movie {ITEMS[0]} (1999)"
    assert _items(body) == expected


def test_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {
        "/health",
        "/version",
        "/recommend/{user_id}",
        "/recommend",
        "/similar/{item_id}",
    }
    params = schema["paths"]["/recommend/{user_id}"]["get"]["parameters"]
    k = next(p for p in params if p["name"] == "k")["schema"]
    assert (k["minimum"], k["maximum"]) == (1, 100)
    assert "404" in schema["paths"]["/similar/{item_id}"]["get"]["responses"]


# ---------------------------------------------------------------------------
# Fold-in: users unseen in training
# ---------------------------------------------------------------------------


def test_fold_in_history_equals_known_user(client, dataset):
    """A known user's full history, posted as a new user, is encoded by the
    same user tower: the same list as GET /recommend for that user."""
    x = dataset.interactions
    user = 7
    mine = np.flatnonzero(x.user == user)
    history = dataset.item_ids[x.item[mine[np.argsort(x.ts[mine])]]]
    body = client.post(
        "/recommend", json={"items": history.tolist(), "k": 5}
    ).json()["results"][0]
    known = client.get(f"/recommend/{dataset.user_ids[user]}?k=5").json()
    assert body["user"] is None and body["source"] == "fold_in:history"
    assert _items(body) == _items(known)
    np.testing.assert_allclose(
        [e["score"] for e in body["items"]],
        [e["score"] for e in known["items"]],
        atol=1e-4,
    )


def test_fold_in_edge_cases(client):
    long = (ITEMS * 3)[:70]  # longer than history_length, with repeats
    for items in ([ITEMS[4]], [ITEMS[4]] * 3, long):
        r = client.post("/recommend", json={"items": items, "k": 30})
        assert r.status_code == 200, r.text
        got = _items(r.json()["results"][0])
        assert not set(got) & set(items)
    r = client.post(
        "/recommend", json={"items": [ITEMS[4]], "exclude_seen": False}
    )
    assert r.status_code == 200 and len(_items(r.json()["results"][0])) == 10


def test_als_fold_in_is_implicits_user_step(runs):
    """ALS.fold_in solves the same least squares as implicit's own
    recalculate_user with the item factors fixed."""
    als = recommenders.load(runs["als"].run_dir / "production" / "model")
    reference = AlternatingLeastSquares(
        factors=8, regularization=als.regularization, alpha=2.0
    )
    als.alpha = 2.0
    reference.item_factors = als.item_factors
    reference.user_factors = als.user_factors
    items = np.array([1, 4, 9, 4])
    row = np.zeros((1, als.num_items), np.float32)
    row[0, np.unique(items)] = 1.0
    expected = reference.recalculate_user(0, sp.csr_matrix(row))
    np.testing.assert_allclose(
        als.fold_in(items), expected, rtol=1e-4, atol=1e-5
    )


def test_als_served_with_faiss_equals_exact(runs):
    exact = _app(runs["als"])
    faiss = _app(runs["als"], "serve.use_faiss=True")
    assert exact.get("/version").json()["retrieval"] == "exact"
    assert faiss.get("/version").json()["retrieval"] == "faiss:flat"
    assert faiss.get("/version").json()["fold_in"] == "least_squares"
    for path in ("/recommend/5?k=6", f"/similar/{ITEMS[3]}?k=6"):
        a, b = exact.get(path).json(), faiss.get(path).json()
        assert _items(a) == _items(b)
        np.testing.assert_allclose(
            [e["score"] for e in a["items"]],
            [e["score"] for e in b["items"]],
            atol=1e-4,
        )
    body = {"items": ITEMS[:5], "k": 6}
    a = exact.post("/recommend", json=body).json()["results"][0]
    b = faiss.post("/recommend", json=body).json()["results"][0]
    assert a["source"] == "fold_in:least_squares" and _items(a) == _items(b)
    assert not set(_items(a)) & set(ITEMS[:5])
    # A graph index searches all of a 30-item catalog: the same lists.
    hnsw = _app(runs["als"], "serve.use_faiss=True", "serve.faiss_index='hnsw'")
    assert hnsw.get("/version").json()["retrieval"] == "faiss:hnsw"
    assert _items(hnsw.get("/recommend/5?k=6").json()) == _items(
        exact.get("/recommend/5?k=6").json()
    )


def test_cooccurrence_fold_in_and_similar_for_models_without_vectors(
    runs, dataset
):
    client = _app(runs["ease"])
    assert client.get("/version").json()["retrieval"] == "model.score"
    x = dataset.interactions.to_csr().toarray()
    norms = np.sqrt(x.sum(axis=0))
    cosine = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)
    given = [2, 17]
    expected = cosine[:, given].sum(axis=1)
    expected[given] = -np.inf
    body = client.post(
        "/recommend", json={"items": [ITEMS[i] for i in given], "k": 4}
    ).json()["results"][0]
    assert body["source"] == "fold_in:item_cooccurrence"
    np.testing.assert_allclose(
        [e["score"] for e in body["items"]],
        np.sort(expected)[::-1][:4],
        atol=1e-5,
    )
    similar = client.get(f"/similar/{ITEMS[2]}?k=3").json()
    top = np.sort(np.delete(cosine[2], 2))[::-1][:3]
    np.testing.assert_allclose(
        [e["score"] for e in similar["items"]], top, atol=1e-5
    )


# ---------------------------------------------------------------------------
# Two stages: retrieval, then rerank
# ---------------------------------------------------------------------------


def test_rerank_picks_best_reranker_scores_among_candidates(
    runs, client, dataset
):
    reranker_dir = runs["ease"].run_dir / "production" / "model"
    reranked = _app(
        runs["two_tower"],
        f"serve.reranker={str(reranker_dir)!r}",
        "serve.candidates=8",
    )
    users = [0, 9]
    raw = [int(dataset.user_ids[u]) for u in users]
    ease = recommenders.load(reranker_dir).score(np.asarray(users))
    results = reranked.post("/recommend", json={"users": raw, "k": 3}).json()[
        "results"
    ]
    for row, result in enumerate(results):
        assert result["source"] == "retrieval+rerank"
        pool = _items(client.get(f"/recommend/{raw[row]}?k=8").json())
        assert set(_items(result)) <= set(pool)
        pool_scores = ease[row, [ITEMS.index(i) for i in pool]]
        np.testing.assert_allclose(
            [e["score"] for e in result["items"]],
            np.sort(pool_scores)[::-1][:3],
            rtol=1e-5,
        )
    assert reranked.get("/version").json()["reranker"] == str(reranker_dir)


def test_keras_reranker_scores_pairs(runs, client):
    """A Keras reranker (here the two-tower itself) re-scores candidates
    with score_pairs: with M >= k it reproduces the retrieval list."""
    model_dir = runs["two_tower"].run_dir / "production" / "model"
    plain = client
    reranked = _app(
        runs["two_tower"],
        f"serve.reranker={str(model_dir)!r}",
        "serve.candidates=6",
    )
    a = plain.get("/recommend/4?k=5").json()
    b = reranked.get("/recommend/4?k=5").json()
    assert b["source"] == "retrieval+rerank"
    assert _items(a) == _items(b)
    np.testing.assert_allclose(
        [e["score"] for e in a["items"]],
        [e["score"] for e in b["items"]],
        atol=1e-4,
    )


def test_reranker_over_other_ids_is_refused(runs, tmp_path):
    write_ratings(tmp_path / "ratings.csv", num_users=20)
    other = make_production_run(tmp_path, "other", "model.name='most_popular'")
    bad = other.run_dir / "production" / "model"
    with pytest.raises(ValueError, match="other user/item ids"):
        app_lib.create_app(
            config.override(runs["ease"], [f"serve.reranker={str(bad)!r}"])
        )


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_unknown_ids_are_404_with_a_hint(client):
    r = client.get("/recommend/99999")
    assert r.status_code == 404
    assert "99999" in r.json()["detail"] and "items" in r.json()["detail"]
    r = client.post("/recommend", json={"users": [1, "nobody"]})
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    r = client.post("/recommend", json={"items": [ITEMS[0], 7]})
    assert r.status_code == 404 and "[7]" in r.json()["detail"].replace("'", "")
    assert client.get("/similar/7").status_code == 404


@pytest.mark.parametrize(
    "request_args",
    [
        ("get", "/recommend/1?k=0"),
        ("get", "/recommend/1?k=101"),
        ("get", "/recommend/1?k=ten"),
        ("get", "/recommend/1?exclude_seen=maybe"),
        ("get", f"/similar/{ITEMS[0]}?k=-1"),
        ("post", "/recommend", {"content": b"{not json"}),
        ("post", "/recommend", {"json": []}),
        ("post", "/recommend", {"json": {}}),
        ("post", "/recommend", {"json": {"users": [1], "items": [100]}}),
        ("post", "/recommend", {"json": {"users": []}}),
        ("post", "/recommend", {"json": {"users": [1.5]}}),
        ("post", "/recommend", {"json": {"users": [[1]]}}),
        ("post", "/recommend", {"json": {"users": [1], "k": "5"}}),
        ("post", "/recommend", {"json": {"users": [1], "k": 101}}),
        ("post", "/recommend", {"json": {"users": [1], "extra": 1}}),
        ("post", "/recommend", {"json": {"users": list(range(257))}}),
    ],
)
def test_malformed_requests_are_422(client, request_args):
    method, url, *kwargs = request_args
    r = getattr(client, method)(url, **(kwargs[0] if kwargs else {}))
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_internal_errors_hide_details(runs):
    app = app_lib.create_app(runs["ease"])

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    app.state.service.recommend_users = broken
    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/recommend/1")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error"}
    assert "secret" not in r.text


def test_missing_run_says_what_to_run(tmp_path):
    cfg = tiny_config(tmp_path, "output.run_name='never-trained'")
    with pytest.raises(FileNotFoundError, match="train_production_model"):
        app_lib.create_app(cfg)
    with pytest.raises(FileNotFoundError, match="train_production_model"):
        app_lib.create_app(tmp_path / "runs" / "never-trained")


def test_bad_serve_settings(runs):
    with pytest.raises(ValueError, match="use_faiss"):
        app_lib.create_app(
            config.override(runs["ease"], ["serve.use_faiss=True"])
        )
    # Refused when the config is built, before any model is loaded.
    with pytest.raises(ValueError, match="serve.faiss_index"):
        config.override(
            runs["als"],
            ["serve.use_faiss=True", "serve.faiss_index='Nope'"],
        )
    with pytest.raises(ValueError, match="serve.max_k"):
        config.override(runs["ease"], ["serve.max_k=0"])


def test_create_app_from_run_folder(runs):
    client = TestClient(app_lib.create_app(runs["als"].run_dir))
    assert client.get("/version").json()["model"] == "als"
    assert client.get("/recommend/1?k=2").status_code == 200


def test_damaged_production_files_name_themselves(tmp_path):
    cfg = make_production_run(tmp_path, "damaged", "model.name='ease'")
    production = cfg.run_dir / "production"
    arrays = production / "model" / "arrays.npz"
    good = arrays.read_bytes()
    arrays.write_bytes(good[:50])
    with pytest.raises(
        run_files.ArtifactError,
        match=(r"arrays.npz is damaged or unreadable.*train_production_model"),
    ):
        app_lib.create_app(cfg)
    arrays.write_bytes(good)
    (production / "encoders.json").write_text("{")
    with pytest.raises(
        run_files.ArtifactError,
        match=(r"encoders.json is damaged.*train_production_model"),
    ):
        app_lib.create_app(cfg)
