"""Tiny review data with two clearly different audiences, for the persona
tests: 24 users in two groups (horror fans who write "scary"/"dark", comedy
fans who write "funny"/"light"), 30 genre-labelled films split between the
groups, and one film (index 30, "Film 30") that everybody watches, so its
audience has two obvious personas."""

import json

import numpy as np
import pandas as pd

import config

NUM_USERS = 24
SHARED_ITEM = 30


def write_persona_data(folder, seed=0):
    """Write reviews.jsonl, items.csv and tags.csv into `folder`; return
    the list of `--set` overrides that point a config at them."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(NUM_USERS):
        group = u % 2
        items = list(rng.choice(15, 8, replace=False) + 15 * group)
        items.append(SHARED_ITEM)
        for j, item in enumerate(items):
            words = ("scary", "dark") if group == 0 else ("funny", "light")
            rows.append(
                {
                    "user": f"u{u}",
                    "item": int(item),
                    "stars": int(rng.integers(3, 6)),
                    "time": 1000 + 10 * j + u,
                    "review": f"so {words[0]} and {words[1]} film "
                    f"{int(rng.integers(100))}",
                }
            )
    with open(folder / "reviews.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    pd.DataFrame(
        {
            "id": range(31),
            "title": [f"Film {i}" for i in range(31)],
            "genres": ["Horror|Thriller"] * 15
            + ["Comedy|Romance"] * 15
            + ["Drama"],
        }
    ).to_csv(folder / "items.csv", index=False)
    pd.DataFrame(
        {
            "uid": ["u0", "u1", "u2", "u3"],
            "iid": [0, 15, 1, 16],
            "tag": ["gory", "witty", "gory", "witty"],
        }
    ).to_csv(folder / "tags.csv", index=False)
    return [
        f"data.path={str(folder / 'reviews.jsonl')!r}",
        "data.user_col=user",
        "data.item_col=item",
        "data.rating_col=stars",
        "data.timestamp_col=time",
        f"data.item_features.path={str(folder / 'items.csv')!r}",
        "data.item_features.id_col=id",
        "data.item_features.text=('title',)",
        "data.item_features.multivalued=('genres',)",
        f"persona.tags_path={str(folder / 'tags.csv')!r}",
        "persona.tags_item_col=iid",
        "persona.interaction_text=('review',)",
        f"output.runs_dir={str(folder / 'runs')!r}",
    ]


def persona_config(folder, *extra):
    """`config.tiny()` on the tiny review data with a tiny persona
    reranker (most-popular first stage, 2 epochs)."""
    import keras

    sets = (
        write_persona_data(folder)
        + [
            "model.name=persona",
            "persona.num_personas=2",
            "persona.first_stage=most_popular",
            "persona.epochs=2",
            "persona.batch_size=8",
            "persona.embedding_dim=8",
            "persona.hidden_dims=(8,)",
            "persona.text_length=8",
            "persona.vocab_buckets=64",
            "persona.profile_length=4",
            "persona.candidates=10",
            "eval.num_bootstrap=20",
            # XLA compile time dominates fits this small on TensorFlow.
            f"train.jit_compile={keras.backend.backend() == 'jax'}",
        ]
        + list(extra)
    )
    return config.override(config.tiny(), sets)
