"""A sequence-aware user tower: causal self-attention over recent items.

SASRec (Kang & McAuley, ICDM 2018) reads the user's last `L` items in time
order; each position attends to itself and to older positions only, and
predicts the item that came next. Training uses every position of a
sequence at once, with a softmax over the whole catalog; scoring reads the
output of the newest position and ranks the catalog by its dot product
with every item vector (input and output item vectors are one table).

Sequences here are stored newest first, like `data.history_matrix`: slot 0
is the most recent item, ids are item index + 1 and 0 pads the end. The
position embedding therefore counts back from the newest item, and the
causal mask lets slot `j` read slots `j..L-1`. Optional time gaps add an
embedding of each item's age relative to the newest one (log2 buckets of
days, `data.age_buckets`; 0 = unknown, e.g. a folded-in new user).
Optional item features are projected and added
to the id embedding.
"""

import keras
from keras import ops

from models.layers import seeded

_NEG = -1e9


@keras.saving.register_keras_serializable(package="recsys")
class CausalSelfAttentionBlock(keras.layers.Layer):
    """A pre-norm transformer block whose attention looks back only.

    Args:
        dim: int, model width (divisible by `num_heads`).
        num_heads: int.
        dropout: float in `[0, 1)`, on the attention weights and both
            residual branches.
        seed: optional int for initializers and dropout.

    Call arguments:
        h: `(batch, L, dim)`, newest position first.
        valid: `(batch, L)` bool, the positions holding an item.
        training: bool.
    """

    def __init__(self, dim, num_heads, dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(
                f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads})."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.seed = seed

        def dense(units, offset, activation=None):
            return keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=seeded("glorot_uniform", seed, offset),
                dtype=self.dtype_policy,
            )

        def drop(offset):
            return keras.layers.Dropout(
                dropout,
                seed=None if seed is None else seed + offset,
                dtype=self.dtype_policy,
            )

        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=self.dtype_policy
        )
        self.qkv = dense(3 * dim, 1)
        self.project = dense(dim, 2)
        self.feed_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=self.dtype_policy
        )
        self.feed_in = dense(2 * dim, 3, activation="gelu")
        self.feed_out = dense(dim, 4)
        self.attention_dropout = drop(5)
        self.residual_dropout = drop(6)

    def build(self, input_shape, valid_shape=None):
        shape = tuple(input_shape)
        self.attention_norm.build(shape)
        self.qkv.build(shape)
        self.project.build(shape)
        self.feed_norm.build(shape)
        self.feed_in.build(shape)
        self.feed_out.build(shape[:-1] + (2 * self.dim,))
        self.built = True

    def call(self, h, valid, training=False):
        batch, length = ops.shape(h)[0], ops.shape(h)[1]
        head = self.dim // self.num_heads

        def split_heads(t):  # (batch, L, dim) -> (batch, heads, L, head)
            t = ops.reshape(t, (batch, length, self.num_heads, head))
            return ops.transpose(t, (0, 2, 1, 3))

        q, k, v = ops.split(self.qkv(self.attention_norm(h)), 3, axis=-1)
        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        logits = ops.cast(logits, "float32") / float(head) ** 0.5
        # Newest first: query slot j may read key slots j..L-1 (itself and
        # older items) that hold an item; a padding slot reads itself only,
        # so no row is all masked.
        older = ops.triu(ops.ones((length, length), "bool"))
        allowed = ops.logical_or(
            ops.logical_and(older[None, None], valid[:, None, None, :]),
            ops.eye(length, dtype="bool")[None, None],
        )
        logits = ops.where(allowed, logits, _NEG)
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        weights = self.attention_dropout(weights, training=training)
        out = ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))
        out = self.project(ops.reshape(out, (batch, length, self.dim)))
        h = h + self.residual_dropout(out, training=training)
        feed = self.feed_out(self.feed_in(self.feed_norm(h)))
        return h + self.residual_dropout(feed, training=training)

    def compute_output_shape(self, input_shape, valid_shape=None):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class SASRec(keras.Model):
    """Causal self-attention user tower with next-item full softmax.

    Args:
        num_users: int, kept for the recommender interface (no user id is
            embedded: a user is their recent items, so new users fold in).
        num_items: int, catalog size.
        embedding_dim: int, width of item vectors and of the blocks.
        history_length: int >= 1, the `L` most recent items read.
        num_blocks: int >= 1, attention blocks.
        num_heads: int >= 1, heads per block.
        dropout: float in `[0, 1)`, in the blocks and on the input.
        num_item_features: int, width of item features added (projected)
            to the item id embedding (0 = ids only). With features, the
            catalog's features live in the model (`set_item_feature_table`),
            since every step scores every item.
        time_buckets: int, number of item-age buckets (0 = no time gaps).
        l2: float >= 0, L2 penalty on the item table.
        seed: optional int.

    Call arguments:
        inputs: dict with `"history"` `(batch, L)` item ids + 1, newest
            first, 0-padded (and `"history_age"` `(batch, L)` int buckets
            with `time_buckets`) for the user side; `"item"` `(batch,)`
            (and `"item_features"`) for the item side.

    Returns:
        dict with `"user"` `(batch, embedding_dim)`, the newest slot's
        output, and/or `"item"` `(batch, embedding_dim)`; while training
        (a `"target"` `(batch, L)` input, ids + 1, 0 = no target) also
        `"sequence"`, every slot's output, which the loss scores against
        the catalog.
    """

    def __init__(
        self,
        num_users,
        num_items,
        embedding_dim=64,
        history_length=50,
        num_blocks=2,
        num_heads=2,
        dropout=0.2,
        num_item_features=0,
        time_buckets=0,
        l2=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if history_length < 1:
            raise ValueError(
                f"`history_length` must be >= 1. Received: {history_length}"
            )
        if num_blocks < 1 or num_heads < 1:
            raise ValueError(
                "`num_blocks` and `num_heads` must be >= 1. Received: "
                f"{num_blocks}, {num_heads}"
            )
        if time_buckets < 0:
            raise ValueError(
                f"`time_buckets` must be >= 0. Received: {time_buckets}"
            )
        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.history_length = history_length
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.dropout = dropout
        self.num_item_features = num_item_features
        self.time_buckets = time_buckets
        self.l2 = l2
        self.seed = seed

        reg = keras.regularizers.L2(l2) if l2 > 0 else None
        normal = keras.initializers.TruncatedNormal
        self.item_embedding = keras.layers.Embedding(
            num_items + 1,  # row 0 pads
            embedding_dim,
            embeddings_initializer=normal(
                stddev=0.02, seed=None if seed is None else seed + 1
            ),
            embeddings_regularizer=reg,
            name="item_embedding",
        )
        self.position_embedding = keras.layers.Embedding(
            history_length,
            embedding_dim,
            embeddings_initializer=normal(
                stddev=0.02, seed=None if seed is None else seed + 2
            ),
            name="position_embedding",
        )
        self.age_embedding = (
            keras.layers.Embedding(
                time_buckets + 1,  # 0 pads
                embedding_dim,
                embeddings_initializer=normal(
                    stddev=0.02, seed=None if seed is None else seed + 3
                ),
                name="age_embedding",
            )
            if time_buckets
            else None
        )
        self.item_feature_proj = (
            keras.layers.Dense(
                embedding_dim,
                kernel_initializer=seeded("glorot_uniform", seed, 4),
                name="item_feature_proj",
            )
            if num_item_features
            else None
        )
        self.input_dropout = keras.layers.Dropout(
            dropout, seed=None if seed is None else seed + 5
        )
        self.blocks = [
            CausalSelfAttentionBlock(
                embedding_dim,
                num_heads,
                dropout,
                seed=None if seed is None else seed + 100 * (i + 1),
                name=f"block_{i}",
            )
            for i in range(num_blocks)
        ]
        self.output_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, name="output_norm"
        )
        self.build()

    def build(self, input_shape=None):
        d, length = self.embedding_dim, self.history_length
        self.item_embedding.build((None,))
        self.position_embedding.build((None,))
        if self.age_embedding is not None:
            self.age_embedding.build((None,))
        if self.item_feature_proj is not None:
            self.item_feature_proj.build((None, self.num_item_features))
        for block in self.blocks:
            block.build((None, length, d), (None, length))
        self.output_norm.build((None, length, d))
        self.item_feature_table = None
        if self.num_item_features:
            # Row 0 (padding) stays zero; row i + 1 holds item i.
            self.item_feature_table = self.add_weight(
                shape=(self.num_items + 1, self.num_item_features),
                initializer="zeros",
                trainable=False,
                name="item_feature_table",
            )
        self.built = True

    def set_item_feature_table(self, features):
        """Store every item's `(num_items, F)` features in the model."""
        if self.item_feature_table is None:
            raise ValueError(
                "`set_item_feature_table` needs `num_item_features` > 0."
            )
        features = ops.cast(features, "float32")
        pad = ops.zeros((1, self.num_item_features), "float32")
        self.item_feature_table.assign(ops.concatenate([pad, features], 0))

    def item_vectors(self, ids, features=None):
        """Vectors of item ids + 1 (0 = padding, a zero vector)."""
        vectors = self.item_embedding(ids)
        if self.item_feature_proj is not None:
            if features is None:
                features = ops.take(self.item_feature_table, ids, axis=0)
            vectors = vectors + self.item_feature_proj(features)
        pad = ops.cast(ops.not_equal(ids, 0), vectors.dtype)
        return vectors * ops.expand_dims(pad, -1)

    def all_item_vectors(self):
        """`(num_items, embedding_dim)`: every catalog item's vector."""
        return self.item_vectors(ops.arange(1, self.num_items + 1))

    def encode_sequence(self, history, age=None, training=False):
        """`(batch, L, embedding_dim)`: each slot's output, newest first."""
        valid = ops.not_equal(history, 0)
        h = self.item_vectors(history) * float(self.embedding_dim) ** 0.5
        h = h + self.position_embedding(ops.arange(self.history_length))
        if self.age_embedding is not None and age is not None:
            known = ops.cast(ops.greater(age, 0), h.dtype)  # 0 = unknown
            h = h + self.age_embedding(age) * ops.expand_dims(known, -1)
        h = h * ops.expand_dims(ops.cast(valid, h.dtype), -1)
        h = self.input_dropout(h, training=training)
        for block in self.blocks:
            h = block(h, valid, training=training)
        return self.output_norm(h)

    def call(self, inputs, training=False):
        out = {}
        if "history" in inputs:
            sequence = self.encode_sequence(
                inputs["history"],
                inputs.get("history_age"),
                training=training,
            )
            if "target" in inputs:
                out["sequence"] = sequence
            out["user"] = sequence[:, 0]
        if "item" in inputs:
            out["item"] = self.item_vectors(
                inputs["item"] + 1, inputs.get("item_features")
            )
        return out

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Next-item softmax over the catalog at every slot with a target."""
        del y, sample_weight  # targets come with the inputs
        sequence = ops.cast(y_pred["sequence"], "float32")
        items = ops.cast(self.all_item_vectors(), "float32")
        target = x["target"]
        logits = ops.einsum("bld,nd->bln", sequence, items)
        loss = keras.losses.sparse_categorical_crossentropy(
            ops.maximum(target - 1, 0), logits, from_logits=True
        )
        weight = ops.cast(ops.not_equal(target, 0), loss.dtype)
        total = ops.sum(loss * weight) / ops.maximum(ops.sum(weight), 1.0)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "embedding_dim": self.embedding_dim,
            "history_length": self.history_length,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "num_item_features": self.num_item_features,
            "time_buckets": self.time_buckets,
            "l2": self.l2,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
