"""A variational autoencoder over the user's interaction vector.

Mult-VAE (Liang et al., WWW 2018): the encoder reads a user's binary
interaction vector (L2-normalised, with input dropout) and outputs a
Gaussian over a latent code; the decoder maps the code to logits over the
catalog, trained with the multinomial log-likelihood of the user's items
plus a weighted KL term. Two RecVAE (Shenbin et al., WSDM 2020) ideas are
options: a densely connected encoder (each layer also receives the sum of
the earlier layers' outputs, with layer normalisation) when the hidden
widths are equal, and a KL weight proportional to the user's number of
interactions (`kl_scaling="per_interaction"`) instead of a constant one
annealed from zero (`"constant"`, Mult-VAE's beta).

Scores are the decoder logits of the latent mean. The model's input is the
dense `(batch, num_items)` row; `data.InteractionRows` makes batches.
"""

import keras
from keras import ops

from models import layers
from models.layers import seeded

KL_SCALINGS = ("constant", "per_interaction")


@keras.saving.register_keras_serializable(package="recsys")
class VAECF(keras.Model):
    """Mult-VAE / RecVAE-style collaborative filtering.

    Args:
        num_users: int, kept for the recommender interface (a user is
            their interaction vector; new users need no retraining).
        num_items: int, catalog size (input and output width).
        hidden_dims: tuple of ints, encoder widths (the decoder is one
            linear layer from the code, as in RecVAE; Mult-VAE's mirrored
            decoder adds little). Equal widths make the encoder densely
            connected.
        latent_dim: int, width of the latent code.
        dropout: float in `[0, 1)`, input dropout (Mult-VAE uses 0.5).
        kl_weight: float >= 0, beta (constant) or gamma (per
            interaction: the user's KL weight is gamma * |items|).
        kl_scaling: `"constant"` or `"per_interaction"`.
        kl_anneal_steps: int >= 0; with `"constant"`, beta grows linearly
            from 0 over this many training steps (0 = from the start).
        seed: optional int.

    Call arguments:
        inputs: dict with `"interactions"` `(batch, num_items)` float.

    Returns:
        dict with `"scores"` `(batch, num_items)` logits; while training
        also `"kl"` `(batch,)` the KL term already weighted.
    """

    def __init__(
        self,
        num_users,
        num_items,
        hidden_dims=(600,),
        latent_dim=200,
        dropout=0.5,
        kl_weight=0.2,
        kl_scaling="constant",
        kl_anneal_steps=0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kl_scaling not in KL_SCALINGS:
            raise ValueError(
                f"`kl_scaling` must be one of {KL_SCALINGS}. Received: "
                f"{kl_scaling!r}"
            )
        if not hidden_dims or latent_dim < 1:
            raise ValueError(
                "`hidden_dims` must name at least one width and "
                f"`latent_dim` be >= 1. Received: {hidden_dims}, {latent_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        if kl_weight < 0 or kl_anneal_steps < 0:
            raise ValueError(
                "`kl_weight` and `kl_anneal_steps` must be >= 0. Received: "
                f"{kl_weight}, {kl_anneal_steps}"
            )
        self.num_users = num_users
        self.num_items = num_items
        self.hidden_dims = tuple(int(d) for d in hidden_dims)
        self.latent_dim = latent_dim
        self.dropout = dropout
        self.kl_weight = kl_weight
        self.kl_scaling = kl_scaling
        self.kl_anneal_steps = kl_anneal_steps
        self.seed = seed
        self.dense_connections = len(set(self.hidden_dims)) == 1

        self.input_dropout = keras.layers.Dropout(
            dropout, seed=None if seed is None else seed + 1
        )
        self.encoder_layers = [
            keras.layers.Dense(
                width,
                kernel_initializer=seeded("glorot_uniform", seed, 10 + i),
                name=f"encoder_{i}",
            )
            for i, width in enumerate(self.hidden_dims)
        ]
        self.encoder_norms = [
            keras.layers.LayerNormalization(epsilon=0.1, name=f"norm_{i}")
            for i in range(len(self.hidden_dims))
        ]
        self.code = keras.layers.Dense(
            2 * latent_dim,
            kernel_initializer=seeded("glorot_uniform", seed, 2),
            name="code",
        )
        self.decoder = keras.layers.Dense(
            num_items,
            kernel_initializer=seeded("glorot_uniform", seed, 3),
            name="decoder",
        )
        self.noise_seed = keras.random.SeedGenerator(
            None if seed is None else seed + 4
        )
        self.build()

    def build(self, input_shape=None):
        width = self.num_items
        for dense, norm in zip(self.encoder_layers, self.encoder_norms):
            dense.build((None, width))
            norm.build((None, dense.units))
            width = dense.units
        self.code.build((None, width))
        self.decoder.build((None, self.latent_dim))
        self.step = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="step"
        )
        self.built = True

    def encode(self, x, training=False):
        """`(mean, log_variance)` of the latent code of rows `x`."""
        h = self.input_dropout(layers.l2_normalize(x), training=training)
        outputs = []
        for dense, norm in zip(self.encoder_layers, self.encoder_norms):
            z = dense(h if not outputs else outputs[-1])
            if self.dense_connections and outputs:
                z = z + sum(outputs)
            outputs.append(norm(keras.activations.silu(z)))
        mean, log_var = ops.split(self.code(outputs[-1]), 2, axis=-1)
        return mean, ops.clip(log_var, -10.0, 10.0)

    def call(self, inputs, training=False):
        x = ops.cast(inputs["interactions"], "float32")
        mean, log_var = self.encode(x, training=training)
        if not training:
            return {"scores": self.decoder(mean)}
        noise = keras.random.normal(ops.shape(mean), seed=self.noise_seed)
        z = mean + noise * ops.exp(0.5 * log_var)
        kl = 0.5 * ops.sum(
            ops.exp(log_var) + ops.square(mean) - 1.0 - log_var, axis=-1
        )
        if self.kl_scaling == "per_interaction":
            weight = self.kl_weight * ops.sum(x, axis=-1)
        else:
            ramp = (
                ops.minimum(1.0, (self.step + 1.0) / self.kl_anneal_steps)
                if self.kl_anneal_steps
                else 1.0
            )
            weight = self.kl_weight * ramp
        self.step.assign_add(1.0)
        return {"scores": self.decoder(z), "kl": weight * kl}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Multinomial negative log-likelihood of the user's items plus the
        weighted KL term, averaged over users."""
        del y, sample_weight
        target = ops.cast(x["interactions"], "float32")
        logits = ops.cast(y_pred["scores"], "float32")
        log_probs = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
        nll = -ops.sum(log_probs * target, axis=-1)
        total = ops.mean(nll + y_pred.get("kl", 0.0))
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "hidden_dims": self.hidden_dims,
            "latent_dim": self.latent_dim,
            "dropout": self.dropout,
            "kl_weight": self.kl_weight,
            "kl_scaling": self.kl_scaling,
            "kl_anneal_steps": self.kl_anneal_steps,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
