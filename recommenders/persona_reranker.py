"""The persona reranker: a first-stage recommender's top-M candidates
reordered by how well their item personas match the user's recent history.

`PersonaReranker` is the `Recommender` (fit / score / save / load /
refit_params) around `models.persona.PersonaMatcher`; `PersonaBatches` are
its training batches, vectorised and depending only on
`(seed, epoch, index)`. Personas and interaction texts come from a persona
source (`content.personas.generate.PersonaSource`).
"""

import json
import logging
import pathlib
import time

import keras
import numpy as np
import scipy.sparse as sp

from models.persona import AGGREGATIONS
from models.persona import ENCODERS
from models.persona import PersonaMatcher
from models.persona import aggregate_scores
from models.persona import hash_tokens
from models.persona import previous_rows
from models.persona import recency_weights
from runtime import runs

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Training batches
# ---------------------------------------------------------------------------


class PersonaBatches(keras.utils.PyDataset):
    """(profile, target item personas) batches for `PersonaMatcher.fit`.

    Texts are stored once in tables (token rows or vectors) with one
    all-padding row at the end; examples hold only row numbers, so a batch
    is a few vectorised gathers. Batch `idx` of epoch `e` depends only on
    `(seed, e, idx)`; every batch has the same size (the last one is filled
    from the start of the epoch's order) so XLA compiles one shape.

    Args:
        profile_rows: `(n, N)` int rows of `text_table` (-1 = padding),
            newest first.
        target_item: `(n,)` int item of each example.
        item_personas: `(num_items, K)` int rows of `persona_table` (-1 =
            no persona in that slot).
        text_table: `(T, L)` int32 tokens or `(T, r)` float32 vectors.
        persona_table: the same for persona texts.
        weights: `(N,)` recency weights of the profile slots.
        batch_size: int >= 2.
        seed: int.
        shuffle: bool.
    """

    def __init__(
        self,
        profile_rows,
        target_item,
        item_personas,
        text_table,
        persona_table,
        weights,
        batch_size,
        seed=0,
        shuffle=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(target_item) == 0:
            raise ValueError("Cannot make persona batches from 0 examples.")
        if batch_size < 2:
            raise ValueError(
                "`batch_size` must be >= 2 (in-batch negatives). Received: "
                f"{batch_size}"
            )
        self.profile_rows = np.asarray(profile_rows, np.int64)
        self.target_item = np.asarray(target_item, np.int32)
        self.item_personas = np.asarray(item_personas, np.int64)
        self.text_table = _with_padding_row(text_table)
        self.persona_table = _with_padding_row(persona_table)
        self.weights = np.asarray(weights, np.float32)
        self.batch_size = min(batch_size, len(self.target_item))
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self):
        return -(-len(self.target_item) // self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        n = len(self.target_item)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        rows = order[idx * self.batch_size : (idx + 1) * self.batch_size]
        if len(rows) < self.batch_size:
            rows = np.concatenate([rows, order[: self.batch_size - len(rows)]])
        prof = self.profile_rows[rows]  # (b, N)
        item = self.target_item[rows]
        pers = self.item_personas[item]  # (b, K)
        batch = {
            "profile": self.text_table[prof],  # -1 hits the padding row
            "profile_weights": np.where(prof >= 0, self.weights, 0.0).astype(
                np.float32
            ),
            "personas": self.persona_table[pers],
            "persona_mask": (pers >= 0).astype(np.float32),
            "item": item,
        }
        return batch, np.ones(len(rows), np.float32)


# ---------------------------------------------------------------------------
# The reranking recommender
# ---------------------------------------------------------------------------


class PersonaReranker:
    """Rerank a first-stage recommender's top-M candidates by persona match.

    `score(u)` asks the first stage for every item, takes the `candidates`
    best items that `u` has not interacted with, and reorders them by
    `(1 - blend_weight) * z(first stage) + blend_weight * z(persona)`, with
    both scores standardised over the user's candidates; the candidates are
    lifted above every other item, which keep the first stage's order. With
    `blend_weight=0` the ranking is the first stage's.

    `fit(train, valid)` fits the first stage, then trains the
    `PersonaMatcher`: the latest `target_fraction` of each user's
    interactions are targets, their profile is the N interactions before
    each, and the personas they are matched with are built from the other
    interactions only, so a user never sees personas shaped by their own
    target interaction (as at test time). With `valid`, the validation
    loss (profiles from `train`, personas of `train`) drives early
    stopping; the serving personas are built from all of `train`.

    Args:
        first_stage: an unfitted recommender (fit / score / save).
        persona_source: builds personas and texts from interactions:
            `personas(interactions) -> (item, text)` arrays and
            `interaction_texts(interactions) -> (n,)` str (see
            `personas.DataPersonaSource`); `None` for a loaded model.
        text_embedder: callable `texts -> (n, r)` float32 sentence vectors
            for `encoder="minilm"`; unused for `"trainable"`.
        encoder: `"trainable"` (hashed words, embedding bag, MLP) or
            `"minilm"` (frozen sentence vectors + residual adapters).
        num_personas: int K, persona slots per item.
        candidates: int M, first-stage items reranked per user.
        blend_weight: float in `[0, 1]`, persona share of the blend.
        aggregation, temperature, label_smoothing, embedding_dim,
            hidden_dims, dropout: see `PersonaMatcher`.
        profile_length: int N, most recent interactions in a profile.
        recency_gamma: float in `(0, 1]`, profile weight gamma^age.
        text_length: int, words kept per text (trainable encoder).
        vocab_buckets: int, word hash buckets (trainable encoder).
        target_fraction: float in `(0, 1)`, latest share of each user's
            fit interactions used as training targets.
        epochs, batch_size, learning_rate: encoder training.
        patience: int, early-stopping patience on the validation loss.
        jit_compile: bool, XLA on JAX/TensorFlow.
        verbose: Keras fit verbosity.
        seed: int.
    """

    def __init__(
        self,
        first_stage,
        persona_source=None,
        text_embedder=None,
        encoder="trainable",
        num_personas=5,
        candidates=100,
        blend_weight=0.5,
        aggregation="softmax",
        temperature=0.1,
        label_smoothing=0.1,
        profile_length=20,
        recency_gamma=0.9,
        embedding_dim=64,
        hidden_dims=(128,),
        dropout=0.1,
        text_length=32,
        vocab_buckets=16384,
        target_fraction=0.2,
        epochs=10,
        batch_size=256,
        learning_rate=1e-3,
        patience=3,
        jit_compile=True,
        verbose=1,
        seed=0,
    ):
        if encoder not in ENCODERS:
            raise ValueError(
                f"`encoder` must be one of {ENCODERS}. Received: {encoder!r}"
            )
        if (
            encoder == "minilm"
            and text_embedder is None
            and (persona_source is not None)
        ):
            raise ValueError("`encoder='minilm'` needs a `text_embedder`.")
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(
                f"`blend_weight` must be in [0, 1]. Received: {blend_weight}"
            )
        if not 0.0 < target_fraction < 1.0:
            raise ValueError(
                "`target_fraction` must be in (0, 1). Received: "
                f"{target_fraction}"
            )
        for name, value in (
            ("num_personas", num_personas),
            ("candidates", candidates),
            ("profile_length", profile_length),
            ("epochs", epochs),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {value}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"`aggregation` must be one of {AGGREGATIONS}. Received: "
                f"{aggregation!r}"
            )
        recency_weights(profile_length, recency_gamma)  # validates gamma
        self.first_stage = first_stage
        self.persona_source = persona_source
        self.text_embedder = text_embedder
        self.params = {
            "encoder": encoder,
            "num_personas": int(num_personas),
            "candidates": int(candidates),
            "blend_weight": float(blend_weight),
            "aggregation": aggregation,
            "temperature": float(temperature),
            "label_smoothing": float(label_smoothing),
            "profile_length": int(profile_length),
            "recency_gamma": float(recency_gamma),
            "embedding_dim": int(embedding_dim),
            "hidden_dims": tuple(int(d) for d in hidden_dims),
            "dropout": float(dropout),
            "text_length": int(text_length),
            "vocab_buckets": int(vocab_buckets),
            "target_fraction": float(target_fraction),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "learning_rate": float(learning_rate),
            "patience": int(patience),
            "jit_compile": bool(jit_compile),
            "verbose": int(verbose),
            "seed": int(seed),
        }
        self.model = None
        self.best_epoch = None
        self.fit_history = {}
        self.history = None  # (num_users, num_items) csr of fit data
        self.item_personas = None  # (num_items, K) rows, -1 = empty
        self.persona_embeddings = None  # (P, d)
        self.persona_text = None  # (P,) str
        self.persona_item = None  # (P,) int
        self.user_profiles = None  # (num_users, d)
        self.profile_inputs = None  # dict of the users' profile inputs

    @property
    def blend_weight(self):
        return self.params["blend_weight"]

    @blend_weight.setter
    def blend_weight(self, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"`blend_weight` must be in [0, 1]. Received: {value}"
            )
        self.params["blend_weight"] = float(value)

    # --- Recommender interface -------------------------------------------

    def fit(self, train, valid=None, epochs=None, first_stage_params=None):
        """Fit the first stage and the persona encoder on `train`.

        Args:
            train: `Interactions`.
            valid: optional `Interactions`; selects the encoder epoch (and
                the first stage's, for models that early-stop).
            epochs: int, encoder epochs (default: the constructor's; a
                refit passes the selected count).
            first_stage_params: dict passed to the first stage's `fit`
                (e.g. its selected epochs, from `refit_params`).

        Returns:
            dict: per-epoch history of the encoder (loss, val_loss).
        """
        if self.persona_source is None:
            raise ValueError(
                "This PersonaReranker was loaded from disk and has no "
                "`persona_source`; build a new one to fit."
            )
        p = self.params
        start = time.perf_counter()
        if first_stage_params:
            self.first_stage.fit(train, valid, **first_stage_params)
        else:
            self.first_stage.fit(train, valid)
        logger.info(
            "first stage %s fit in %.1fs",
            type(self.first_stage).__name__,
            time.perf_counter() - start,
        )
        early, late = _target_split(train, p["target_fraction"])
        train_personas = self.persona_source.personas(early)
        serve_personas = self.persona_source.personas(train)
        texts = self.persona_source.interaction_texts(train)
        text_table, text_rows = self._text_table(texts)
        before, last = previous_rows(train, p["profile_length"])
        weights = recency_weights(p["profile_length"], p["recency_gamma"])
        # Targets: the `late` rows of train, with the rows before them.
        is_late = np.zeros(len(train), bool)
        is_late[late] = True
        examples = np.flatnonzero(is_late & (before[:, 0] >= 0))
        if len(examples) < 2:
            raise ValueError(
                "Too few training targets for the persona encoder: "
                f"{len(examples)} interactions with history in the latest "
                f"{p['target_fraction']:.0%} of each user's data."
            )
        persona_table, item_personas = self._persona_tables(
            train_personas, train.num_items
        )
        batches = PersonaBatches(
            _lookup_rows(text_rows, before[examples]),
            train.item[examples],
            item_personas,
            text_table,
            persona_table,
            weights,
            p["batch_size"],
            seed=p["seed"],
        )
        serve_table, serve_personas_idx = self._persona_tables(
            serve_personas, train.num_items
        )
        val_batches = None
        if valid is not None and len(valid):
            val_rows = _lookup_rows(text_rows, last[valid.user])
            keep = val_rows[:, 0] >= 0
            if keep.sum() >= 2:
                val_batches = PersonaBatches(
                    val_rows[keep],
                    valid.item[keep],
                    serve_personas_idx,
                    text_table,
                    serve_table,
                    weights,
                    p["batch_size"],
                    seed=p["seed"],
                    shuffle=False,
                )
        self.model = self._build(text_table)
        self.model.compile(
            optimizer=keras.optimizers.Adam(p["learning_rate"]),
            jit_compile=p["jit_compile"] and keras.backend.backend() != "torch",
        )
        callbacks = []
        if val_batches is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=p["patience"],
                    restore_best_weights=True,
                )
            )
        logger.info(
            "fitting persona encoder (%s): examples=%d personas=%d "
            "epochs<=%d batch=%d",
            p["encoder"],
            len(examples),
            len(train_personas[0]),
            epochs or p["epochs"],
            batches.batch_size,
        )
        history = self.model.fit(
            batches,
            validation_data=val_batches,
            epochs=epochs or p["epochs"],
            callbacks=callbacks,
            verbose=p["verbose"],
        )
        self.fit_history = {
            k: [float(v) for v in vals] for k, vals in history.history.items()
        }
        if val_batches is not None:
            self.best_epoch = int(np.argmin(self.fit_history["val_loss"])) + 1
        else:
            self.best_epoch = len(self.fit_history["loss"])
        # Serving state: personas of all of train, every user's last N.
        self.history = train.to_csr()
        self.persona_item, self.persona_text = serve_personas
        self.item_personas = serve_personas_idx
        self.persona_embeddings = self._embed_personas(serve_table)
        user_rows = _lookup_rows(text_rows, last)
        self.profile_inputs = {
            "profile": _with_padding_row(text_table)[user_rows],
            "profile_weights": np.where(user_rows >= 0, weights, 0.0).astype(
                np.float32
            ),
        }
        self.user_profiles = self.encode_profiles(**self.profile_inputs)
        return self.fit_history

    def refit_params(self):
        """The encoder epochs and the first stage's own refit parameters."""
        inner = getattr(self.first_stage, "refit_params", lambda: {})()
        out = {"epochs": self.best_epoch}
        if inner:
            out["first_stage_params"] = inner
        return out

    def score(self, user_idx, item_idx=None):
        """`(len(user_idx), num_items or len(item_idx))` float32: the
        reranked candidates on top (in blended order), then every other
        item in first-stage order."""
        self._check_fitted()
        user_idx = np.asarray(user_idx, np.int64)
        base = np.asarray(self.first_stage.score(user_idx), np.float32)
        cand, base_c, valid = self.candidates_for(user_idx, base)
        blended = self.rerank(user_idx, cand, base_c, valid)
        out = base.copy()
        finite = np.where(np.isfinite(out), out, np.nan)
        top = np.nan_to_num(np.nanmax(finite, axis=1, initial=0.0))
        low = np.nanmin(np.where(valid, blended, np.nan), axis=1)
        low = np.nan_to_num(low)
        lifted = top[:, None] + 1.0 + (blended - low[:, None])
        rows = np.arange(len(user_idx))[:, None]
        out[rows, cand] = np.where(valid, lifted, out[rows, cand])
        if item_idx is not None:
            out = out[:, np.asarray(item_idx)]
        return np.ascontiguousarray(out, np.float32)

    # --- the rerank stage --------------------------------------------------

    def candidates_for(self, user_idx, base):
        """Top-M unseen items of the first stage per user.

        Returns:
            `(items, scores, valid)`, each `(b, M)`; `valid` is False for
            slots that hold an already-seen item (users with fewer unseen
            items than M).
        """
        m = min(self.params["candidates"], base.shape[1])
        masked = base.astype(np.float32, copy=True)
        seen = self.history[user_idx]
        rows = np.repeat(np.arange(len(user_idx)), np.diff(seen.indptr))
        masked[rows, seen.indices] = -np.inf
        cand = np.argpartition(-masked, m - 1, axis=1)[:, :m]
        scores = np.take_along_axis(masked, cand, axis=1)
        return cand, scores, np.isfinite(scores)

    def persona_scores(self, profiles, items):
        """`(b, d)` profiles, `(b, M)` items -> `(b, M)` aggregated persona
        similarities."""
        slots = self.item_personas[items]  # (b, M, K)
        table = np.concatenate(
            [
                self.persona_embeddings,
                np.zeros((1, self.persona_embeddings.shape[1]), np.float32),
            ]
        )
        vectors = table[slots]  # (b, M, K, d); -1 picks the zero row
        sims = np.einsum("bd,bmkd->bmk", profiles, vectors)
        return aggregate_scores(
            sims,
            slots >= 0,
            self.params["aggregation"],
            self.params["temperature"],
        )

    def rerank(self, user_idx, cand, base_scores, valid, profiles=None):
        """Blend first-stage and persona scores of the candidates.

        Args:
            user_idx: `(b,)` users (for their cached profiles).
            cand, base_scores, valid: from `candidates_for`.
            profiles: optional `(b, d)` profiles to use instead of the
                cached ones (e.g. from `encode_profiles` on a fresh
                history).

        Returns:
            `(b, M)` float32 blended scores (meaningful where `valid`).
        """
        if profiles is None:
            profiles = self.user_profiles[user_idx]
        w = self.params["blend_weight"]
        persona = self.persona_scores(profiles, cand)
        return (
            (1.0 - w) * _standardise(base_scores, valid)
            + w * _standardise(persona, valid)
        ).astype(np.float32)

    def encode_profiles(self, profile, profile_weights, block=256):
        """Profile embeddings `(b, d)` from history texts `(b, N, .)` and
        recency weights `(b, N)`. One user is one compiled forward pass;
        more are run in blocks of `block`, the last one padded, so only
        two input shapes are ever compiled."""
        n = len(profile)
        size = 1 if n == 1 else block
        out = np.zeros((n, self.model.output_dim), np.float32)
        for start in range(0, n, size):
            rows = np.arange(start, min(start + size, n))
            rows = np.concatenate([rows, np.full(size - len(rows), rows[-1])])
            pred = self.model.predict_on_batch(
                {
                    "profile": profile[rows],
                    "profile_weights": profile_weights[rows],
                }
            )
            keep = min(size, n - start)
            out[start : start + keep] = np.asarray(pred["profile"])[:keep]
        return out

    # --- persistence ------------------------------------------------------

    def save(self, path):
        """Write `model.keras`, `arrays.npz`, `recommender.json` and the
        first stage (in `first_stage/`) into the folder `path`."""
        self._check_fitted()
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / "model.keras")
        self.first_stage.save(path / "first_stage")
        arrays = {
            "history_indptr": self.history.indptr,
            "history_indices": self.history.indices,
            "history_shape": np.asarray(self.history.shape, np.int64),
            "item_personas": self.item_personas,
            "persona_embeddings": self.persona_embeddings,
            "persona_item": self.persona_item,
            "persona_text": self.persona_text.astype(str),
            "user_profiles": self.user_profiles,
            **{f"profile_{k}": v for k, v in self.profile_inputs.items()},
        }
        tmp = path / "arrays.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path / "arrays.npz")
        info = {
            "kind": "persona",
            "params": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.params.items()
            },
            "best_epoch": self.best_epoch,
            "backend": keras.backend.backend(),
        }
        tmp = path / "recommender.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(path / "recommender.json")

    @classmethod
    def load(cls, path, load_first_stage):
        """Load a saved reranker on any backend.

        Args:
            path: the folder `save` wrote.
            load_first_stage: callable `folder -> recommender`, e.g.
                `recommenders.load`.
        """
        path = pathlib.Path(path)
        with runs.reading(path / "recommender.json"):
            info = json.loads((path / "recommender.json").read_text())
        if info.get("kind") != "persona":
            raise ValueError(
                f"{path / 'recommender.json'} does not hold a persona "
                f"reranker. Received kind: {info.get('kind')!r}"
            )
        rec = cls(load_first_stage(path / "first_stage"), **info["params"])
        with runs.reading(path / "model.keras"):
            rec.model = keras.saving.load_model(
                path / "model.keras", compile=False
            )
        with (
            runs.reading(path / "arrays.npz"),
            np.load(path / "arrays.npz") as z,
        ):
            arrays = {k: z[k] for k in z.files}
        shape = tuple(int(s) for s in arrays["history_shape"])
        indices = arrays["history_indices"]
        rec.history = sp.csr_matrix(
            (
                np.ones(len(indices), np.float32),
                indices,
                arrays["history_indptr"],
            ),
            shape=shape,
        )
        rec.item_personas = arrays["item_personas"]
        rec.persona_embeddings = arrays["persona_embeddings"]
        rec.persona_item = arrays["persona_item"]
        rec.persona_text = arrays["persona_text"].astype(object)
        rec.user_profiles = arrays["user_profiles"]
        rec.profile_inputs = {
            k[len("profile_") :]: v
            for k, v in arrays.items()
            if k.startswith("profile_")
        }
        rec.best_epoch = info["best_epoch"]
        return rec

    # --- private ----------------------------------------------------------

    def _build(self, text_table):
        p = self.params
        vectors = p["encoder"] == "minilm"
        return PersonaMatcher(
            input_kind="vectors" if vectors else "tokens",
            vocab_size=p["vocab_buckets"] + 1,
            input_dim=int(text_table.shape[1]) if vectors else 384,
            embedding_dim=p["embedding_dim"],
            hidden_dims=p["hidden_dims"],
            dropout=p["dropout"],
            aggregation=p["aggregation"],
            temperature=p["temperature"],
            label_smoothing=p["label_smoothing"],
            seed=p["seed"],
        )

    def _text_table(self, texts):
        """Unique texts -> `(table, row of each text)`: token ids for the
        trainable encoder, sentence vectors for MiniLM."""
        unique, inverse = np.unique(
            np.asarray(texts, dtype=str), return_inverse=True
        )
        if self.params["encoder"] == "minilm":
            table = np.asarray(self.text_embedder(list(unique)), np.float32)
        else:
            table = hash_tokens(
                unique,
                self.params["vocab_buckets"],
                self.params["text_length"],
            )
        return table, inverse.astype(np.int64)

    def _persona_tables(self, personas, num_items):
        """`(item, text)` arrays -> `(persona text table, item_personas)`
        with each item's first K personas (in the order given)."""
        item, text = personas
        item = np.asarray(item, np.int64)
        table, rows = self._text_table(text)
        k = self.params["num_personas"]
        order = np.argsort(item, kind="stable")
        counts = np.bincount(item, minlength=num_items)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(item)) - starts[item[order]]
        keep = slot < k
        index = np.full((num_items, k), -1, np.int64)
        index[item[order][keep], slot[keep]] = rows[order][keep]
        return table, index

    def _embed_personas(self, table):
        out = self.model.predict(
            {"personas": table[:, None]}, batch_size=1024, verbose=0
        )
        return np.asarray(out["personas"][:, 0], np.float32)

    def _check_fitted(self):
        if self.model is None:
            raise RuntimeError(
                "PersonaReranker is not fitted: call `fit()` first."
            )


def _with_padding_row(table):
    """The table with one zero row appended, which index -1 selects."""
    table = np.asarray(table)
    return np.concatenate(
        [table, np.zeros((1,) + table.shape[1:], table.dtype)]
    )


def _lookup_rows(text_rows, rows):
    """Map interaction rows (-1 = padding) to text-table rows (-1 kept)."""
    return np.where(rows >= 0, text_rows[np.maximum(rows, 0)], -1)


def _target_split(train, fraction):
    """Row indices of `train`: each user's interactions before the latest
    `fraction` (persona evidence) and the latest `fraction` (targets); a
    user with one interaction keeps it as evidence."""
    order = np.lexsort((train.item, train.ts, train.user))
    users = train.user[order]
    counts = np.bincount(users, minlength=train.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(train)) - starts[users]
    n_late = np.minimum(
        np.ceil(np.round(counts * fraction, 9)).astype(np.int64),
        np.maximum(counts - 1, 0),
    )
    late_sorted = pos >= counts[users] - n_late[users]
    late = np.sort(order[late_sorted])
    early_rows = np.sort(order[~late_sorted])
    return train.select(early_rows), late


def _standardise(scores, valid):
    """Per-row z-scores over the `valid` entries (0 where the row is
    constant; invalid entries 0)."""
    scores = np.where(valid, scores, 0.0).astype(np.float64)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = scores.sum(axis=1, keepdims=True) / count
    var = (np.where(valid, scores - mean, 0.0) ** 2).sum(
        axis=1, keepdims=True
    ) / count
    std = np.sqrt(var)
    z = np.where(std > 1e-12, (scores - mean) / np.maximum(std, 1e-12), 0.0)
    return np.where(valid, z, 0.0)
