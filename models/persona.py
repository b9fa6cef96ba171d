"""Persona matching: user profiles meet item personas, as a reranking stage.

Items are described offline by a few *personas* (short profiles of the kinds
of people who enjoy them; see `content/personas/` for how they are made). At
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

The reranking recommender that trains and serves this model is
`recommenders/persona_reranker.py`.

References:
    - van den Oord, Li, Vinyals. "Representation Learning with Contrastive
      Predictive Coding." 2018 (InfoNCE).
    - Szegedy et al. "Rethinking the Inception Architecture for Computer
      Vision." CVPR 2016 (label smoothing).
    - Reimers, Gurevych. "Sentence-BERT." EMNLP 2019 (MiniLM sentence
      embeddings, `encoder="minilm"`).
"""

import logging
import re
import zlib

import keras
import numpy as np
import pandas as pd
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
    return np.where(any_valid, (weights * sims).sum(axis=-1), 0.0).astype(
        np.float32
    )


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
        mask = ops.cast(
            ops.broadcast_to(mask, ops.shape(sims)) > 0, self.compute_dtype
        )
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
            self.hidden_dims,
            self.input_dim,
            dropout,
            activation,
            normalize=False,
            seed=seed,
            dtype=self.dtype_policy,
            name="tower",
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
                hidden_dims,
                embedding_dim,
                dropout,
                seed=seed,
                name="profile_tower",
            )
            self.persona_tower = MLPTower(
                hidden_dims,
                embedding_dim,
                dropout,
                seed=None if seed is None else seed + 1000,
                name="persona_tower",
            )
        else:
            self.bag = None
            self.profile_tower = ResidualAdapter(
                input_dim,
                hidden_dims,
                dropout,
                seed=seed,
                name="profile_tower",
            )
            self.persona_tower = ResidualAdapter(
                input_dim,
                hidden_dims,
                dropout,
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
            out["personas"] = self.encode_personas(inputs["personas"], training)
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
