"""Schema-based fuzzing of the HTTP service: schemathesis generates valid
and invalid requests for every operation of the app's OpenAPI schema and
checks that none gets a 5xx and that every response conforms to the
schema (status code, content type, body). The served model is a fast ALS
baseline with its FAISS index: the routes, validation and error handling
are the same for every model, and test_serve.py covers each model's own
recommendation path. Bounded to a few dozen examples per operation."""

import urllib.parse

import hypothesis
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as openapi_checks

import config
import data
from serving import app as app_lib
from tests.serving.test_service import make_production_run


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`(app, dataset)` for an ALS run served through FAISS."""
    cfg = make_production_run(
        tmp_path_factory.mktemp("fuzz"),
        "als",
        "model.name='als'",
        "model.baseline_params={'factors': 8, 'iterations': 3}",
    )
    app = app_lib.create_app(config.override(cfg, ["serve.use_faiss=True"]))
    return app, data.load(cfg.data)


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_asgi("/openapi.json", served[0])


# schemathesis' own pytest integration (`from_fixture`) does not run on
# pytest 9, so its per-operation strategies are driven by hypothesis here.
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors_and_schema_conformance(api_schema, mode):
    checks = [
        st_checks.not_a_server_error,
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
    ]
    strategy = api_schema.as_strategy(schemathesis.GenerationMode(mode))
    seen = set()

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def fuzz(case):
        response = case.call()
        seen.add((case.method, case.path, response.status_code))
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> "
            f"{response.status_code}: {response.text[:300]}"
        )
        case.validate_response(response, checks=checks)

    fuzz()
    operations = {(method, path) for method, path, _ in seen}
    # Negative mode can only corrupt operations that take inputs.
    assert len(operations) == (5 if mode == "positive" else 3), operations


def test_requests_near_valid_ids_keep_their_promises(served):
    """Hypothesis requests mixing real and junk ids, k in and out of range:
    never a 5xx, and every 200 keeps the contract (at most k unique items,
    scores non-increasing, no seen or given item when exclude_seen)."""
    app, dataset = served
    client = TestClient(app)
    users = [int(u) for u in dataset.user_ids]
    items = [int(i) for i in dataset.item_ids]
    seen = dataset.interactions.to_csr()
    # Mostly valid requests, so that the recommendation paths run too.
    junk = st.one_of(st.integers(-3, 10**6), st.text(min_size=1, max_size=6))
    user_ids = st.one_of(*[st.sampled_from(users)] * 3, junk)
    item_ids = st.one_of(*[st.sampled_from(items)] * 3, junk)
    ks = st.one_of(*[st.integers(1, 100)] * 3, st.integers(-2, 300))

    def check(result, k, excluded):
        got = [entry["item"] for entry in result["items"]]
        scores = [entry["score"] for entry in result["items"]]
        assert len(got) <= k and len(set(got)) == len(got)
        assert np.all(np.diff(scores) <= 1e-6)
        assert not set(got) & set(excluded)

    @hypothesis.given(draw=st.data())
    @hypothesis.settings(
        max_examples=80,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def fuzz(draw):
        route = draw.draw(st.sampled_from(["user", "users", "items", "sim"]))
        k = draw.draw(ks)
        exclude = draw.draw(st.booleans())
        if route in ("user", "sim"):
            raw = draw.draw(user_ids if route == "user" else item_ids)
            path = "recommend" if route == "user" else "similar"
            response = client.get(
                f"/{path}/{urllib.parse.quote(str(raw), safe='')}",
                params={"k": k, "exclude_seen": exclude},
            )
            body = response.json()
            results = [body] if response.status_code == 200 else []
        else:
            valid = st.sampled_from(users if route == "users" else items)
            mixed = user_ids if route == "users" else item_ids
            ids = draw.draw(
                st.one_of(
                    *[st.lists(valid, min_size=1, max_size=8)] * 3,
                    st.lists(mixed, min_size=1, max_size=8),
                )
            )
            response = client.post(
                "/recommend",
                json={route: ids, "k": k, "exclude_seen": exclude},
            )
            results = (
                response.json()["results"]
                if response.status_code == 200
                else []
            )
        assert response.status_code in (200, 404, 422), response.text
        for result in results:
            excluded = []
            if route == "sim":
                excluded = [result["item"]]
            elif exclude and route == "items":
                excluded = ids
            elif exclude:
                user = users.index(result["user"])
                excluded = [items[i] for i in seen[user].indices]
            check(result, k, excluded)

    fuzz()


def _raw_post(client, body, headers=None):
    return client.post(
        "/recommend",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
    )


def test_bodies_that_are_not_finite_json_get_a_422(served):
    client = TestClient(served[0])
    user = int(served[1].user_ids[0])
    for body in (
        f'{{"users": [{user}], "k": NaN}}',
        f'{{"users": [{user}], "k": Infinity}}',
        f'{{"users": [{user}], "k": -Infinity}}',
        f'{{"users": [{user}, 1e400], "k": 5}}',
        f'{{"users": [{user}], "k": 5, "extra": [1, NaN]}}',
        '{"users": [1, 2',
        "not json at all",
        b'{"users": [\xff]}',
    ):
        response = _raw_post(client, body)
        assert response.status_code == 422, (body, response.text)
        assert len(response.content) < 400
        assert response.json()["detail"]
    # The connection is usable after each of them.
    assert _raw_post(client, f'{{"users": [{user}]}}').status_code == 200


@hypothesis.given(
    junk=st.one_of(
        st.text(max_size=40),
        st.binary(max_size=40),
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "[", "{"]),
    )
)
@hypothesis.settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_fuzzed_bodies_never_reach_a_5xx(served, junk):
    client = TestClient(served[0])
    for body in (
        junk,
        f'{{"users": [{junk!r}], "k": 3}}',
        f'{{"items": [1], "k": {junk}}}',
    ):
        response = _raw_post(client, body)
        assert response.status_code in (200, 404, 422), response.text


def test_errors_echo_only_a_short_prefix(served):
    client = TestClient(served[0])
    huge_list = {"users": list(range(10_000)), "k": 5}
    response = client.post("/recommend", json=huge_list)
    assert response.status_code == 422 and len(response.content) < 1000
    response = client.get(f"/recommend/{'x' * 20_000}")
    assert response.status_code == 404 and len(response.content) < 500
    assert "xxx..." in response.json()["detail"]
    response = client.post(
        "/recommend", json={"items": ["x" * 100_000], "k": 3}
    )
    assert response.status_code == 404 and len(response.content) < 500


def test_body_size_limit(served, tmp_path):
    cfg = make_production_run(tmp_path, "limit", "model.name='most_popular'")
    client = TestClient(
        app_lib.create_app(config.override(cfg, ["serve.max_body_bytes=2048"]))
    )
    small = {"users": [1], "k": 2}
    assert client.post("/recommend", json=small).status_code == 200
    big = {"users": [1] * 300, "k": 2, "pad": "y" * 3000}
    response = client.post("/recommend", json=big)
    assert response.status_code == 413
    assert "serve.max_body_bytes" in response.json()["detail"]


def test_api_key_when_configured(served, tmp_path, monkeypatch):
    cfg = make_production_run(tmp_path, "key", "model.name='most_popular'")
    client = TestClient(
        app_lib.create_app(config.override(cfg, ["serve.api_key='s3cret'"]))
    )
    assert client.get("/health").status_code == 200  # open
    assert client.get("/recommend/1").status_code == 401
    wrong = client.get("/recommend/1", headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    right = client.get("/recommend/1", headers={"X-API-Key": "s3cret"})
    assert right.status_code == 200
    # The environment variable works too; without either, no key at all.
    monkeypatch.setenv(app_lib.API_KEY_ENV, "from-env")
    client = TestClient(app_lib.create_app(cfg))
    assert client.get("/recommend/1").status_code == 401
    ok = client.get("/recommend/1", headers={"X-API-Key": "from-env"})
    assert ok.status_code == 200
    monkeypatch.delenv(app_lib.API_KEY_ENV)
    assert (
        TestClient(app_lib.create_app(cfg)).get("/recommend/1").status_code
        == 200
    )


def test_rate_limit_per_client(served, tmp_path):
    cfg = make_production_run(tmp_path, "rate", "model.name='most_popular'")
    client = TestClient(
        app_lib.create_app(
            config.override(cfg, ["serve.rate_limit=1.0", "serve.rate_burst=3"])
        )
    )
    codes = [client.get("/recommend/1").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = client.get("/recommend/1")
    assert int(limited.headers["retry-after"]) >= 1
    # The limit is off by default.
    free = TestClient(app_lib.create_app(cfg))
    assert {free.get("/recommend/1").status_code for _ in range(30)} == {200}
