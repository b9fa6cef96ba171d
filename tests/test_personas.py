"""Tests for personas.py: the text corpus, data-driven persona generation
(batched k-means, distinctive terms, evidence), the JSON-lines output and
reader, and the LLM generator against a fake local OpenAI-compatible
server (never a real network)."""

import http.server
import json
import threading

import numpy as np
import pytest
from persona_fixtures import SHARED_ITEM
from persona_fixtures import persona_config

import config
import data
import personas

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona-data")
    cfg = persona_config(folder)
    dataset = data.load(cfg.data)
    return cfg, dataset, personas.build_corpus(cfg, dataset)


class FakeLLM:
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 (port 0)
    that answers from a script: each entry is `(status, content)`; the
    last entry repeats. Records every request body."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(
                    int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                status, content = (fake.script.pop(0) if len(fake.script) > 1
                                   else fake.script[0])
                if callable(content):
                    content = content(body)
                payload = (
                    {"choices": [{"message": {"role": "assistant",
                                              "content": content}}]}
                    if status == 200 else {"error": "boom"}
                )
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


GOOD = json.dumps({"personas": [
    {"name": "Horror buff", "description": "Loves dark, scary films."},
    {"name": "Comedy fan", "description": "Wants light, funny evenings."},
]})


def client_for(server, tmp_path, **kwargs):
    return personas.LLMClient(
        server.endpoint, "fake-model", api_key="secret", timeout=5,
        retries=2, requests_per_minute=60000, cache_dir=tmp_path / "cache",
        backoff=0.01, **kwargs,
    )


# ---------------------------------------------------------------------------
# Corpus and generation
# ---------------------------------------------------------------------------


def test_corpus_aligns_names_terms_and_reviews(tiny):
    _, dataset, corpus = tiny
    assert corpus.item_names[SHARED_ITEM] == "Film 30"
    vocab = set(corpus.vocabulary)
    assert {"horror", "comedy", "scary", "funny", "gory"} <= vocab
    # A tag on one film only is not in two documents: dropped.
    assert "drama" not in vocab
    assert len(corpus.review_keys) == len(dataset.interactions)
    rows, found = corpus.review_rows(dataset.interactions)
    assert found.all()
    group = np.array([int(u[1:]) % 2 for u in dataset.user_ids])
    horror = group[dataset.interactions.user] == 0
    assert all("scary" in t for t in corpus.review_text[rows[horror]])
    assert corpus.has_ratings


def test_missing_text_column_names_file_and_columns(tiny, tmp_path):
    cfg, dataset, _ = tiny
    bad = config.override(cfg, ["persona.interaction_text=('body',)"])
    with pytest.raises(ValueError, match=r"reviews.jsonl.*`body`.*review"):
        personas.build_corpus(bad, dataset)


def test_generate_finds_the_two_audiences(tiny):
    cfg, dataset, corpus = tiny
    source = personas.make_source(cfg, dataset, corpus)
    result = source.generate(dataset.interactions)
    mine = np.flatnonzero(result.item == SHARED_ITEM)
    assert len(mine) == 2
    assert sorted(result.size[mine]) == [12, 12]
    assert result.share[mine] == pytest.approx([0.5, 0.5])
    groups = []
    for p in mine:
        terms = {t for t, _ in result.terms[p]}
        users = {dataset.user_ids[u] for u in result.example_users[p]}
        group = {int(u[1:]) % 2 for u in users}
        assert len(group) == 1, users  # members of one audience only
        groups.append(group.pop())
        expected = {"scary", "horror"} if groups[-1] == 0 else {"funny",
                                                                "comedy"}
        assert expected <= terms, terms
        # Co-liked films come from the same half of the catalog.
        assert all(i // 15 == groups[-1] for i in result.example_items[p])
        assert "people into" in result.text[p]
        assert result.source[p] == "data:kmeans"
    assert sorted(groups) == [0, 1]
    # Every item has at least one persona and at most K.
    counts = np.bincount(result.item, minlength=dataset.interactions.num_items)
    assert counts.min() >= 1 and counts.max() <= 2


def test_generate_is_deterministic_and_cold_items_get_text(tiny):
    cfg, dataset, corpus = tiny
    source = personas.make_source(cfg, dataset, corpus)
    x = dataset.interactions
    first = source.generate(x).records(dataset)
    assert source.generate(x).records(dataset) == first
    # Without the shared film's interactions it has no audience: one
    # persona from its own text.
    without = x.select(x.item != SHARED_ITEM)
    result = source.generate(without)
    mine = np.flatnonzero(result.item == SHARED_ITEM)
    assert len(mine) == 1
    assert result.size[mine[0]] == 0
    assert result.source[mine[0]] == "data:item-text"


def test_batched_kmeans_separates_blobs_per_segment():
    rng = np.random.default_rng(0)
    blobs = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], np.float32)
    # Segment 0: two blobs; segment 1: three blobs; segment 2: one point.
    labels = [np.repeat([0, 1], 6), np.repeat([0, 1, 2], 5), np.array([2])]
    seg = np.concatenate([np.full(len(lab), s)
                          for s, lab in enumerate(labels)])
    truth = np.concatenate(labels)
    points = blobs[truth] + 0.05 * rng.standard_normal((len(truth), 3))
    points = points / np.linalg.norm(points, axis=1, keepdims=True)
    assign = personas._batched_kmeans(
        points.astype(np.float32), seg, np.array([2, 3, 1]), 3, 3, 10, 1, 0
    )
    for s in range(3):
        got, want = assign[seg == s], truth[seg == s]
        # Same partition up to relabelling.
        assert len(set(zip(got, want))) == len(set(want))
    assert (assign[seg == 2] == 0).all()
    # Groups below min_size are dissolved into the others.
    lonely = np.concatenate([points[:6], blobs[1:2]]).astype(np.float32)
    assign = personas._batched_kmeans(lonely, np.zeros(7, np.int64),
                                      np.array([2]), 1, 2, 10, 2, 0)
    assert len(set(assign)) == 1


def test_segment_argmax_and_top_per_row():
    values = np.array([0.1, 0.9, 0.9, -np.inf, 0.3, 0.2])
    seg = np.array([0, 0, 0, 1, 2, 2])
    assert personas._segment_argmax(values, seg, 4).tolist() == [1, -1, 4, -1]
    import scipy.sparse as sp

    m = sp.csr_matrix(np.array([[0.0, 2, 1, 2], [3, 0, 0, 0]]))
    rows, cols, vals = personas._top_per_row(m, 2)
    assert rows.tolist() == [0, 0, 1]
    assert cols.tolist() == [1, 3, 0]
    assert vals.tolist() == [2, 2, 3]


# ---------------------------------------------------------------------------
# The action and the JSON lines
# ---------------------------------------------------------------------------


def test_build_personas_writes_jsonl_with_evidence(tiny):
    cfg, dataset, _ = tiny
    summary = personas.build_personas(cfg)
    folder = cfg.run_dir / "personas"
    lines = (folder / "personas.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == summary["personas"]
    assert not list(folder.parent.glob(".personas.tmp-*"))
    shared = [r for r in records if r["item"] == SHARED_ITEM]
    assert [r["persona"] for r in shared] == [0, 1]
    evidence = shared[0]["evidence"]
    assert evidence["users"] == 12 and len(evidence["terms"]) > 0
    assert set(evidence) >= {"share", "mean_rating", "usual_rating",
                             "example_users", "example_items"}
    assert json.loads((folder / "summary.json").read_text())["on"] == "all"
    # Read back, the personas keep their items and texts.
    loaded = personas.load_personas(folder / "personas.jsonl", dataset)
    assert len(loaded) == len(records)
    items, texts = loaded.pairs()
    assert texts[items == SHARED_ITEM].tolist() == [r["text"] for r in shared]
    # From the training split only, the held-out interactions are unused.
    summary = personas.build_personas(cfg, on="train")
    assert summary["on"] == "train"
    assert summary["interactions"] < len(dataset.interactions)


def test_load_personas_rejects_bad_lines(tiny, tmp_path):
    _, dataset, _ = tiny
    path = tmp_path / "p.jsonl"
    path.write_text('{"item": 1, "text": "fans"}\n{"item": 2}\n')
    with pytest.raises(ValueError, match=r"line 2 .*`item` and `text`"):
        personas.load_personas(path, dataset)
    path.write_text('{"item": 1, "text": "fans"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        personas.load_personas(path, dataset)
    with pytest.raises(FileNotFoundError, match="build_personas"):
        personas.load_personas(tmp_path / "missing.jsonl", dataset)


def test_unknown_generator_is_refused(tiny):
    cfg, dataset, corpus = tiny
    bad = config.override(cfg, ["persona.generator=gpt"])
    with pytest.raises(ValueError, match="persona.generator"):
        personas.make_source(bad, dataset, corpus)


# ---------------------------------------------------------------------------
# LLM generator against a fake local server
# ---------------------------------------------------------------------------


def test_llm_success_is_cached_and_resumed(tmp_path):
    with FakeLLM([(200, GOOD)]) as server:
        client = client_for(server, tmp_path)
        answer = client.complete_json("sys", "item 1",
                                      personas.persona_validator(2))
        assert answer["personas"][0]["name"] == "Horror buff"
        path, body = server.requests[0]
        assert path == "/v1/chat/completions"
        assert body["model"] == "fake-model"
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert len(list((tmp_path / "cache").glob("*.json"))) == 1
        # A new client (a restarted build) answers from the cache.
        again = client_for(server, tmp_path)
        assert again.complete_json("sys", "item 1") == answer
        assert again.requests == 0 and again.cache_hits == 1
        assert len(server.requests) == 1


def test_llm_retries_a_server_error(tmp_path):
    with FakeLLM([(500, ""), (200, GOOD)]) as server:
        client = client_for(server, tmp_path)
        answer = client.complete_json("sys", "item 2")
        assert len(answer["personas"]) == 2
        assert client.requests == 2 and len(server.requests) == 2


def test_llm_gives_up_after_retries(tmp_path):
    with FakeLLM([(503, "")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(personas.LLMError, match="failed 3 times.*503"):
            client.complete_json("sys", "item 3")
        assert len(server.requests) == 3
    with FakeLLM([(400, "")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(personas.LLMError, match="HTTP 400"):
            client.complete_json("sys", "item 4")
        assert len(server.requests) == 1  # not retried


def test_llm_malformed_answer_is_a_clear_error_and_not_cached(tmp_path):
    with FakeLLM([(200, "Sure! Here are personas: horror fans")]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(personas.LLMResponseError,
                           match="not valid JSON.*Sure! Here"):
            client.complete_json("sys", "item 5")
        assert not list((tmp_path / "cache").glob("*.json"))
    wrong = json.dumps({"personas": [{"name": "x", "description": ""}]})
    with FakeLLM([(200, wrong)]) as server:
        client = client_for(server, tmp_path)
        with pytest.raises(personas.LLMResponseError,
                           match=r"personas\[0\].description"):
            client.complete_json("sys", "item 6",
                                 personas.persona_validator(2))
    fenced = "```json\n" + GOOD + "\n```"
    assert personas.parse_json_object(fenced)["personas"]
    with pytest.raises(personas.LLMResponseError, match="JSON object"):
        personas.parse_json_object("[1, 2]")


def test_build_personas_with_llm_falls_back_per_item(tiny, tmp_path):
    """Answers for most items; one malformed answer keeps that item's data
    personas; a rerun resends only that request."""
    cfg, dataset, _ = tiny

    def answer(body):
        prompt = body["messages"][1]["content"]
        return "oops, no JSON" if "Item: Film 30\n" in prompt else GOOD

    with FakeLLM([(200, answer)]) as server:
        llm_cfg = config.override(cfg, [
            "persona.generator=llm",
            f"persona.llm_endpoint={server.endpoint!r}",
            "persona.llm_model=fake-model",
            "persona.llm_requests_per_minute=60000.0",
            "persona.llm_max_items=3",
            f"output.run_name={'llm'!r}",
        ])
        summary = personas.build_personas(llm_cfg)
        assert summary["llm"]["items_asked"] == 3
        assert summary["llm"]["items_failed"] == 1
        assert "Film 30" in summary["llm"]["first_failures"][0]
        records = [
            json.loads(line) for line in
            (llm_cfg.run_dir / "personas" / "personas.jsonl").read_text()
            .splitlines()
        ]
        by_item = {}
        for r in records:
            by_item.setdefault(r["item"], []).append(r)
        shared = [r["source"] for r in by_item[SHARED_ITEM]]
        assert shared == ["data:kmeans"] * 2
        llm_items = [i for i, rs in by_item.items()
                     if rs[0]["source"] == "llm:fake-model"]
        assert len(llm_items) == 2
        assert by_item[llm_items[0]][0]["text"].startswith("Horror buff: ")
        # The prompt carries the item's evidence.
        prompt = server.requests[0][1]["messages"][1]["content"]
        assert "Audience groups" in prompt and "users)" in prompt
        sent = len(server.requests)
        personas.build_personas(llm_cfg)
        assert len(server.requests) == sent + 1  # only the failed item
