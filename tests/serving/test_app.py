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
