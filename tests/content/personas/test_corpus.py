"""content/personas/corpus.py: item names, metadata terms and review text
aligned to the dataset's indices."""

import numpy as np
import pytest

import config
import data
from content.personas import corpus as persona_corpus
from tests.content.personas.fixtures import SHARED_ITEM
from tests.content.personas.fixtures import persona_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona-data")
    cfg = persona_config(folder)
    dataset = data.load(cfg.data)
    corpus = persona_corpus.build_corpus(dataset, cfg.data, cfg.persona)
    return cfg, dataset, corpus


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
        persona_corpus.build_corpus(dataset, bad.data, bad.persona)
