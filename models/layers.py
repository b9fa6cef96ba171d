"""Small reusable Keras layers shared by the model families.

Every layer here uses `keras.ops` only, is registered for `.keras` saving,
and round-trips through `get_config()`.
"""

import keras
from keras import ops


def seeded(kind, seed, offset=0):
    """A Keras initializer of `kind` (`"uniform"`: Keras's embedding
    default U(-0.05, 0.05); `"glorot_uniform"`: its Dense default) seeded
    with `seed + offset`, so a model's initial weights depend on its own
    seed alone, not on what was built before it; unseeded when `seed` is
    None."""
    seed = None if seed is None else int(seed) + int(offset)
    if kind == "uniform":
        return keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
    if kind == "glorot_uniform":
        return keras.initializers.GlorotUniform(seed=seed)
    raise ValueError(
        f"`kind` must be 'uniform' or 'glorot_uniform'. Received: {kind!r}"
    )


@keras.saving.register_keras_serializable(package="recsys")
class MaskedMeanEmbedding(keras.layers.Layer):
    """Mean of the embeddings of a padded list of ids (an "embedding bag").

    Id 0 is padding and is ignored; real ids are `1..num_embeddings-1`.
    A row with no real id gets the zero vector.

    Args:
        num_embeddings: int, table size including the padding row 0.
        embedding_dim: int, width of each embedding.
        embeddings_regularizer: optional regularizer for the table.
        seed: optional int seeding the table's initializer.

    Call arguments:
        ids: `(batch, length)` int tensor.
        keep: optional `(batch, length)` 0/1 float tensor that hides more
            slots (e.g. the target item, or history dropout).

    Returns:
        `(batch, embedding_dim)` tensor.
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        embeddings_regularizer=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_embeddings < 2:
            raise ValueError(
                "`num_embeddings` must be >= 2 (padding + one id). "
                f"Received: {num_embeddings}"
            )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.embeddings_regularizer = keras.regularizers.get(
            embeddings_regularizer
        )
        self.seed = seed
        self.embedding = keras.layers.Embedding(
            num_embeddings,
            embedding_dim,
            embeddings_initializer=seeded("uniform", seed),
            embeddings_regularizer=self.embeddings_regularizer,
            dtype=self.dtype_policy,
            name="embedding",
        )

    def build(self, ids_shape, keep_shape=None):
        self.embedding.build(ids_shape)
        self.built = True

    def call(self, ids, keep=None):
        if keep is not None:
            ids = ops.where(ops.cast(keep, "bool"), ids, 0)
        # Padding reads row 0 of a table whose row 0 is zeroed here, so the
        # sum needs no (batch, length, dim) mask.
        table = (
            self.embedding.embeddings
            * ops.cast(
                ops.arange(self.num_embeddings) > 0,
                self.embedding.embeddings.dtype,
            )[:, None]
        )
        total = ops.sum(ops.take(table, ids, axis=0), axis=1)  # (batch, dim)
        count = ops.sum(
            ops.cast(ops.not_equal(ids, 0), total.dtype), axis=1, keepdims=True
        )
        return total / ops.maximum(count, 1.0)

    def compute_output_shape(self, ids_shape, keep_shape=None):
        return (ids_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim,
                "embeddings_regularizer": keras.regularizers.serialize(
                    self.embeddings_regularizer
                ),
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class MLPTower(keras.layers.Layer):
    """Dense layers with dropout, a linear output, and optional L2 norm.

    Args:
        hidden_dims: tuple of ints, widths of the hidden layers.
        output_dim: int, width of the output.
        dropout: float in `[0, 1)`, dropout after each hidden layer.
        activation: hidden activation, default `"gelu"`.
        normalize: bool, L2-normalise the output (cosine geometry).
        seed: optional int for the initializers and dropout
            SeedGenerators.

    Returns:
        `(batch, output_dim)` tensor.
    """

    def __init__(
        self,
        hidden_dims=(256,),
        output_dim=64,
        dropout=0.0,
        activation="gelu",
        normalize=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        if output_dim < 1:
            raise ValueError(
                f"`output_dim` must be >= 1. Received: {output_dim}"
            )
        self.hidden_dims = tuple(int(d) for d in hidden_dims)
        self.output_dim = output_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.normalize = normalize
        self.seed = seed
        self.hidden = [
            keras.layers.Dense(
                d,
                activation=self.activation,
                kernel_initializer=seeded("glorot_uniform", seed, 100 + i),
                dtype=self.dtype_policy,
                name=f"hidden_{i}",
            )
            for i, d in enumerate(self.hidden_dims)
        ]
        self.dropouts = [
            keras.layers.Dropout(
                dropout,
                seed=None if seed is None else seed + i,
                dtype=self.dtype_policy,
            )
            for i in range(len(self.hidden_dims))
        ]
        self.out = keras.layers.Dense(
            output_dim,
            kernel_initializer=seeded("glorot_uniform", seed, 99),
            dtype=self.dtype_policy,
            name="output",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense in self.hidden:
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
        self.out.build(shape)
        self.built = True

    def call(self, x, training=False):
        for dense, drop in zip(self.hidden, self.dropouts):
            x = drop(dense(x), training=training)
        x = self.out(x)
        if self.normalize:
            x = x / ops.sqrt(
                ops.maximum(
                    ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12
                )
            )
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dims": self.hidden_dims,
                "output_dim": self.output_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "normalize": self.normalize,
                "seed": self.seed,
            }
        )
        return config


def l2_normalize(x):
    """`x` scaled to unit L2 norm on its last axis (norms floored at 1e-6,
    so an all-zero row stays zero)."""
    return x / ops.sqrt(
        ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12)
    )
