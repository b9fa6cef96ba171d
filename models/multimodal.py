"""Multimodal item encoder: image + text + numeric tokens, fused.

An item arrives as one float row built on the host by
`item_content.build_item_features`:

    [text vector | image block | numeric block | has_text, has_image,
     has_numeric]

Each present block becomes a modality token of width `embedding_dim`: a
projection of the frozen text vector (MiniLM or hashed), the small
trainable CNN over the image pixels (or a projection of frozen backbone
features), and a projection of the standardised numbers. The tokens are
fused by one of three modes, every one of which honours the presence flags
(a missing modality is masked out, never read as a zero vector):

- `attention` (default): one transformer block of multi-head
  self-attention over a learned fusion token plus the modality tokens (with
  a learned modality-type embedding each); absent modalities are masked as
  keys, and the fusion token's output is the item vector.
- `gated`: a softmax gate over the present tokens (and a learned null
  token, so an item with no content still has a defined vector); the item
  vector is the gated sum.
- `concat`: absent tokens are replaced by a learned per-modality "missing"
  vector, then all tokens and the presence flags are concatenated and
  projected.

The encoder plugs into the item side of the two-tower model (its item
tower) and of NCF (`item_input="features"`) through their `item_encoder`
argument, so the same fit / score / save code serves it. Optionally, an
InfoNCE loss aligns the image and text tokens of the items in a batch
(CLIP-style, symmetric, items lacking either modality left out), added to
the recommendation loss with `alignment_weight`.

References:
    Vaswani et al. 2017, Attention Is All You Need.
    van den Oord et al. 2018, Representation Learning with Contrastive
    Predictive Coding (InfoNCE).
    Radford et al. 2021, Learning Transferable Visual Models From Natural
    Language Supervision (symmetric image-text contrastive loss).
"""

import keras
from keras import ops

from models.encoders import ConvImageEncoder
from models.encoders import FeatureProjection

FUSIONS = ("attention", "gated", "concat")
MODALITIES = ("text", "image", "numeric")


@keras.saving.register_keras_serializable(package="recsys")
class ModalityFusion(keras.layers.Layer):
    """Fuse `(batch, M, d)` modality tokens under a `(batch, M)` mask.

    Args:
        mode: `"attention"` (default), `"gated"` or `"concat"` (see the
            module docstring).
        num_modalities: int >= 1, M.
        embedding_dim: int >= 1, d (token and output width).
        num_heads: int >= 1, attention heads; must divide `embedding_dim`.
        dropout: float in `[0, 1)`, in the attention block.
        seed: optional int.

    Call arguments:
        tokens: `(batch, M, d)`.
        mask: `(batch, M)`, 1 = present, 0 = absent.
        training: bool.

    Returns:
        `(batch, d)`; rows with every modality absent get a learned vector.
    """

    def __init__(
        self,
        mode="attention",
        num_modalities=3,
        embedding_dim=64,
        num_heads=4,
        dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in FUSIONS:
            raise ValueError(
                f"`mode` must be one of {FUSIONS}. Received: {mode!r}"
            )
        if num_modalities < 1 or embedding_dim < 1 or num_heads < 1:
            raise ValueError(
                "`num_modalities`, `embedding_dim` and `num_heads` must be "
                f">= 1. Received: {num_modalities}, {embedding_dim}, "
                f"{num_heads}"
            )
        if mode == "attention" and embedding_dim % num_heads:
            raise ValueError(
                f"`num_heads` ({num_heads}) must divide `embedding_dim` "
                f"({embedding_dim})."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        self.mode = mode
        self.num_modalities = int(num_modalities)
        self.embedding_dim = int(embedding_dim)
        self.num_heads = int(num_heads)
        self.dropout = dropout
        self.seed = seed
        d = self.embedding_dim
        self.attention = self.norm_1 = self.norm_2 = None
        self.ffn_in = self.ffn_out = self.drop = None
        self.gate_hidden = self.gate_score = None
        self.concat_proj = self.concat_out = None
        if mode == "attention":
            self.attention = keras.layers.MultiHeadAttention(
                num_heads,
                d // num_heads,
                dropout=dropout,
                seed=seed,
                dtype=self.dtype_policy,
                name="attention",
            )
            self.norm_1 = keras.layers.LayerNormalization(
                dtype=self.dtype_policy, name="norm_1"
            )
            self.norm_2 = keras.layers.LayerNormalization(
                dtype=self.dtype_policy, name="norm_2"
            )
            self.ffn_in = keras.layers.Dense(
                2 * d,
                activation="gelu",
                dtype=self.dtype_policy,
                name="ffn_in",
            )
            self.ffn_out = keras.layers.Dense(
                d, dtype=self.dtype_policy, name="ffn_out"
            )
            self.drop = keras.layers.Dropout(
                dropout, seed=seed, dtype=self.dtype_policy
            )
        elif mode == "gated":
            self.gate_hidden = keras.layers.Dense(
                d,
                activation="tanh",
                dtype=self.dtype_policy,
                name="gate_hidden",
            )
            self.gate_score = keras.layers.Dense(
                1, dtype=self.dtype_policy, name="gate_score"
            )
        else:
            self.concat_proj = keras.layers.Dense(
                d,
                activation="gelu",
                dtype=self.dtype_policy,
                name="concat_proj",
            )
            self.concat_out = keras.layers.Dense(
                d, dtype=self.dtype_policy, name="concat_out"
            )

    def build(self, tokens_shape, mask_shape=None):
        m, d = self.num_modalities, self.embedding_dim
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.type_embedding = self.add_weight(
            shape=(m, d), initializer=init, name="type_embedding"
        )
        # The fusion token (attention), null token (gated) or per-modality
        # missing vectors (concat): what stands in for absent content.
        self.placeholder = self.add_weight(
            shape=(m if self.mode == "concat" else 1, d),
            initializer=init,
            name="placeholder",
        )
        if self.mode == "attention":
            self.attention.build((None, m + 1, d), (None, m + 1, d))
            self.norm_1.build((None, m + 1, d))
            self.ffn_in.build((None, m + 1, d))
            self.ffn_out.build((None, m + 1, 2 * d))
            self.norm_2.build((None, m + 1, d))
        elif self.mode == "gated":
            self.gate_hidden.build((None, m + 1, d))
            self.gate_score.build((None, m + 1, d))
        else:
            self.concat_proj.build((None, m * d + m))
            self.concat_out.build((None, d))
        self.built = True

    def call(self, tokens, mask, training=False):
        dtype = self.compute_dtype
        tokens = ops.cast(tokens, dtype)
        mask = ops.cast(mask, dtype)
        batch = ops.shape(tokens)[0]
        if self.mode == "concat":
            present = mask[:, :, None] > 0
            filled = ops.where(present, tokens, self.placeholder[None])
            flat = ops.reshape(
                filled, (batch, self.num_modalities * self.embedding_dim)
            )
            hidden = self.concat_proj(ops.concatenate([flat, mask], axis=-1))
            return self.concat_out(hidden)
        tokens = tokens + ops.cast(self.type_embedding, dtype)[None]
        lead = ops.broadcast_to(
            ops.cast(self.placeholder, dtype)[None],
            (batch, 1, self.embedding_dim),
        )
        seq = ops.concatenate([lead, tokens], axis=1)  # (batch, M + 1, d)
        keys = ops.concatenate([ops.ones_like(mask[:, :1]), mask], axis=1)
        if self.mode == "gated":
            scores = ops.squeeze(
                self.gate_score(self.gate_hidden(seq)), axis=-1
            )  # (batch, M + 1)
            scores = ops.where(keys > 0, scores, ops.cast(-1e9, dtype))
            weights = ops.softmax(scores, axis=-1)
            return ops.sum(seq * weights[:, :, None], axis=1)
        # (batch, M + 1, M + 1): every query may attend to present keys.
        attention_mask = ops.broadcast_to(
            keys[:, None, :] > 0,
            (batch, self.num_modalities + 1, self.num_modalities + 1),
        )
        attended = self.attention(
            seq, seq, attention_mask=attention_mask, training=training
        )
        x = self.norm_1(seq + self.drop(attended, training=training))
        x = self.norm_2(
            x + self.drop(self.ffn_out(self.ffn_in(x)), training=training)
        )
        return x[:, 0]

    def compute_output_shape(self, tokens_shape, mask_shape=None):
        return (tokens_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "num_modalities": self.num_modalities,
                "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class MultimodalItemEncoder(keras.layers.Layer):
    """Item content row -> fused item vector.

    Args:
        text_dim: int >= 0, width of the text block (0 = no text).
        image_dim: int >= 0, width of the image block (0 = no image).
        numeric_dim: int >= 0, width of the numeric block.
        image_size: int >= 0; > 0 means the image block holds
            `image_size**2 * 3` pixels for the trainable CNN, 0 that it
            holds frozen features (projected like text).
        embedding_dim: int >= 1, token and output width. Defaults to 64.
        fusion: `"attention"` (default), `"gated"` or `"concat"`.
        num_heads: int, attention heads. Defaults to 4.
        hidden_dims: tuple of ints, hidden widths of the text / frozen
            image / numeric projections. Defaults to `()` (linear).
        cnn_filters: tuple of ints, CNN channels per stage.
        dropout: float in `[0, 1)`.
        alignment_weight: float >= 0, weight of the image-text InfoNCE loss
            added in training (0 = off; needs both modalities).
        alignment_temperature: float > 0, InfoNCE temperature.
        seed: optional int.

    Call arguments:
        features: `(..., text_dim + image_dim + numeric_dim + 3)`, the item
            rows (any leading shape, e.g. `(batch, num_negatives, F)`).
        training: bool.

    Returns:
        `(..., embedding_dim)` item vectors.

    Example:

    ```python
    encoder = MultimodalItemEncoder(text_dim=384, image_dim=3072,
                                    numeric_dim=2, image_size=32)
    vectors = encoder(item_rows)  # (batch, 64)
    ```
    """

    def __init__(
        self,
        text_dim=0,
        image_dim=0,
        numeric_dim=0,
        image_size=0,
        embedding_dim=64,
        fusion="attention",
        num_heads=4,
        hidden_dims=(),
        cnn_filters=(16, 32, 64),
        dropout=0.0,
        alignment_weight=0.0,
        alignment_temperature=0.1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        widths = {"text": text_dim, "image": image_dim, "numeric": numeric_dim}
        if any(int(w) < 0 for w in widths.values()) or not any(widths.values()):
            raise ValueError(
                "`text_dim`, `image_dim` and `numeric_dim` must be >= 0 and "
                f"at least one > 0. Received: {widths}"
            )
        if image_size and image_dim != image_size * image_size * 3:
            raise ValueError(
                f"With `image_size={image_size}` the image block holds "
                f"pixels: `image_dim` must be {image_size**2 * 3}. "
                f"Received: {image_dim}"
            )
        if alignment_weight < 0 or alignment_temperature <= 0:
            raise ValueError(
                "`alignment_weight` must be >= 0 and `alignment_temperature` "
                f"> 0. Received: {alignment_weight}, {alignment_temperature}"
            )
        self.text_dim = int(text_dim)
        self.image_dim = int(image_dim)
        self.numeric_dim = int(numeric_dim)
        self.image_size = int(image_size)
        self.embedding_dim = int(embedding_dim)
        self.fusion_mode = fusion
        self.num_heads = int(num_heads)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.cnn_filters = tuple(int(f) for f in cnn_filters)
        self.dropout = dropout
        self.alignment_weight = float(alignment_weight)
        self.alignment_temperature = float(alignment_temperature)
        self.seed = seed
        self.modalities = [m for m in MODALITIES if widths[m] > 0]
        self.input_dim = sum(widths.values()) + len(MODALITIES)
        self.modality_encoders = {}
        for i, m in enumerate(self.modalities):
            s = None if seed is None else seed + 10 * i
            if m == "image" and self.image_size:
                layer = ConvImageEncoder(
                    self.image_size,
                    self.embedding_dim,
                    filters=self.cnn_filters,
                    dropout=dropout,
                    seed=s,
                    dtype=self.dtype_policy,
                    name="image_cnn",
                )
            else:
                layer = FeatureProjection(
                    self.hidden_dims,
                    self.embedding_dim,
                    dropout=dropout,
                    seed=s,
                    dtype=self.dtype_policy,
                    name=f"{m}_projection",
                )
            self.modality_encoders[m] = layer
        self.fusion = ModalityFusion(
            fusion,
            num_modalities=len(self.modalities),
            embedding_dim=self.embedding_dim,
            num_heads=self.num_heads,
            dropout=dropout,
            seed=seed,
            dtype=self.dtype_policy,
            name="fusion",
        )

    @property
    def output_dim(self):
        return self.embedding_dim

    def build(self, input_shape=None):
        widths = self._widths()
        for m, layer in self.modality_encoders.items():
            layer.build((None, widths[m]))
        m = len(self.modalities)
        self.fusion.build((None, m, self.embedding_dim), (None, m))
        self.built = True

    def call(self, features, training=False):
        features = ops.cast(features, self.compute_dtype)
        lead = ops.shape(features)[:-1]
        rows = ops.reshape(features, (-1, self.input_dim))
        tokens, masks = self.encode_modalities(rows, training=training)
        fused = self.fusion(
            ops.stack(list(tokens.values()), axis=1),
            ops.stack(list(masks.values()), axis=1),
            training=training,
        )
        if (
            training
            and self.alignment_weight > 0
            and ("text" in tokens and "image" in tokens)
        ):
            self.add_loss(
                self.alignment_weight
                * info_nce(
                    tokens["image"],
                    tokens["text"],
                    masks["image"] * masks["text"],
                    self.alignment_temperature,
                )
            )
        return ops.reshape(fused, tuple(lead) + (self.embedding_dim,))

    def encode_modalities(self, rows, training=False):
        """Per-modality tokens and presence masks of `(batch, F)` rows.

        Returns:
            `(tokens, masks)`: dicts keyed by modality name, with
            `(batch, embedding_dim)` tokens and `(batch,)` 0/1 masks.
        """
        widths = self._widths()
        flags = self.input_dim - len(MODALITIES)
        tokens, masks, start = {}, {}, 0
        for i, m in enumerate(MODALITIES):
            width = widths.get(m, 0)
            if not width:
                continue
            block = rows[:, start : start + width]
            start += width
            tokens[m] = self.modality_encoders[m](block, training=training)
            masks[m] = rows[:, flags + i]
        return tokens, masks

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "text_dim": self.text_dim,
                "image_dim": self.image_dim,
                "numeric_dim": self.numeric_dim,
                "image_size": self.image_size,
                "embedding_dim": self.embedding_dim,
                "fusion": self.fusion_mode,
                "num_heads": self.num_heads,
                "hidden_dims": self.hidden_dims,
                "cnn_filters": self.cnn_filters,
                "dropout": self.dropout,
                "alignment_weight": self.alignment_weight,
                "alignment_temperature": self.alignment_temperature,
                "seed": self.seed,
            }
        )
        return config

    def _widths(self):
        return {
            "text": self.text_dim,
            "image": self.image_dim,
            "numeric": self.numeric_dim,
        }


def info_nce(a, b, mask, temperature=0.1):
    """Symmetric InfoNCE between paired rows of `a` and `b`.

    Row i of `a` and row i of `b` are a positive pair; every other row of
    the batch is a negative. Rows with `mask == 0` take part neither as
    anchors nor as negatives.

    Args:
        a, b: `(batch, d)` tensors (L2-normalised here).
        mask: `(batch,)` 0/1, the rows that have both views.
        temperature: float > 0.

    Returns:
        Scalar: the mean over valid rows of the two cross-entropies
        (a -> b and b -> a); 0 when no row is valid.
    """
    dtype = a.dtype
    a = a / ops.sqrt(ops.maximum(ops.sum(a * a, axis=-1, keepdims=True), 1e-12))
    b = b / ops.sqrt(ops.maximum(ops.sum(b * b, axis=-1, keepdims=True), 1e-12))
    mask = ops.cast(mask, dtype)
    logits = ops.matmul(a, ops.transpose(b)) / temperature  # (batch, batch)
    pairs = mask[:, None] * mask[None, :]
    logits = ops.where(pairs > 0, logits, ops.cast(-1e9, dtype))
    labels = ops.arange(ops.shape(a)[0])
    a_to_b = keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True
    )
    b_to_a = keras.losses.sparse_categorical_crossentropy(
        labels, ops.transpose(logits), from_logits=True
    )
    per_row = 0.5 * (a_to_b + b_to_a) * mask
    return ops.sum(per_row) / ops.maximum(ops.sum(mask), 1.0)
