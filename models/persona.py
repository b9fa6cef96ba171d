"""Persona matching: user profiles meet item personas, as a reranking stage.

Items are described offline by a few *personas* (short profiles of the kinds
of people who enjoy them; see `personas.py` for how they are made). At
serving time a user's recent history becomes a *profile*; a text encoder maps
profiles and personas into one space, an item's score is an aggregation (max
or softmax-weighted) of its personas' similarities to the profile, and the
top-M candidates of a first-stage recommender are reordered by a blend of
their first-stage and persona scores. The expensive part (describing items)
happens once per item, not once per request.

Pieces:

- `hash_tokens`: host-side word hashing into padded id rows (the input of
  the trainable encoder).
- `PersonaAggregation`: max / softmax-weighted pooling over an item's
  persona similarities, with a mask for items with fewer than K personas.
- `ResidualAdapter`: a zero-initialised residual MLP over frozen sentence
  embeddings (MiniLM), so training starts from the pretrained geometry.
- `PersonaMatcher`: the Keras model (profile tower, persona tower) trained
  with in-batch InfoNCE with a temperature and label smoothing.
- `PersonaBatches`: training batches, vectorised, depending only on
  `(seed, epoch, index)`.
- `PersonaReranker`: the `Recommender` (fit / score / save / load /
  refit_params) that wraps a first-stage recommender.

References:
    - van den Oord, Li, Vinyals. "Representation Learning with Contrastive
      Predictive Coding." 2018 (InfoNCE).
    - Szegedy et al. "Rethinking the Inception Architecture for Computer
      Vision." CVPR 2016 (label smoothing).
    - Reimers, Gurevych. "Sentence-BERT." EMNLP 2019 (MiniLM sentence
      embeddings, `encoder="minilm"`).
"""

import json
import logging
import pathlib
import re
import time
import zlib

import keras
import numpy as np
import pandas as pd
import scipy.sparse as sp
from keras import ops

from models.layers import MaskedMeanEmbedding
from models.layers import MLPTower

logger = logging.getLogger(__name__)

AGGREGATIONS = ("max", "softmax")
ENCODERS = ("trainable", "minilm")
_NEG = -1e9  # logit of an excluded slot: finite, so 0 * it stays 0
_WORD = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------------------
# Host-side text input
# ---------------------------------------------------------------------------


def hash_tokens(texts, num_buckets, length):
    """Lower-cased words hashed into `[1, num_buckets]`, padded with 0.

    crc32 is stable across processes and platforms (Python's `hash` is
    salted per process), so saved models keep meaning the same words.

    Args:
        texts: sequence of str.
        num_buckets: int >= 1, hash buckets (id 0 is padding).
        length: int >= 1, words kept per text (the first ones).

    Returns:
        `(len(texts), length)` int32.
    """
    if num_buckets < 1 or length < 1:
        raise ValueError(
            "`num_buckets` and `length` must be >= 1. Received: "
            f"num_buckets={num_buckets}, length={length}"
        )
    out = np.zeros((len(texts), length), np.int32)
    words = pd.Series(list(texts), dtype=object).astype(str).str.lower()
    words = words.str.findall(_WORD)
    sizes = words.str.len().to_numpy()
    flat = words.explode().dropna().to_numpy().astype(str)
    if not len(flat):
        return out
    rows = np.repeat(np.arange(len(texts)), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = np.arange(len(flat)) - starts[rows]
    vocab, inverse = np.unique(flat, return_inverse=True)
    ids = np.array(
        [zlib.crc32(w.encode()) % num_buckets + 1 for w in vocab], np.int32
    )
    keep = pos < length
    out[rows[keep], pos[keep]] = ids[inverse[keep]]
    return out


def aggregate_scores(sims, mask, mode="softmax", temperature=0.1):
    """NumPy twin of `PersonaAggregation` for host-side serving.

    Args:
        sims: `(..., K)` similarities.
        mask: `(..., K)` bool, the slot holds a persona.
        mode: `"max"` or `"softmax"`.
        temperature: float > 0.

    Returns:
        `(...)` float32 item scores, 0 where no slot is valid.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(
            f"`mode` must be one of {AGGREGATIONS}. Received: {mode!r}"
        )
    sims = np.asarray(sims, np.float64)
    mask = np.broadcast_to(np.asarray(mask, bool), sims.shape)
    any_valid = mask.any(axis=-1)
    if mode == "max":
        best = np.where(mask, sims, -np.inf).max(axis=-1)
        return np.where(any_valid, best, 0.0).astype(np.float32)
    logits = np.where(mask, sims / temperature, -np.inf)
    top = np.where(any_valid, logits.max(axis=-1), 0.0)[..., None]
    weights = np.where(mask, np.exp(logits - top), 0.0)
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), 1e-300)
    return np.where(any_valid, (weights * sims).sum(axis=-1),
                    0.0).astype(np.float32)


def recency_weights(length, gamma):
    """`(length,)` float32 weights gamma^age, age 0 = the newest slot."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"`gamma` must be in (0, 1]. Received: {gamma}")
    return (gamma ** np.arange(length)).astype(np.float32)


def previous_rows(interactions, length):
    """For every interaction, the rows of the same user's `length` previous
    interactions (by time, then item), newest first, -1 where there are
    fewer; plus each user's last `length` rows.

    Returns:
        `(before, last)`: `(n, length)` int64 rows into `interactions`, and
        `(num_users, length)` int64 rows (-1 padded).
    """
    x = interactions
    order = np.lexsort((x.item, x.ts, x.user))
    users = x.user[order]
    counts = np.bincount(users, minlength=x.num_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(x)) - starts[users]  # position in the user's run
    lag = np.arange(1, length + 1)
    src = np.arange(len(x))[:, None] - lag[None, :]  # (n, length) in order
    ok = lag[None, :] <= pos[:, None]
    before = np.full((len(x), length), -1, np.int64)
    before[order] = np.where(ok, order[np.maximum(src, 0)], -1)
    ends = starts + counts  # one past each user's last sorted row
    src = ends[:, None] - 1 - np.arange(length)[None, :]
    ok = np.arange(length)[None, :] < counts[:, None]
    last = np.where(ok, order[np.clip(src, 0, max(len(x) - 1, 0))], -1)
    return before, last.astype(np.int64)


# ---------------------------------------------------------------------------
# Layers and model
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="recsys")
class PersonaAggregation(keras.layers.Layer):
    """Pools an item's persona similarities into one item score.

    - `"max"`: the best-matching persona, `max_k s_k`.
    - `"softmax"`: `sum_k softmax(s / temperature)_k * s_k`, a smooth max
      that still credits the second-best personas.

    Masked slots (the item has fewer personas) never count; an item with no
    persona at all scores 0, the similarity of unrelated vectors.

    Args:
        mode: `"max"` or `"softmax"`. Defaults to `"softmax"`.
        temperature: float > 0, softmax temperature. Defaults to `0.1`.

    Call arguments:
        sims: `(..., K)` similarities.
        mask: `(..., K)` 1/0 (broadcastable to `sims`).

    Returns:
        `(...)` item scores.
    """

    def __init__(self, mode="softmax", temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        if mode not in AGGREGATIONS:
            raise ValueError(
                f"`mode` must be one of {AGGREGATIONS}. Received: {mode!r}"
            )
        if not temperature > 0:
            raise ValueError(
                f"`temperature` must be > 0. Received: {temperature}"
            )
        self.mode = mode
        self.temperature = temperature

    def call(self, sims, mask):
        sims = ops.cast(sims, self.compute_dtype)
        mask = ops.cast(ops.broadcast_to(mask, ops.shape(sims)) > 0,
                        self.compute_dtype)
        any_valid = ops.max(mask, axis=-1)
        neg = ops.cast(_NEG, self.compute_dtype)
        if self.mode == "max":
            best = ops.max(ops.where(mask > 0, sims, neg), axis=-1)
            return best * any_valid
        logits = ops.where(mask > 0, sims / self.temperature, neg)
        weights = ops.softmax(logits, axis=-1) * mask
        weights = weights / ops.maximum(
            ops.sum(weights, axis=-1, keepdims=True), 1e-12
        )
        return ops.sum(weights * sims, axis=-1) * any_valid

    def compute_output_shape(self, sims_shape, mask_shape=None):
        return tuple(sims_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "temperature": self.temperature})
        return config


@keras.saving.register_keras_serializable(package="recsys")
class ResidualAdapter(keras.layers.Layer):
    """`normalize(x + W2 f(W1 x))` with `W2` initialised to zero.

    Adapts frozen sentence embeddings to the task while starting exactly
    at the pretrained geometry (the adapter is the identity, up to L2
    normalisation, before the first update).

    Args:
        input_dim: int, width of the embeddings (and of the output).
        hidden_dims: tuple of ints, hidden widths. Defaults to `(128,)`.
        dropout: float in `[0, 1)`. Defaults to `0.0`.
        activation: hidden activation. Defaults to `"gelu"`.
        seed: optional int for dropout.

    Returns:
        `(..., input_dim)` L2-normalised tensor.
    """

    def __init__(
        self,
        input_dim,
        hidden_dims=(128,),
        dropout=0.0,
        activation="gelu",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if input_dim < 1:
            raise ValueError(f"`input_dim` must be >= 1. Received: {input_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        self.input_dim = int(input_dim)
        self.hidden_dims = tuple(int(d) for d in hidden_dims)
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.seed = seed
        self.tower = MLPTower(
            self.hidden_dims, self.input_dim, dropout, activation,
            normalize=False, seed=seed, dtype=self.dtype_policy, name="tower",
        )

    def build(self, input_shape):
        self.tower.build(input_shape)
        kernel = self.tower.out.kernel
        kernel.assign(ops.zeros(kernel.shape, kernel.dtype))
        self.built = True

    def call(self, x, training=False):
        x = ops.cast(x, self.compute_dtype)
        y = x + self.tower(x, training=training)
        return y / ops.sqrt(
            ops.maximum(ops.sum(ops.square(y), axis=-1, keepdims=True), 1e-12)
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "hidden_dims": self.hidden_dims,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class PersonaMatcher(keras.Model):
    """A profile tower and a persona tower over one text representation,
    trained so that a profile is close to the personas of the item its user
    engages with next.

    A plain subclass because the loss needs the whole batch: every other
    item in the batch is a negative for each profile (in-batch InfoNCE).
    The logit of (profile b, item c) is `agg_k cos(p_b, q_ck) / temperature`
    with `agg` from `PersonaAggregation`; targets are the diagonal, smoothed
    by `label_smoothing` over the batch's other items. The same item twice
    in a batch is not a negative for itself.

    Args:
        input_kind: `"tokens"` (hashed word ids, a trainable embedding bag)
            or `"vectors"` (precomputed sentence embeddings, e.g. MiniLM,
            adapted by `ResidualAdapter`s).
        vocab_size: int, token table size incl. padding id 0 (`"tokens"`).
        input_dim: int, sentence embedding width (`"vectors"`).
        embedding_dim: int, output width (`"tokens"`; `"vectors"` keeps
            `input_dim`).
        hidden_dims: tuple of ints, MLP widths of each tower.
        dropout: float in `[0, 1)`.
        aggregation: `"max"` or `"softmax"`.
        temperature: float > 0, divides the similarities (and is the
            softmax aggregation's temperature).
        label_smoothing: float in `[0, 1)`.
        seed: optional int for dropout.

    Call arguments:
        inputs: dict with `"profile"` `(batch, N, L)` int token ids or
            `(batch, N, input_dim)` vectors of the user's last N texts,
            `"profile_weights"` `(batch, N)` recency weights (0 = padding),
            and/or `"personas"` `(batch, K, L)` / `(batch, K, input_dim)`
            texts of the target item's personas with `"persona_mask"`
            `(batch, K)`; training adds `"item"` `(batch,)` target ids.

    Returns:
        dict with `"profile"` `(batch, d)` and/or `"personas"`
        `(batch, K, d)`, L2-normalised.
    """

    def __init__(
        self,
        input_kind="tokens",
        vocab_size=16385,
        input_dim=384,
        embedding_dim=64,
        hidden_dims=(128,),
        dropout=0.1,
        aggregation="softmax",
        temperature=0.1,
        label_smoothing=0.1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if input_kind not in ("tokens", "vectors"):
            raise ValueError(
                "`input_kind` must be 'tokens' or 'vectors'. Received: "
                f"{input_kind!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). Received: "
                f"{label_smoothing}"
            )
        if not temperature > 0:
            raise ValueError(
                f"`temperature` must be > 0. Received: {temperature}"
            )
        # === Config ===
        self.input_kind = input_kind
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.embedding_dim = embedding_dim
        self.hidden_dims = tuple(hidden_dims)
        self.dropout = dropout
        self.aggregation = aggregation
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.seed = seed

        # === Layers ===
        if input_kind == "tokens":
            self.bag = MaskedMeanEmbedding(
                vocab_size, embedding_dim, name="word_bag"
            )
            self.profile_tower = MLPTower(
                hidden_dims, embedding_dim, dropout, seed=seed,
                name="profile_tower",
            )
            self.persona_tower = MLPTower(
                hidden_dims, embedding_dim, dropout,
                seed=None if seed is None else seed + 1000,
                name="persona_tower",
            )
        else:
            self.bag = None
            self.profile_tower = ResidualAdapter(
                input_dim, hidden_dims, dropout, seed=seed,
                name="profile_tower",
            )
            self.persona_tower = ResidualAdapter(
                input_dim, hidden_dims, dropout,
                seed=None if seed is None else seed + 1000,
                name="persona_tower",
            )
        self.aggregate = PersonaAggregation(
            aggregation, temperature, name="aggregate"
        )
        self.build()

    @property
    def output_dim(self):
        return self.embedding_dim if self.bag is not None else self.input_dim

    def build(self, input_shape=None):
        width = self.embedding_dim if self.bag is not None else self.input_dim
        if self.bag is not None:
            self.bag.build((None, None))
        self.profile_tower.build((None, width))
        self.persona_tower.build((None, width))
        self.built = True

    def call(self, inputs, training=False):
        out = {}
        if "profile" in inputs:
            out["profile"] = self.encode_profile(
                inputs["profile"], inputs["profile_weights"], training
            )
        if "personas" in inputs:
            out["personas"] = self.encode_personas(
                inputs["personas"], training
            )
        return out

    def represent(self, texts):
        """`(..., L)` token ids or `(..., input_dim)` vectors -> `(..., r)`
        text representations before the towers."""
        if self.bag is None:
            return ops.cast(texts, self.compute_dtype)
        shape = ops.shape(texts)
        flat = self.bag(ops.reshape(texts, (-1, shape[-1])))
        return ops.reshape(flat, tuple(shape[:-1]) + (self.embedding_dim,))

    def encode_profile(self, texts, weights, training=False):
        """Recency-weighted mean of the history texts, then the profile
        tower: `(batch, N, .)`, `(batch, N)` -> `(batch, d)`."""
        reps = self.represent(texts)  # (batch, N, r)
        w = ops.cast(weights, self.compute_dtype)[..., None]
        pooled = ops.sum(reps * w, axis=1) / ops.maximum(
            ops.sum(w, axis=1), 1e-12
        )
        return self.profile_tower(pooled, training=training)

    def encode_personas(self, texts, training=False):
        """`(..., L)` or `(..., input_dim)` persona texts -> `(..., d)`."""
        reps = self.represent(texts)
        width = ops.shape(reps)[-1]
        flat = self.persona_tower(
            ops.reshape(reps, (-1, width)), training=training
        )
        return ops.reshape(flat, tuple(ops.shape(reps)[:-1]) + (-1,))

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        profile, personas = y_pred["profile"], y_pred["personas"]
        sims = ops.einsum("bd,ckd->bck", profile, personas)  # (b, b, K)
        mask = ops.cast(x["persona_mask"], sims.dtype)[None, :, :]
        logits = self.aggregate(sims, mask) / self.temperature  # (b, b)
        item = x["item"]
        batch = ops.shape(item)[0]
        eye = ops.eye(batch, dtype=logits.dtype)
        same = ops.cast(ops.equal(item[:, None], item[None, :]), logits.dtype)
        allowed = 1.0 - same + eye  # drop repeats of the target item
        logits = ops.where(allowed > 0, logits, ops.cast(_NEG, logits.dtype))
        target = (1.0 - self.label_smoothing) * eye + (
            self.label_smoothing
            * allowed
            / ops.sum(allowed, axis=1, keepdims=True)
        )
        log_probs = ops.log_softmax(logits, axis=1)
        loss = -ops.sum(target * log_probs, axis=1)
        if sample_weight is not None:
            loss = loss * ops.cast(sample_weight, loss.dtype)
        total = ops.mean(loss)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            "name": self.name,
            "input_kind": self.input_kind,
            "vocab_size": self.vocab_size,
            "input_dim": self.input_dim,
            "embedding_dim": self.embedding_dim,
            "hidden_dims": self.hidden_dims,
            "dropout": self.dropout,
            "aggregation": self.aggregation,
            "temperature": self.temperature,
            "label_smoothing": self.label_smoothing,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


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
        if encoder == "minilm" and text_embedder is None and (
            persona_source is not None
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
        for name, value in (("num_personas", num_personas),
                            ("candidates", candidates),
                            ("profile_length", profile_length),
                            ("epochs", epochs)):
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
            jit_compile=p["jit_compile"]
            and keras.backend.backend() != "torch",
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
            [self.persona_embeddings,
             np.zeros((1, self.persona_embeddings.shape[1]), np.float32)]
        )
        vectors = table[slots]  # (b, M, K, d); -1 picks the zero row
        sims = np.einsum("bd,bmkd->bmk", profiles, vectors)
        return aggregate_scores(
            sims, slots >= 0, self.params["aggregation"],
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
        return ((1.0 - w) * _standardise(base_scores, valid)
                + w * _standardise(persona, valid)).astype(np.float32)

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
                {"profile": profile[rows],
                 "profile_weights": profile_weights[rows]}
            )
            keep = min(size, n - start)
            out[start:start + keep] = np.asarray(pred["profile"])[:keep]
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
            "params": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in self.params.items()},
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
                `train.load_recommender`.
        """
        path = pathlib.Path(path)
        info = json.loads((path / "recommender.json").read_text())
        if info.get("kind") != "persona":
            raise ValueError(
                f"{path / 'recommender.json'} does not hold a persona "
                f"reranker. Received kind: {info.get('kind')!r}"
            )
        rec = cls(load_first_stage(path / "first_stage"), **info["params"])
        rec.model = keras.saving.load_model(path / "model.keras", compile=False)
        with np.load(path / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        shape = tuple(int(s) for s in arrays["history_shape"])
        indices = arrays["history_indices"]
        rec.history = sp.csr_matrix(
            (np.ones(len(indices), np.float32), indices,
             arrays["history_indptr"]),
            shape=shape,
        )
        rec.item_personas = arrays["item_personas"]
        rec.persona_embeddings = arrays["persona_embeddings"]
        rec.persona_item = arrays["persona_item"]
        rec.persona_text = arrays["persona_text"].astype(object)
        rec.user_profiles = arrays["user_profiles"]
        rec.profile_inputs = {
            k[len("profile_"):]: v for k, v in arrays.items()
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
        unique, inverse = np.unique(np.asarray(texts, dtype=str),
                                    return_inverse=True)
        if self.params["encoder"] == "minilm":
            table = np.asarray(self.text_embedder(list(unique)), np.float32)
        else:
            table = hash_tokens(
                unique, self.params["vocab_buckets"],
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
    return np.concatenate([table, np.zeros((1,) + table.shape[1:],
                                           table.dtype)])


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
