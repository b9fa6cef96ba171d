"""Two-tower retrieval: a user tower and an item tower meet in a dot product.

The user tower embeds the user id, the user's recent items (an embedding bag
over their history, with the training target hidden so the model learns to
predict the *next* item rather than to copy the history) and optional user
features. The item tower embeds the item id and optional item features. Both
end in an MLP and L2 normalisation, so a score is a cosine similarity.

Four losses: sampled softmax over in-batch negatives with logQ correction
(default), full-catalog softmax (every item is a negative, each step), BPR
over sampled negatives, and pointwise MSE on ratings.
"""

import keras
from keras import ops

from models.layers import MaskedMeanEmbedding
from models.layers import MLPTower
from models.layers import seeded

LOSSES = ("softmax", "full_softmax", "bpr", "mse")


@keras.saving.register_keras_serializable(package="recsys")
class TwoTower(keras.Model):
    """User tower + item tower scored by a dot product.

    A plain subclass (not functional) because the default loss needs the
    whole batch: every other item in the batch is a negative for each user.

    Args:
        num_users: int, number of user indices.
        num_items: int, number of item indices.
        embedding_dim: int, width of the output (scoring) embeddings.
        id_embedding_dim: int, width of the id and history tables.
        hidden_dims: tuple of ints, MLP widths in each tower.
        dropout: float in `[0, 1)`, dropout in the towers.
        l2: float >= 0, L2 penalty on the embedding tables.
        loss: `"softmax"` (in-batch sampled softmax), `"full_softmax"`
            (softmax over the whole catalog: every item's vector is
            computed each step, so the item features of all items live in
            the model, `set_item_feature_table`), `"bpr"` or `"mse"`.
        temperature: float > 0, divides the cosine logits.
        use_logq: bool, subtract log sampling probability from in-batch
            logits (Yi et al. 2019) so popular items are not over-penalised.
        history_length: int >= 0, items pooled in the user tower (0 = off).
        use_user_id: bool, give the user tower a user id embedding. Off,
            the user is represented by history and features alone, which
            generalises better when users have long histories, and serves
            users unseen in training (fold-in).
        num_user_features: int >= 0, width of the user feature vector.
        num_item_features: int >= 0, width of the item feature vector.
        seed: optional int for dropout.
        item_encoder: optional Keras layer mapping the item feature vector
            to the item tower's content input (e.g. the multimodal
            `MultimodalItemEncoder`), used instead of the linear feature
            projection; it must have an `output_dim` attribute.
        use_item_id: bool, give the item tower an item id embedding.
            Defaults to True. Off (with item features), items are
            represented by content alone, so items unseen in training
            (cold start) get meaningful vectors.
        mask_known: bool, with `"full_softmax"`: the items of the user's
            history input are not negatives (their logits are masked).

    Call arguments:
        inputs: dict with `"user"` `(batch,)` (and `"history"` `(batch, L)`
            item+1 ids with 0 as padding, `"user_features"`) for the user
            side, and/or `"item"` `(batch,)` (and `"item_features"`) for the
            item side; training batches may add `"neg_item"`
            `(batch, num_negatives)`, `"neg_item_features"` and
            `"item_logq"` `(batch,)`.

    Returns:
        dict with `"user"` and/or `"item"` `(batch, embedding_dim)` and,
        when negatives are given, `"neg_item"`
        `(batch, num_negatives, embedding_dim)`.

    References:
        Yi et al. 2019, Sampling-Bias-Corrected Neural Modeling for Large
        Corpus Item Recommendations. Covington et al. 2016, Deep Neural
        Networks for YouTube Recommendations. Rendle et al. 2009, BPR.
    """

    def __init__(
        self,
        num_users,
        num_items,
        embedding_dim=64,
        id_embedding_dim=64,
        hidden_dims=(256,),
        dropout=0.1,
        l2=0.0,
        loss="softmax",
        temperature=0.05,
        use_logq=True,
        history_length=0,
        use_user_id=True,
        num_user_features=0,
        num_item_features=0,
        seed=None,
        item_encoder=None,
        use_item_id=True,
        mask_known=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(item_encoder, dict):
            item_encoder = keras.layers.deserialize(item_encoder)
        if item_encoder is not None and num_item_features < 1:
            raise ValueError(
                "`item_encoder` needs `num_item_features` > 0. Received: "
                f"{num_item_features}"
            )
        if not use_item_id and num_item_features < 1:
            raise ValueError(
                "The item tower needs an input: `use_item_id` or "
                "`num_item_features` > 0."
            )
        if loss not in LOSSES:
            raise ValueError(
                f"`loss` must be one of {LOSSES}. Received: {loss!r}"
            )
        if temperature <= 0:
            raise ValueError(
                f"`temperature` must be > 0. Received: {temperature}"
            )
        if loss == "full_softmax" and item_encoder is not None:
            raise ValueError(
                "`loss='full_softmax'` encodes the whole catalog every step, "
                "which the multimodal item encoder makes too costly: use "
                "`loss='softmax'` (in-batch) with it."
            )
        if not use_user_id and history_length < 1 and num_user_features < 1:
            raise ValueError(
                "The user tower needs an input: `use_user_id`, "
                "`history_length` > 0 or `num_user_features` > 0."
            )
        if num_users < 1 or num_items < 1:
            raise ValueError(
                "`num_users` and `num_items` must be >= 1. Received: "
                f"{num_users}, {num_items}"
            )
        # === Config ===
        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.id_embedding_dim = id_embedding_dim
        self.hidden_dims = tuple(hidden_dims)
        self.dropout = dropout
        self.l2 = l2
        self.loss_name = loss
        self.temperature = temperature
        self.use_logq = use_logq
        self.history_length = history_length
        self.use_user_id = use_user_id
        self.num_user_features = num_user_features
        self.num_item_features = num_item_features
        self.seed = seed
        self.item_encoder = item_encoder
        self.use_item_id = use_item_id
        self.mask_known = bool(mask_known)

        # === Layers ===
        reg = keras.regularizers.L2(l2) if l2 > 0 else None
        self.user_embedding = (
            keras.layers.Embedding(
                num_users,
                id_embedding_dim,
                embeddings_initializer=seeded("uniform", seed, 1),
                embeddings_regularizer=reg,
                name="user_embedding",
            )
            if use_user_id
            else None
        )
        self.item_embedding = (
            keras.layers.Embedding(
                num_items,
                id_embedding_dim,
                embeddings_initializer=seeded("uniform", seed, 2),
                embeddings_regularizer=reg,
                name="item_embedding",
            )
            if use_item_id
            else None
        )
        self.history_embedding = (
            MaskedMeanEmbedding(
                num_items + 1,
                id_embedding_dim,
                embeddings_regularizer=reg,
                seed=None if seed is None else seed + 3,
                name="history_embedding",
            )
            if history_length > 0
            else None
        )
        self.user_feature_proj = (
            keras.layers.Dense(
                id_embedding_dim,
                kernel_initializer=seeded("glorot_uniform", seed, 4),
                name="user_feature_proj",
            )
            if num_user_features > 0
            else None
        )
        self.item_feature_proj = (
            keras.layers.Dense(
                id_embedding_dim,
                kernel_initializer=seeded("glorot_uniform", seed, 5),
                name="item_feature_proj",
            )
            if num_item_features > 0 and item_encoder is None
            else None
        )
        self.user_tower = MLPTower(
            hidden_dims, embedding_dim, dropout, seed=seed, name="user_tower"
        )
        self.item_tower = MLPTower(
            hidden_dims,
            embedding_dim,
            dropout,
            seed=None if seed is None else seed + 1000,
            name="item_tower",
        )
        self.build()

    def build(self, input_shape=None):
        d = self.id_embedding_dim
        user_width = 0
        if self.user_embedding is not None:
            self.user_embedding.build((None,))
            user_width += d
        if self.history_embedding is not None:
            self.history_embedding.build((None, self.history_length))
            user_width += d
        if self.user_feature_proj is not None:
            self.user_feature_proj.build((None, self.num_user_features))
            user_width += d
        item_width = 0
        if self.item_embedding is not None:
            self.item_embedding.build((None,))
            item_width += d
        if self.item_feature_proj is not None:
            self.item_feature_proj.build((None, self.num_item_features))
            item_width += d
        if self.item_encoder is not None:
            if not self.item_encoder.built:  # deserialized ones come built
                self.item_encoder.build((None, self.num_item_features))
            item_width += self.item_encoder.output_dim
        self.user_tower.build((None, user_width))
        self.item_tower.build((None, item_width))
        self.item_feature_table = None
        if self.loss_name == "full_softmax" and self.num_item_features:
            # Every item is scored each step, so the model keeps the item
            # features of the whole catalog (set by the recommender).
            self.item_feature_table = self.add_weight(
                shape=(self.num_items, self.num_item_features),
                initializer="zeros",
                trainable=False,
                name="item_feature_table",
            )
        self.built = True

    def set_item_feature_table(self, features):
        """Store every item's features for `"full_softmax"` training."""
        if self.item_feature_table is None:
            raise ValueError(
                "`set_item_feature_table` needs `loss='full_softmax'` and "
                "`num_item_features` > 0."
            )
        self.item_feature_table.assign(ops.cast(features, "float32"))

    def all_item_vectors(self, training=False):
        """`(num_items, embedding_dim)`: the item tower over the catalog."""
        return self.encode_item(
            ops.arange(self.num_items),
            self.item_feature_table,
            training=training,
        )

    def call(self, inputs, training=False):
        out = {}
        if "user" in inputs:
            out["user"] = self.encode_user(inputs, training=training)
        # Full-catalog training scores every item in the loss; the batch's
        # own item vectors would go unused.
        skip_items = training and self.loss_name == "full_softmax"
        if "item" in inputs and not skip_items:
            out["item"] = self.encode_item(
                inputs["item"], inputs.get("item_features"), training=training
            )
        if "neg_item" in inputs:
            neg = inputs["neg_item"]
            feats = inputs.get("neg_item_features")
            flat_feats = (
                None
                if feats is None
                else ops.reshape(feats, (-1, self.num_item_features))
            )
            flat = self.encode_item(
                ops.reshape(neg, (-1,)), flat_feats, training=training
            )
            out["neg_item"] = ops.reshape(
                flat, (-1, ops.shape(neg)[1], self.embedding_dim)
            )
        return out

    def encode_user(self, inputs, training=False):
        parts = []
        if self.user_embedding is not None:
            parts.append(self.user_embedding(inputs["user"]))
        if self.history_embedding is not None:
            parts.append(self.history_embedding(inputs["history"]))
        if self.user_feature_proj is not None:
            parts.append(self.user_feature_proj(inputs["user_features"]))
        return self.user_tower(
            ops.concatenate(parts, axis=-1), training=training
        )

    def encode_item(self, item, features=None, training=False):
        parts = []
        if self.item_embedding is not None:
            parts.append(self.item_embedding(item))
        if self.item_feature_proj is not None:
            parts.append(self.item_feature_proj(features))
        if self.item_encoder is not None:
            parts.append(self.item_encoder(features, training=training))
        return self.item_tower(
            ops.concatenate(parts, axis=-1), training=training
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # Under a mixed policy the towers run in bfloat16/float16; logits,
        # softmax and the loss need float32 range and precision.
        u = ops.cast(y_pred["user"], "float32")
        if self.loss_name == "full_softmax":
            items = ops.cast(self.all_item_vectors(training=True), "float32")
            logits = ops.matmul(u, ops.transpose(items)) / self.temperature
            if self.mask_known and "history" in x:
                logits = _mask_history(logits, x["history"], x["item"])
            loss = keras.losses.sparse_categorical_crossentropy(
                x["item"], logits, from_logits=True
            )
        elif self.loss_name == "softmax":
            v = ops.cast(y_pred["item"], "float32")
            logits = ops.matmul(u, ops.transpose(v)) / self.temperature
            if self.use_logq and "item_logq" in x:
                logits = (
                    logits - ops.cast(x["item_logq"], logits.dtype)[None, :]
                )
            # The same item twice in a batch is not a negative for itself.
            item = x["item"]
            batch = ops.shape(item)[0]
            same = ops.equal(item[:, None], item[None, :])
            eye = ops.cast(ops.eye(batch), "bool")
            clash = ops.logical_and(same, ops.logical_not(eye))
            logits = ops.where(clash, ops.cast(-1e9, logits.dtype), logits)
            labels = ops.arange(batch)
            loss = keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True
            )
        elif self.loss_name == "bpr":
            v = ops.cast(y_pred["item"], "float32")
            pos = ops.sum(u * v, axis=-1, keepdims=True)
            neg = ops.einsum(
                "bd,bnd->bn", u, ops.cast(y_pred["neg_item"], "float32")
            )
            loss = -ops.mean(
                ops.log_sigmoid((pos - neg) / self.temperature), axis=-1
            )
        else:
            v = ops.cast(y_pred["item"], "float32")
            pred = ops.sum(u * v, axis=-1)
            loss = ops.square(pred - ops.cast(y, pred.dtype))
        if sample_weight is not None:
            loss = loss * ops.cast(sample_weight, loss.dtype)
        total = ops.mean(loss)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "embedding_dim": self.embedding_dim,
            "id_embedding_dim": self.id_embedding_dim,
            "hidden_dims": self.hidden_dims,
            "dropout": self.dropout,
            "l2": self.l2,
            "loss": self.loss_name,
            "temperature": self.temperature,
            "use_logq": self.use_logq,
            "history_length": self.history_length,
            "use_user_id": self.use_user_id,
            "num_user_features": self.num_user_features,
            "num_item_features": self.num_item_features,
            "seed": self.seed,
            "item_encoder": None
            if self.item_encoder is None
            else keras.layers.serialize(self.item_encoder),
            "use_item_id": self.use_item_id,
            "mask_known": self.mask_known,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _mask_history(logits, history, target):
    """`logits` `(batch, num_items)` with the items of each row's history
    (`(batch, L)` ids + 1, 0 = padding) set to -1e9, except the target."""
    batch, length = ops.shape(history)[0], ops.shape(history)[1]
    rows = ops.repeat(ops.arange(batch)[:, None], length, axis=1)
    known = ops.scatter(
        ops.stack(
            [
                ops.reshape(rows, (-1,)),
                ops.reshape(ops.maximum(history - 1, 0), (-1,)),
            ],
            axis=1,
        ),
        ops.reshape(ops.cast(history > 0, logits.dtype), (-1,)),
        ops.shape(logits),
    )
    target = ops.one_hot(target, ops.shape(logits)[1], dtype=logits.dtype)
    masked = ops.logical_and(known > 0, target <= 0)
    return ops.where(masked, ops.cast(-1e9, logits.dtype), logits)
