"""content/personas/generate.py: data-driven personas (batched k-means,
distinctive terms, evidence) and the JSON-lines reader."""

import dataclasses

import numpy as np
import pytest

import config
import data
from content.personas import corpus as persona_corpus
from content.personas import generate as personas
from tests.content.personas.fixtures import SHARED_ITEM
from tests.content.personas.fixtures import persona_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona-data")
    cfg = persona_config(folder)
    dataset = data.load(cfg.data)
    corpus = persona_corpus.build_corpus(dataset, cfg.data, cfg.persona)
    return cfg, dataset, corpus


def test_generate_finds_the_two_audiences(tiny):
    cfg, dataset, corpus = tiny
    source = personas.make_source(cfg.persona, corpus, dataset, cfg.seed)
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
        expected = (
            {"scary", "horror"} if groups[-1] == 0 else {"funny", "comedy"}
        )
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
    source = personas.make_source(cfg.persona, corpus, dataset, cfg.seed)
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
    seg = np.concatenate([np.full(len(lab), s) for s, lab in enumerate(labels)])
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
    assign = personas._batched_kmeans(
        lonely, np.zeros(7, np.int64), np.array([2]), 1, 2, 10, 2, 0
    )
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
    # Refused when the config is built, and by the library for code that
    # builds a PersonaConfig by hand.
    with pytest.raises(ValueError, match="persona.generator"):
        config.override(cfg, ["persona.generator=gpt"])
    bad = dataclasses.replace(cfg.persona, generator="gpt")
    with pytest.raises(ValueError, match="persona.generator"):
        personas.make_source(bad, corpus, dataset, cfg.seed)
