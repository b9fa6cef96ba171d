"""Diffusion over interaction vectors: a DiffRec-style recommender.

DiffRec (Wang et al., SIGIR 2023) treats a user's binary interaction vector
as the clean signal x_0 of a Gaussian diffusion with few steps and little
noise (`NoiseSchedule(..., "linear_variance")`). A denoiser (an MLP over the
L2-normalised, dropped-out noisy vector and a timestep embedding) predicts
x_0 from x_t and is trained with the MSE of that prediction at a uniformly
drawn step. To recommend, the user's history is taken as x_T (optionally
noised to an intermediate step, `start_step`) and denoised step by step
along the posterior means, without sampling noise; the final x_0 estimate
ranks the catalog.

Unlike the diffusion prior of `diffusion/prior.py`, which generates item
*embeddings*, this model works in the space of the catalog itself: it
recommends from the catalog only and needs no item content.
"""

import keras
from keras import ops

from diffusion.prior import sinusoidal_embedding
from diffusion.schedule import NoiseSchedule
from models import layers


@keras.saving.register_keras_serializable(package="recsys")
class DiffusionCF(keras.Model):
    """Denoising diffusion over a user's interaction vector.

    Args:
        num_users: int, kept for the recommender interface.
        num_items: int, catalog size.
        hidden_dims: tuple of ints, the denoiser MLP's hidden widths (tanh).
        timestep_dim: int >= 2, width of the timestep embedding.
        dropout: float in `[0, 1)`, dropout on the normalised input.
        num_timesteps: int >= 2, diffusion steps T.
        noise_scale: float > 0, scales the noise variances.
        noise_min, noise_max: floats, `0 < noise_min < noise_max`; the noise
            variance grows linearly from `noise_scale * noise_min` to
            `noise_scale * noise_max` over the T steps.
        start_step: int in `[0, T)`; scoring noises the history to this
            step (without random noise: the mean of q(x_t | x_0)) before
            denoising back from it (0 = start from the history itself, as
            DiffRec's default).
        seed: optional int.

    Call arguments:
        inputs: dict with `"interactions"` `(batch, num_items)` float.

    Returns:
        dict with `"scores"` `(batch, num_items)`: while training the
        denoiser's x_0 prediction at a random step (and `"target"` and
        `"timestep"`), else the reverse process's final estimate.
    """

    def __init__(
        self,
        num_users,
        num_items,
        hidden_dims=(1000,),
        timestep_dim=10,
        dropout=0.5,
        num_timesteps=5,
        noise_scale=0.1,
        noise_min=1e-3,
        noise_max=1e-2,
        start_step=0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= start_step < num_timesteps:
            raise ValueError(
                f"`start_step` must be in [0, {num_timesteps}). Received: "
                f"{start_step}"
            )
        if noise_scale <= 0:
            raise ValueError(
                f"`noise_scale` must be > 0. Received: {noise_scale}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        self.num_users = num_users
        self.num_items = num_items
        self.hidden_dims = tuple(int(d) for d in hidden_dims)
        self.timestep_dim = timestep_dim
        self.dropout = dropout
        self.num_timesteps = num_timesteps
        self.noise_scale = noise_scale
        self.noise_min = noise_min
        self.noise_max = noise_max
        self.start_step = start_step
        self.seed = seed
        self.schedule = NoiseSchedule(
            num_timesteps,
            "linear_variance",
            variance_range=(noise_scale * noise_min, noise_scale * noise_max),
        )

        def dense(units, offset, activation=None, name=None):
            return keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(
                    None if seed is None else seed + offset
                ),
                name=name,
            )

        self.input_dropout = keras.layers.Dropout(
            dropout, seed=None if seed is None else seed + 1
        )
        self.timestep_dense = dense(timestep_dim, 2, name="timestep")
        self.hidden = [
            dense(width, 10 + i, activation="tanh", name=f"hidden_{i}")
            for i, width in enumerate(self.hidden_dims)
        ]
        self.output_dense = dense(num_items, 3, name="output")
        self.noise_seed = keras.random.SeedGenerator(
            None if seed is None else seed + 4
        )
        self.build()

    def build(self, input_shape=None):
        self.timestep_dense.build((None, self.timestep_dim))
        width = self.num_items + self.timestep_dim
        for dense in self.hidden:
            dense.build((None, width))
            width = dense.units
        self.output_dense.build((None, width))
        self.built = True

    def denoise(self, x_t, t, training=False):
        """The x_0 prediction from `x_t` at integer steps `t` `(batch,)`."""
        h = self.input_dropout(layers.l2_normalize(x_t), training=training)
        step = self.timestep_dense(sinusoidal_embedding(t, self.timestep_dim))
        h = ops.concatenate([h, step], axis=-1)
        for dense in self.hidden:
            h = dense(h)
        return self.output_dense(h)

    def call(self, inputs, training=False):
        x0 = ops.cast(inputs["interactions"], "float32")
        batch = ops.shape(x0)[0]
        if training:
            t = keras.random.randint(
                (batch,), 0, self.num_timesteps, seed=self.noise_seed
            )
            noise = keras.random.normal(ops.shape(x0), seed=self.noise_seed)
            x_t = self.schedule.add_noise(x0, noise, t)
            return {
                "scores": self.denoise(x_t, t, training=True),
                "target": x0,
            }
        x_t = x0
        if self.start_step:
            t = ops.full((batch,), self.start_step, "int32")
            x_t = self.schedule.add_noise(x0, ops.zeros_like(x0), t)
        for step in range(self.start_step, -1, -1):
            t = ops.full((batch,), step, "int32")
            x0_hat = self.denoise(x_t, t)
            x_t = self.schedule.posterior(x0_hat, x_t, t)[0]
        return {"scores": x_t}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Mean over users of the summed squared error of the x_0
        prediction (DiffRec's loss without step reweighting)."""
        del x, y, sample_weight
        error = ops.square(y_pred["scores"] - y_pred["target"])
        total = ops.mean(ops.sum(error, axis=-1))
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            **super().get_config(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "hidden_dims": self.hidden_dims,
            "timestep_dim": self.timestep_dim,
            "dropout": self.dropout,
            "num_timesteps": self.num_timesteps,
            "noise_scale": self.noise_scale,
            "noise_min": self.noise_min,
            "noise_max": self.noise_max,
            "start_step": self.start_step,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
