"""Neural Collaborative Filtering (NeuMF): GMF and an MLP fused into a logit.

He et al. 2017 score a (user, item) pair with two branches over separate
embeddings: GMF, the element-wise product of a user and an item vector (a
generalised matrix factorisation), and an MLP over their concatenation. A
final dense layer over both branches' last vectors gives one logit.

The item side can be an id embedding, a projection of a fixed item vector
(a text, image or multimodal embedding), or the sum of both. With features
only, the model scores a user against ANY vector: items unseen in training,
or vectors that belong to no catalog item at all.

Two losses: pointwise binary cross-entropy (graded targets allowed) and BPR
over sampled negatives. Rendle et al. 2020 show that a well-tuned dot
product often beats the learned MLP similarity, so NCF is always benchmarked
against strong matrix-factorisation baselines, never on its own.
"""

import keras
import numpy as np
from keras import ops

from models.layers import seeded

ITEM_INPUTS = ("id", "features", "both")
LOSSES = ("bce", "bpr")

# Arguments that fix the weight shapes: `NCF.from_pretrained` takes them from
# the pretrained models and refuses overrides.
_ARCHITECTURE_ARGS = (
    "num_users",
    "num_items",
    "item_input",
    "num_item_features",
    "gmf_dim",
    "mlp_embedding_dim",
    "mlp_dims",
    "use_gmf",
    "use_mlp",
)


@keras.saving.register_keras_serializable(package="recsys")
class NCF(keras.Model):
    """NeuMF: a GMF branch and an MLP branch fused into one logit per pair.

    A plain subclass (not functional) because the BPR loss pairs each
    positive with the sampled negatives of the same row.

    GMF: `u_gmf * v_gmf` (element-wise, `gmf_dim` wide). MLP:
    `concat(u_mlp, v_mlp)` through ReLU dense layers of widths `mlp_dims`.
    Fusion: `Dense(1)` over `concat(GMF vector, last MLP vector)`. The two
    branches have their own user and item representations, as in the paper.
    With `mlp_dims=()` the MLP vector is the concatenation itself.

    Args:
        num_users: int >= 1, number of user indices.
        num_items: int >= 1, number of item indices (unused by the weights
            when `item_input="features"`).
        item_input: str, how an item is represented. `"id"` (default): an
            id embedding per branch. `"features"`: a linear projection
            (`Dense`, no id embedding at all) of the item vector given as
            `"item_features"`. `"both"`: the sum of the two.
        num_item_features: int >= 0, width F of the item vector; must be
            > 0 for `"features"` and `"both"`, ignored for `"id"`.
            Defaults to 0.
        gmf_dim: int >= 1, width of the GMF user and item vectors.
            Defaults to 32.
        mlp_embedding_dim: int >= 1, width of the MLP user and item vectors.
            Defaults to 32.
        mlp_dims: tuple of ints >= 1, widths of the ReLU MLP layers; the
            last one is the MLP's "predictive factors". Defaults to
            `(64, 32, 16)`.
        dropout: float in `[0, 1)`, dropout after each MLP layer.
            Defaults to 0.0.
        l2: float >= 0, L2 penalty on the user and item embedding tables and
            on the item feature projections (which replace the item table in
            `"features"` mode). Defaults to 0.0 (off).
        use_gmf: bool, include the GMF branch. Defaults to True.
        use_mlp: bool, include the MLP branch. Defaults to True. A model
            with one branch only is the paper's GMF or MLP, the pretraining
            stage for `NCF.from_pretrained`.
        loss: `"bce"` (default) or `"bpr"`, see `compute_loss`.
        seed: optional int for the dropout layers.
        item_encoder: optional Keras layer (with an `output_dim` attribute)
            applied to the item vector before the feature projections, e.g.
            the multimodal `MultimodalItemEncoder`; it is trained with the
            model. Needs `item_input` "features" or "both".

    Call arguments:
        inputs: dict with `"user"` `(batch,)` int; `"item"` `(batch,)` int
            (optional with `item_input="features"`); `"item_features"`
            `(batch, F)` float when features are used. Training batches may
            add sampled negatives: `"neg_item"` `(batch, n)` int and/or
            `"neg_item_features"` `(batch, n, F)` float. With an
            `item_encoder`, `"item_vector"` (its output, e.g. computed once
            per item for scoring many users) may replace `"item_features"`,
            and a dict with `"item_features"` and no `"user"` returns
            `{"item_vector": ...}` only.
        training: bool, turns dropout on.

    Returns:
        dict with `"logit"` `(batch,)`, the score of each (user, item)
        pair (`sigmoid(logit)` is a like probability under the BCE loss),
        and, when negatives are given, `"neg_logit"` `(batch, n)`.

    Example:

    ```python
    model = NCF(num_users=100, num_items=50, gmf_dim=8,
                mlp_embedding_dim=8, mlp_dims=(16, 8))
    model.compile(optimizer="adam")
    x = {"user": users, "item": items, "neg_item": negatives}
    model.fit(x, labels, batch_size=256)
    probs = keras.ops.sigmoid(model.score_pairs({"user": u, "item": i}))
    ```

    References:
        He et al. 2017, Neural Collaborative Filtering (WWW).
        Rendle et al. 2009, BPR: Bayesian Personalized Ranking from
        Implicit Feedback (UAI).
        Rendle, Krichene, Zhang, Anderson 2020, Neural Collaborative
        Filtering vs. Matrix Factorization Revisited (RecSys).
    """

    def __init__(
        self,
        num_users,
        num_items,
        item_input="id",
        num_item_features=0,
        gmf_dim=32,
        mlp_embedding_dim=32,
        mlp_dims=(64, 32, 16),
        dropout=0.0,
        l2=0.0,
        use_gmf=True,
        use_mlp=True,
        loss="bce",
        seed=None,
        item_encoder=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(item_encoder, dict):
            item_encoder = keras.layers.deserialize(item_encoder)
        if item_encoder is not None and item_input == "id":
            raise ValueError(
                "`item_encoder` needs `item_input` 'features' or 'both'. "
                f"Received: item_input={item_input!r}"
            )
        mlp_dims = _validate_args(
            num_users,
            num_items,
            item_input,
            num_item_features,
            gmf_dim,
            mlp_embedding_dim,
            mlp_dims,
            dropout,
            l2,
            use_gmf,
            use_mlp,
            loss,
        )
        # === Config ===
        # int() so NumPy integers from a dataset still serialise to JSON.
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.item_input = item_input
        self.num_item_features = int(num_item_features)
        self.gmf_dim = int(gmf_dim)
        self.mlp_embedding_dim = int(mlp_embedding_dim)
        self.mlp_dims = mlp_dims
        self.dropout = dropout
        self.l2 = l2
        self.use_gmf = use_gmf
        self.use_mlp = use_mlp
        self.loss_name = loss
        self.seed = seed
        self.item_encoder = item_encoder

        # === Layers ===
        reg = keras.regularizers.L2(l2) if l2 > 0 else None
        use_ids = item_input in ("id", "both")
        use_features = item_input in ("features", "both")
        self.gmf_user_embedding = None
        self.gmf_item_embedding = None
        self.gmf_item_projection = None
        self.mlp_user_embedding = None
        self.mlp_item_embedding = None
        self.mlp_item_projection = None
        self.mlp_layers = []
        self.mlp_dropouts = []
        if use_gmf:
            (
                self.gmf_user_embedding,
                self.gmf_item_embedding,
                self.gmf_item_projection,
            ) = self._branch_inputs("gmf", gmf_dim, use_ids, use_features, reg)
        if use_mlp:
            (
                self.mlp_user_embedding,
                self.mlp_item_embedding,
                self.mlp_item_projection,
            ) = self._branch_inputs(
                "mlp", mlp_embedding_dim, use_ids, use_features, reg
            )
            self.mlp_layers = [
                keras.layers.Dense(
                    units,
                    activation="relu",
                    kernel_initializer=seeded("glorot_uniform", seed, 20 + i),
                    dtype=self.dtype_policy,
                    name=f"mlp_{i}",
                )
                for i, units in enumerate(mlp_dims)
            ]
            self.mlp_dropouts = [
                keras.layers.Dropout(
                    dropout,
                    seed=None if seed is None else seed + i,
                    dtype=self.dtype_policy,
                    name=f"mlp_dropout_{i}",
                )
                for i in range(len(mlp_dims))
            ]
        self.prediction = keras.layers.Dense(
            1,
            kernel_initializer=seeded("glorot_uniform", seed, 19),
            dtype=self.dtype_policy,
            name="prediction",
        )
        self.build()

    def build(self, input_shape=None):
        features_shape = (None, self.num_item_features)
        if self.item_encoder is not None:
            if not self.item_encoder.built:  # deserialized ones come built
                self.item_encoder.build(features_shape)
            features_shape = (None, self.item_encoder.output_dim)
        fused_width = 0
        if self.use_gmf:
            self._build_branch("gmf", features_shape)
            fused_width += self.gmf_dim
        if self.use_mlp:
            self._build_branch("mlp", features_shape)
            width = 2 * self.mlp_embedding_dim
            for dense in self.mlp_layers:
                dense.build((None, width))
                width = dense.units
            fused_width += width
        self.prediction.build((None, fused_width))
        self.built = True

    def _branch_inputs(self, branch, width, use_ids, use_features, reg):
        """The user embedding, item embedding and item-feature projection
        of one branch (`gmf` or `mlp`), `width` wide; absent parts None."""
        offset = 0 if branch == "gmf" else 10
        user = keras.layers.Embedding(
            self.num_users,
            width,
            embeddings_initializer=seeded("uniform", self.seed, offset + 1),
            embeddings_regularizer=reg,
            dtype=self.dtype_policy,
            name=f"{branch}_user_embedding",
        )
        item = projection = None
        if use_ids:
            item = keras.layers.Embedding(
                self.num_items,
                width,
                embeddings_initializer=seeded("uniform", self.seed, offset + 2),
                embeddings_regularizer=reg,
                dtype=self.dtype_policy,
                name=f"{branch}_item_embedding",
            )
        if use_features:
            projection = keras.layers.Dense(
                width,
                kernel_initializer=seeded(
                    "glorot_uniform", self.seed, offset + 3
                ),
                kernel_regularizer=reg,
                dtype=self.dtype_policy,
                name=f"{branch}_item_projection",
            )
        return user, item, projection

    def _build_branch(self, branch, features_shape):
        getattr(self, f"{branch}_user_embedding").build((None,))
        item = getattr(self, f"{branch}_item_embedding")
        if item is not None:
            item.build((None,))
        projection = getattr(self, f"{branch}_item_projection")
        if projection is not None:
            projection.build(features_shape)

    def call(self, inputs, training=False):
        if "user" not in inputs and self.item_encoder is not None:
            return {
                "item_vector": self.item_encoder(
                    inputs["item_features"], training=training
                )
            }
        user = inputs["user"]
        out = {
            "logit": self._logit(
                user,
                inputs.get("item"),
                self._encoded(inputs, "item", training),
                training=training,
            )
        }
        if "neg_item" in inputs or "neg_item_features" in inputs:
            out["neg_logit"] = self._logit(
                user,
                inputs.get("neg_item"),
                self._encoded(inputs, "neg_item", training),
                training=training,
            )
        return out

    def score_pairs(self, inputs):
        """Logits of aligned (user, item) pairs, dropout off.

        Args:
            inputs: dict with `"user"` `(batch,)` and the item side as in
                `call` (`"item"` and/or `"item_features"`); negatives are
                ignored.

        Returns:
            `(batch,)` logits, the `"logit"` that `call` (and so
            `predict`) returns. For large arrays use
            `model.predict(inputs)["logit"]`, which batches.
        """
        return self._logit(
            inputs["user"],
            inputs.get("item"),
            self._encoded(inputs, "item", False),
            training=False,
        )

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """The training loss, plus the L2 penalties in `self.losses`.

        `"bce"`: binary cross-entropy from logits. Each positive pair has
        target `y` (float in [0, 1]: 1 = liked, 0 = disliked, fractions for
        graded feedback; all ones when `y` is None) and each sampled
        negative has target 0. The result is the plain mean over all
        `batch * (1 + n)` terms, so a positive and a sampled negative weigh
        the same; `sample_weight` `(batch,)` scales every term of its row.

        `"bpr"`: `-mean(log_sigmoid(logit - neg_logit))` over the
        `(batch, n)` (positive, negative) pairs; `y` is ignored and
        negatives are required.
        """
        # float32 whatever the dtype policy: softplus of a bfloat16 logit
        # loses the small differences the loss is made of.
        logit = ops.cast(y_pred["logit"], "float32")
        neg_logit = y_pred.get("neg_logit")
        if neg_logit is not None:
            neg_logit = ops.cast(neg_logit, logit.dtype)
        if self.loss_name == "bce":
            if y is None:
                target = ops.ones_like(logit)
            else:
                target = ops.reshape(ops.cast(y, logit.dtype), ops.shape(logit))
            # softplus(z) - z * t is the cross-entropy of sigmoid(z) against
            # t, stable for large |z| (no log of a rounded probability).
            terms = ops.softplus(logit) - logit * target
            terms = terms[:, None]  # (batch, 1)
            if neg_logit is not None:
                # (batch, 1 + n): a negative's target is 0.
                terms = ops.concatenate(
                    [terms, ops.softplus(neg_logit)], axis=1
                )
        else:
            if neg_logit is None:
                raise ValueError(
                    "The `bpr` loss needs sampled negatives: pass "
                    '`"neg_item"` (or `"neg_item_features"`) in `x`.'
                )
            terms = -ops.log_sigmoid(logit[:, None] - neg_logit)  # (batch, n)
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, terms.dtype), (-1, 1))
            terms = terms * weight
        total = ops.mean(terms)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    @classmethod
    def from_pretrained(cls, gmf_model, mlp_model, alpha=0.5, **overrides):
        """A NeuMF initialised from a pretrained GMF and a pretrained MLP.

        He et al. 2017, section 3.4.1: the GMF embeddings come from
        `gmf_model`, the MLP embeddings and layers from `mlp_model`, and the
        output layer is `concat(alpha * h_gmf, (1 - alpha) * h_mlp)` with
        bias `alpha * b_gmf + (1 - alpha) * b_mlp`, so the new model's logit
        starts as `alpha * logit_gmf + (1 - alpha) * logit_mlp`.

        Args:
            gmf_model: an `NCF` with `use_gmf=True, use_mlp=False`.
            mlp_model: an `NCF` with `use_gmf=False, use_mlp=True`, over the
                same users, items and item input.
            alpha: float in [0, 1], weight of the GMF output layer.
                Defaults to 0.5 (the paper's choice).
            **overrides: constructor arguments that do not change weight
                shapes (`dropout`, `l2`, `loss`, `seed`, `name`, ...).
                `dropout` defaults to the MLP model's; `l2` and `loss` to the
                value both models share (required when they differ).

        Returns:
            A built `NCF` with both branches.
        """
        if not isinstance(gmf_model, NCF) or not isinstance(mlp_model, NCF):
            raise ValueError(
                "`gmf_model` and `mlp_model` must be `NCF` models. Received: "
                f"{type(gmf_model).__name__}, {type(mlp_model).__name__}"
            )
        if not gmf_model.use_gmf or gmf_model.use_mlp:
            raise ValueError(
                "`gmf_model` must be a GMF-only NCF (use_gmf=True, "
                f"use_mlp=False). Received: use_gmf={gmf_model.use_gmf}, "
                f"use_mlp={gmf_model.use_mlp}"
            )
        if mlp_model.use_gmf or not mlp_model.use_mlp:
            raise ValueError(
                "`mlp_model` must be an MLP-only NCF (use_gmf=False, "
                f"use_mlp=True). Received: use_gmf={mlp_model.use_gmf}, "
                f"use_mlp={mlp_model.use_mlp}"
            )
        for arg in ("num_users", "num_items", "item_input"):
            a, b = getattr(gmf_model, arg), getattr(mlp_model, arg)
            if a != b:
                raise ValueError(
                    f"`gmf_model` and `mlp_model` must share `{arg}`. "
                    f"Received: {a!r} and {b!r}"
                )
        if gmf_model.item_input != "id" and (
            gmf_model.num_item_features != mlp_model.num_item_features
        ):
            raise ValueError(
                "`gmf_model` and `mlp_model` must share "
                "`num_item_features`. Received: "
                f"{gmf_model.num_item_features} and "
                f"{mlp_model.num_item_features}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: {alpha}")
        fixed = sorted(set(overrides) & set(_ARCHITECTURE_ARGS))
        if fixed:
            raise ValueError(
                "`overrides` cannot change the architecture taken from the "
                f"pretrained models. Received: {fixed}"
            )
        config = {
            "num_users": gmf_model.num_users,
            "num_items": gmf_model.num_items,
            "item_input": gmf_model.item_input,
            "num_item_features": gmf_model.num_item_features,
            "gmf_dim": gmf_model.gmf_dim,
            "mlp_embedding_dim": mlp_model.mlp_embedding_dim,
            "mlp_dims": mlp_model.mlp_dims,
            "use_gmf": True,
            "use_mlp": True,
            "dropout": mlp_model.dropout,
            "seed": mlp_model.seed,
        }
        for arg, gmf_value, mlp_value in (
            ("l2", gmf_model.l2, mlp_model.l2),
            ("loss", gmf_model.loss_name, mlp_model.loss_name),
        ):
            if arg not in overrides and gmf_value != mlp_value:
                raise ValueError(
                    f"The pretrained models differ in `{arg}`: pass it in "
                    f"`overrides`. Received: {gmf_value!r} and {mlp_value!r}"
                )
            config[arg] = gmf_value
        config.update(overrides)
        model = cls(**config)

        for name in (
            "gmf_user_embedding",
            "gmf_item_embedding",
            "gmf_item_projection",
        ):
            _copy_weights(getattr(gmf_model, name), getattr(model, name))
        for name in (
            "mlp_user_embedding",
            "mlp_item_embedding",
            "mlp_item_projection",
        ):
            _copy_weights(getattr(mlp_model, name), getattr(model, name))
        for source, target in zip(mlp_model.mlp_layers, model.mlp_layers):
            _copy_weights(source, target)
        gmf_kernel, gmf_bias = gmf_model.prediction.get_weights()
        mlp_kernel, mlp_bias = mlp_model.prediction.get_weights()
        model.prediction.set_weights(
            [
                np.concatenate(
                    [alpha * gmf_kernel, (1.0 - alpha) * mlp_kernel], axis=0
                ),
                alpha * gmf_bias + (1.0 - alpha) * mlp_bias,
            ]
        )
        return model

    def get_config(self):
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "item_input": self.item_input,
            "num_item_features": self.num_item_features,
            "gmf_dim": self.gmf_dim,
            "mlp_embedding_dim": self.mlp_embedding_dim,
            "mlp_dims": self.mlp_dims,
            "dropout": self.dropout,
            "l2": self.l2,
            "use_gmf": self.use_gmf,
            "use_mlp": self.use_mlp,
            "loss": self.loss_name,
            "seed": self.seed,
            "item_encoder": None
            if self.item_encoder is None
            else keras.layers.serialize(self.item_encoder),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _encoded(self, inputs, prefix, training):
        """The item side's feature vector: `<prefix>_features` through the
        item encoder (or a precomputed `<prefix>_vector`), or the raw
        features without an encoder."""
        features = inputs.get(f"{prefix}_features")
        if self.item_encoder is None:
            return features
        if f"{prefix}_vector" in inputs:
            return inputs[f"{prefix}_vector"]
        if features is None:
            return None
        return self.item_encoder(features, training=training)

    def _item_vector(self, embedding, projection, item, features):
        """One branch's item representation, for `(batch,)` or `(batch, n)`
        items: the id embedding, the feature projection, or their sum."""
        parts = []
        if embedding is not None:
            if item is None:
                raise ValueError(
                    f"`item_input={self.item_input!r}` needs item ids: pass "
                    '`"item"` (and `"neg_item"` for negatives).'
                )
            parts.append(embedding(item))
        if projection is not None:
            if features is None:
                raise ValueError(
                    f"`item_input={self.item_input!r}` needs item vectors: "
                    'pass `"item_features"` (and `"neg_item_features"` for '
                    "negatives)."
                )
            parts.append(projection(ops.cast(features, self.compute_dtype)))
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _logit(self, user, item, features, training=False):
        """Logits for `(batch,)` items, or `(batch, n)` items all scored
        against their row's user."""
        factors = []
        if self.use_gmf:
            u = self.gmf_user_embedding(user)
            v = self._item_vector(
                self.gmf_item_embedding,
                self.gmf_item_projection,
                item,
                features,
            )
            if len(v.shape) == 3:
                u = u[:, None, :]  # (batch, 1, gmf_dim)
            factors.append(u * v)
        if self.use_mlp:
            u = self.mlp_user_embedding(user)
            v = self._item_vector(
                self.mlp_item_embedding,
                self.mlp_item_projection,
                item,
                features,
            )
            if len(v.shape) == 3:
                # Concatenation does not broadcast; multiplying by ones of
                # shape (batch, n, 1) does, also when n is symbolic.
                u = u[:, None, :] * ops.ones_like(v[..., :1])
            h = ops.concatenate([u, v], axis=-1)
            for dense, drop in zip(self.mlp_layers, self.mlp_dropouts):
                h = drop(dense(h), training=training)
            factors.append(h)
        fused = (
            factors[0]
            if len(factors) == 1
            else ops.concatenate(factors, axis=-1)
        )
        return ops.squeeze(self.prediction(fused), axis=-1)


def _validate_args(
    num_users,
    num_items,
    item_input,
    num_item_features,
    gmf_dim,
    mlp_embedding_dim,
    mlp_dims,
    dropout,
    l2,
    use_gmf,
    use_mlp,
    loss,
):
    """Raise a ValueError naming the first bad argument; return the
    `mlp_dims` as a tuple of ints."""
    for name, value in (("num_users", num_users), ("num_items", num_items)):
        if not _is_int(value) or value < 1:
            raise ValueError(
                f"`{name}` must be an int >= 1. Received: {name}={value!r}"
            )
    if item_input not in ITEM_INPUTS:
        raise ValueError(
            f"`item_input` must be one of {ITEM_INPUTS}. Received: "
            f"item_input={item_input!r}"
        )
    if not _is_int(num_item_features) or num_item_features < 0:
        raise ValueError(
            "`num_item_features` must be an int >= 0. Received: "
            f"num_item_features={num_item_features!r}"
        )
    if item_input != "id" and num_item_features < 1:
        raise ValueError(
            f"`item_input={item_input!r}` needs `num_item_features` > 0. "
            f"Received: num_item_features={num_item_features!r}"
        )
    if not use_gmf and not use_mlp:
        raise ValueError(
            "At least one of `use_gmf` and `use_mlp` must be True. "
            f"Received: use_gmf={use_gmf}, use_mlp={use_mlp}"
        )
    for name, value in (
        ("gmf_dim", gmf_dim),
        ("mlp_embedding_dim", mlp_embedding_dim),
    ):
        if not _is_int(value) or value < 1:
            raise ValueError(
                f"`{name}` must be an int >= 1. Received: {name}={value!r}"
            )
    if isinstance(mlp_dims, (str, bytes)) or not all(
        _is_int(d) and d >= 1 for d in mlp_dims
    ):
        raise ValueError(
            "`mlp_dims` must be a sequence of ints >= 1. Received: "
            f"mlp_dims={mlp_dims!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
        )
    if not l2 >= 0.0:
        raise ValueError(f"`l2` must be >= 0. Received: l2={l2!r}")
    if loss not in LOSSES:
        raise ValueError(
            f"`loss` must be one of {LOSSES}. Received: loss={loss!r}"
        )
    return tuple(int(d) for d in mlp_dims)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _copy_weights(source, target):
    if source is not None:
        target.set_weights(source.get_weights())
