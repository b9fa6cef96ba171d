"""The diffusion prior: p(item embedding | user, score) as a Keras network.

`PriorNetwork` denoises an item embedding x_t. The embedding is cut into a
short sequence of tokens (zero-padded to a multiple of `num_tokens`), and a
transformer over those tokens is conditioned on three vectors: a learned
user embedding (with an extra *null user* row), a score embedding (dislike,
like or null) and a sinusoidal timestep embedding. Conditioning enters
through adaptive layer norm with zero-initialised gates (AdaLN-Zero, Peebles
& Xie 2023), through cross-attention from the item tokens to the three
condition tokens, or both. With AdaLN-Zero every block, and the output
layer, starts as the identity / zero map, which makes deep stacks train
stably from the first step.

`DiffusionPrior` is the training model around the network (the split of
DALL-E 2's prior into `DiffusionPriorNetwork` and `DiffusionPrior`): it draws
the timestep and the noise, replaces the user and the score by their null
tokens independently with probabilities `p_drop_user` and `p_drop_score`
(so one network learns the conditional and the unconditional model that
classifier-free guidance mixes), and returns what `compute_loss` needs: the
MSE on the chosen parameterisation, optionally Min-SNR weighted.

References:
    Ramesh et al. 2022. Hierarchical Text-Conditional Image Generation with
        CLIP Latents (DALL-E 2: a diffusion prior over embeddings).
    Peebles & Xie 2023. Scalable Diffusion Models with Transformers
        (AdaLN-Zero).
    Ho & Salimans 2022. Classifier-Free Diffusion Guidance.
    Hang et al. 2023. Efficient Diffusion Training via Min-SNR Weighting.
"""

import math

import keras
import numpy as np
from keras import ops

from diffusion.schedule import PARAMETERIZATIONS
from diffusion.schedule import SNR_WEIGHTINGS
from diffusion.schedule import NoiseSchedule

SCORE_DISLIKE = 0
SCORE_LIKE = 1
SCORE_NULL = 2  # no score: dropped for guidance, or a neutral rating
NUM_SCORES = 3
SCORE_NAMES = {"dislike": SCORE_DISLIKE, "like": SCORE_LIKE, "null": SCORE_NULL}
CONDITIONINGS = ("adaln", "cross", "both")


def score_tokens(ratings, like_threshold, dislike_threshold):
    """Score token per rating: like at or above `like_threshold`, dislike
    at or below `dislike_threshold`, null in between.

    Returns:
        `(n,)` int32 array of `SCORE_LIKE`, `SCORE_DISLIKE`, `SCORE_NULL`.
    """
    if not dislike_threshold < like_threshold:
        raise ValueError(
            "`dislike_threshold` must be below `like_threshold`. Received: "
            f"dislike_threshold={dislike_threshold}, "
            f"like_threshold={like_threshold}"
        )
    ratings = np.asarray(ratings)
    return np.where(
        ratings >= like_threshold,
        SCORE_LIKE,
        np.where(ratings <= dislike_threshold, SCORE_DISLIKE, SCORE_NULL),
    ).astype(np.int32)


def sinusoidal_embedding(t, dim, max_period=10000.0, dtype="float32"):
    """Sinusoidal features of timesteps, `[cos(t f), sin(t f)]` with
    `f_k = max_period ** (-k / (dim // 2))` (Vaswani et al. 2017; the form
    Stable Diffusion's UNet reads), zero-padded to `dim` when it is odd.

    Args:
        t: `(batch,)` int or float timesteps.
        dim: int >= 2, output width.
        max_period: float > 1, longest sinusoid period.
        dtype: compute dtype of the result.

    Returns:
        `(batch, dim)` tensor.
    """
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half).astype(
        np.float32
    )
    angles = ops.cast(t, dtype)[:, None] * ops.cast(freqs, dtype)[None, :]
    features = ops.concatenate([ops.cos(angles), ops.sin(angles)], -1)
    if dim % 2:
        features = ops.pad(features, [[0, 0], [0, 1]])
    return features


@keras.saving.register_keras_serializable(package="recsys")
class TimestepEmbedding(keras.layers.Layer):
    """Sinusoidal features of the timestep followed by a two-layer MLP.

    Args:
        embedding_dim: int >= 2, output width.
        max_period: float > 1, longest sinusoid period. Defaults to 10000.

    Call arguments:
        timestep: `(batch,)` int or float timesteps.

    Returns:
        `(batch, embedding_dim)` tensor.
    """

    def __init__(self, embedding_dim, max_period=10000.0, **kwargs):
        super().__init__(**kwargs)
        if not _is_int(embedding_dim) or embedding_dim < 2:
            raise ValueError(
                "`embedding_dim` must be an int >= 2. Received: "
                f"embedding_dim={embedding_dim!r}"
            )
        if not max_period > 1:
            raise ValueError(
                f"`max_period` must be > 1. Received: {max_period!r}"
            )
        self.embedding_dim = int(embedding_dim)
        self.max_period = float(max_period)
        self.hidden = keras.layers.Dense(
            self.embedding_dim,
            activation="silu",
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.output_dense = keras.layers.Dense(
            self.embedding_dim, dtype=self.dtype_policy, name="output"
        )

    def build(self, timestep_shape):
        self.hidden.build((None, self.embedding_dim))
        self.output_dense.build((None, self.embedding_dim))
        self.built = True

    def call(self, timestep):
        features = sinusoidal_embedding(
            timestep, self.embedding_dim, self.max_period, self.compute_dtype
        )
        return self.output_dense(self.hidden(features))

    def compute_output_shape(self, timestep_shape):
        return (timestep_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "max_period": self.max_period,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class ItemTokenizer(keras.layers.Layer):
    """Cut an embedding into `num_tokens` tokens and project each to
    `width`, plus a learned position embedding.

    The embedding is zero-padded to `num_tokens * token_dim` with
    `token_dim = ceil(embedding_dim / num_tokens)`.

    Args:
        embedding_dim: int >= 1, width D of the item embedding.
        num_tokens: int in `[1, D]`.
        width: int >= 1, token width of the transformer.

    Call arguments:
        x: `(batch, D)` tensor.

    Returns:
        `(batch, num_tokens, width)` tensor.
    """

    def __init__(self, embedding_dim, num_tokens, width, **kwargs):
        super().__init__(**kwargs)
        _check_tokens(embedding_dim, num_tokens)
        if not _is_int(width) or width < 1:
            raise ValueError(
                f"`width` must be an int >= 1. Received: width={width!r}"
            )
        self.embedding_dim = int(embedding_dim)
        self.num_tokens = int(num_tokens)
        self.width = int(width)
        self.token_dim = -(-self.embedding_dim // self.num_tokens)
        self.projection = keras.layers.Dense(
            self.width, dtype=self.dtype_policy, name="projection"
        )

    def build(self, x_shape):
        self.projection.build((None, self.num_tokens, self.token_dim))
        self.position = self.add_weight(
            shape=(self.num_tokens, self.width),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position",
        )
        self.built = True

    def call(self, x):
        pad = self.num_tokens * self.token_dim - self.embedding_dim
        if pad:
            x = ops.pad(x, [[0, 0], [0, pad]])
        tokens = ops.reshape(x, (-1, self.num_tokens, self.token_dim))
        return self.projection(tokens) + self.position[None]

    def compute_output_shape(self, x_shape):
        return (x_shape[0], self.num_tokens, self.width)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "num_tokens": self.num_tokens,
                "width": self.width,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class PriorBlock(keras.layers.Layer):
    """Transformer block over item tokens, conditioned on a vector and/or
    condition tokens.

    `"adaln"`: pre-norm self-attention and MLP whose layer norms are
    modulated, `norm(x) * (1 + scale) + shift`, and whose residual branches
    are multiplied by a gate; shift, scale and gate come from one dense
    layer over `silu(cond)` initialised to zero (AdaLN-Zero), so the block
    starts as the identity. `"cross"`: plain pre-norm self-attention, then
    cross-attention from the item tokens to the condition tokens, then the
    MLP. `"both"`: the cross-attention branch inside the AdaLN-Zero block,
    with its own shift, scale and gate.

    Args:
        width: int, token width; divisible by `num_heads`.
        num_heads: int >= 1.
        mlp_ratio: int >= 1, MLP hidden width over `width`. Defaults to 4.
        conditioning: `"adaln"` (default), `"cross"` or `"both"`.

    Call arguments:
        tokens: `(batch, num_tokens, width)` item tokens.
        cond: `(batch, width)` summed condition vector (AdaLN).
        cond_tokens: `(batch, num_cond, width)` condition tokens (cross).

    Returns:
        `(batch, num_tokens, width)` tensor.
    """

    def __init__(
        self, width, num_heads, mlp_ratio=4, conditioning="adaln", **kwargs
    ):
        super().__init__(**kwargs)
        _check_width_heads(width, num_heads)
        if not _is_int(mlp_ratio) or mlp_ratio < 1:
            raise ValueError(
                f"`mlp_ratio` must be an int >= 1. Received: {mlp_ratio!r}"
            )
        _check_conditioning(conditioning)
        self.width = int(width)
        self.num_heads = int(num_heads)
        self.mlp_ratio = int(mlp_ratio)
        self.conditioning = conditioning
        self.use_adaln = conditioning in ("adaln", "both")
        self.use_cross = conditioning in ("cross", "both")
        # AdaLN supplies the affine part of the norms itself.
        affine = not self.use_adaln
        head_dim = self.width // self.num_heads

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=1e-6,
                center=affine,
                scale=affine,
                dtype=self.dtype_policy,
                name=name,
            )

        def attention(name):
            return keras.layers.MultiHeadAttention(
                self.num_heads, head_dim, dtype=self.dtype_policy, name=name
            )

        self.self_norm = norm("self_norm")
        self.self_attention = attention("self_attention")
        self.cross_norm = norm("cross_norm") if self.use_cross else None
        self.cross_attention = (
            attention("cross_attention") if self.use_cross else None
        )
        self.mlp_norm = norm("mlp_norm")
        self.mlp_hidden = keras.layers.Dense(
            self.mlp_ratio * self.width,
            activation="gelu",
            dtype=self.dtype_policy,
            name="mlp_hidden",
        )
        self.mlp_output = keras.layers.Dense(
            self.width, dtype=self.dtype_policy, name="mlp_output"
        )
        self.num_branches = 3 if self.use_cross else 2
        self.modulation = (
            keras.layers.Dense(
                3 * self.num_branches * self.width,
                kernel_initializer="zeros",
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name="modulation",
            )
            if self.use_adaln
            else None
        )

    def build(self, tokens_shape, cond_shape=None, cond_tokens_shape=None):
        shape = (None, None, self.width)
        self.self_norm.build(shape)
        self.self_attention.build(shape, shape)
        if self.use_cross:
            self.cross_norm.build(shape)
            self.cross_attention.build(shape, shape)
        self.mlp_norm.build(shape)
        self.mlp_hidden.build(shape)
        self.mlp_output.build((None, None, self.mlp_ratio * self.width))
        if self.use_adaln:
            self.modulation.build((None, self.width))
        self.built = True

    def call(self, tokens, cond, cond_tokens):
        x = tokens
        if self.use_adaln:
            chunks = ops.split(
                self.modulation(ops.silu(cond))[:, None, :],
                3 * self.num_branches,
                axis=-1,
            )  # each (batch, 1, width)
        else:
            chunks = [None] * (3 * self.num_branches)

        def modulate(norm, value, shift, scale):
            h = norm(value)
            return h if shift is None else h * (1.0 + scale) + shift

        def gated(gate, value):
            return value if gate is None else gate * value

        shift, scale, gate = chunks[0:3]
        h = modulate(self.self_norm, x, shift, scale)
        x = x + gated(gate, self.self_attention(h, h))
        if self.use_cross:
            shift, scale, gate = chunks[6:9]
            h = modulate(self.cross_norm, x, shift, scale)
            x = x + gated(gate, self.cross_attention(h, cond_tokens))
        shift, scale, gate = chunks[3:6]
        h = modulate(self.mlp_norm, x, shift, scale)
        return x + gated(gate, self.mlp_output(self.mlp_hidden(h)))

    def compute_output_shape(
        self, tokens_shape, cond_shape=None, cond_tokens_shape=None
    ):
        return tokens_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width": self.width,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "conditioning": self.conditioning,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class PriorHead(keras.layers.Layer):
    """Final norm (modulated under AdaLN) and a zero-initialised projection
    of each token back to `token_dim`, reassembled into the embedding.

    Args:
        embedding_dim: int, width D of the item embedding.
        num_tokens: int in `[1, D]`.
        width: int, token width.
        use_adaln: bool, modulate the final norm by the condition.

    Call arguments:
        tokens: `(batch, num_tokens, width)`.
        cond: `(batch, width)` condition vector (ignored without AdaLN).

    Returns:
        `(batch, D)` tensor; all zeros at initialisation.
    """

    def __init__(
        self, embedding_dim, num_tokens, width, use_adaln=True, **kwargs
    ):
        super().__init__(**kwargs)
        _check_tokens(embedding_dim, num_tokens)
        self.embedding_dim = int(embedding_dim)
        self.num_tokens = int(num_tokens)
        self.width = int(width)
        self.use_adaln = bool(use_adaln)
        self.token_dim = -(-self.embedding_dim // self.num_tokens)
        self.norm = keras.layers.LayerNormalization(
            epsilon=1e-6,
            center=not self.use_adaln,
            scale=not self.use_adaln,
            dtype=self.dtype_policy,
            name="norm",
        )
        self.modulation = (
            keras.layers.Dense(
                2 * self.width,
                kernel_initializer="zeros",
                bias_initializer="zeros",
                dtype=self.dtype_policy,
                name="modulation",
            )
            if self.use_adaln
            else None
        )
        self.projection = keras.layers.Dense(
            self.token_dim,
            kernel_initializer="zeros",
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, tokens_shape, cond_shape=None):
        self.norm.build((None, None, self.width))
        if self.use_adaln:
            self.modulation.build((None, self.width))
        self.projection.build((None, None, self.width))
        self.built = True

    def call(self, tokens, cond):
        h = self.norm(tokens)
        if self.use_adaln:
            shift, scale = ops.split(
                self.modulation(ops.silu(cond))[:, None, :], 2, axis=-1
            )
            h = h * (1.0 + scale) + shift
        out = self.projection(h)  # (batch, num_tokens, token_dim)
        out = ops.reshape(out, (-1, self.num_tokens * self.token_dim))
        return out[:, : self.embedding_dim]

    def compute_output_shape(self, tokens_shape, cond_shape=None):
        return (tokens_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_dim": self.embedding_dim,
                "num_tokens": self.num_tokens,
                "width": self.width,
                "use_adaln": self.use_adaln,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="recsys")
class PriorNetwork(keras.Model):
    """Denoiser of item embeddings conditioned on user, score and timestep.

    A functional model with four inputs: `"x_t"` `(batch, D)` float noisy
    embedding, `"timestep"` `(batch,)` int, `"user"` `(batch,)` int in
    `[0, num_users]` (index `num_users` is the null user), `"score"`
    `(batch,)` int score token (`SCORE_DISLIKE`, `SCORE_LIKE`,
    `SCORE_NULL`). Output: `(batch, D)`, the prediction in whatever
    parameterisation the training model chose (zero at initialisation).

    Args:
        embedding_dim: int >= 1, width D of the item embedding.
        num_users: int >= 1, number of real users.
        num_tokens: int in `[1, D]`, tokens the embedding is cut into.
            Defaults to 4.
        width: int, transformer width, divisible by `num_heads`.
            Defaults to 128.
        depth: int >= 1, number of `PriorBlock`s. Defaults to 4.
        num_heads: int >= 1. Defaults to 4.
        mlp_ratio: int >= 1. Defaults to 4.
        conditioning: `"adaln"` (default), `"cross"` or `"both"`.
        num_timesteps: int >= 2, T of the schedule; sets the longest
            sinusoid period of the timestep embedding. Defaults to 1000.

    Example:

    ```python
    network = PriorNetwork(embedding_dim=64, num_users=610)
    out = network({"x_t": x, "timestep": t, "user": u, "score": s})
    ```
    """

    def __init__(
        self,
        embedding_dim,
        num_users,
        num_tokens=4,
        width=128,
        depth=4,
        num_heads=4,
        mlp_ratio=4,
        conditioning="adaln",
        num_timesteps=1000,
        **kwargs,
    ):
        _check_tokens(embedding_dim, num_tokens)
        if not _is_int(num_users) or num_users < 1:
            raise ValueError(
                "`num_users` must be an int >= 1. Received: "
                f"num_users={num_users!r}"
            )
        if not _is_int(depth) or depth < 1:
            raise ValueError(
                f"`depth` must be an int >= 1. Received: depth={depth!r}"
            )
        _check_width_heads(width, num_heads)
        _check_conditioning(conditioning)
        if not _is_int(num_timesteps) or num_timesteps < 2:
            raise ValueError(
                "`num_timesteps` must be an int >= 2. Received: "
                f"num_timesteps={num_timesteps!r}"
            )
        use_adaln = conditioning in ("adaln", "both")

        # === Layers ===
        # Locals, not attributes: the torch backend refuses layer attributes
        # before `Model.__init__`, and the functional graph tracks them.
        tokenizer = ItemTokenizer(
            embedding_dim, num_tokens, width, name="tokenizer"
        )
        time_embedding = TimestepEmbedding(
            width,
            max_period=max(10.0 * num_timesteps, 10000.0),
            name="time_embedding",
        )
        user_embedding = keras.layers.Embedding(
            num_users + 1, width, name="user_embedding"
        )
        score_embedding = keras.layers.Embedding(
            NUM_SCORES, width, name="score_embedding"
        )
        blocks = [
            PriorBlock(
                width,
                num_heads,
                mlp_ratio=mlp_ratio,
                conditioning=conditioning,
                name=f"block_{i}",
            )
            for i in range(depth)
        ]
        head = PriorHead(
            embedding_dim, num_tokens, width, use_adaln=use_adaln, name="head"
        )

        # === Functional Model ===
        x_t = keras.Input(shape=(embedding_dim,), name="x_t")
        timestep = keras.Input(shape=(), dtype="int32", name="timestep")
        user = keras.Input(shape=(), dtype="int32", name="user")
        score = keras.Input(shape=(), dtype="int32", name="score")
        t_vec = time_embedding(timestep)
        u_vec = user_embedding(user)
        s_vec = score_embedding(score)
        cond = t_vec + u_vec + s_vec  # (batch, width)
        cond_tokens = ops.stack([t_vec, u_vec, s_vec], axis=1)  # (b, 3, w)
        h = tokenizer(x_t)
        for block in blocks:
            h = block(h, cond, cond_tokens)
        output = head(h, cond)
        super().__init__(
            inputs={
                "x_t": x_t,
                "timestep": timestep,
                "user": user,
                "score": score,
            },
            outputs=output,
            **kwargs,
        )

        # === Config ===
        self.embedding_dim = int(embedding_dim)
        self.num_users = int(num_users)
        self.num_tokens = int(num_tokens)
        self.width = int(width)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_ratio = int(mlp_ratio)
        self.conditioning = conditioning
        self.num_timesteps = int(num_timesteps)

    @property
    def null_user(self):
        """Index of the null user row (no user: unconditional)."""
        return self.num_users

    def get_config(self):
        return {
            "name": self.name,
            "embedding_dim": self.embedding_dim,
            "num_users": self.num_users,
            "num_tokens": self.num_tokens,
            "width": self.width,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "conditioning": self.conditioning,
            "num_timesteps": self.num_timesteps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="recsys")
class DiffusionPrior(keras.Model):
    """Training model of the prior: noising, condition dropout, loss.

    A plain subclass, since the loss needs values drawn inside the step.
    Each training example draws `t ~ U{0..T-1}` and `eps ~ N(0, I)`,
    forms `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`, and (in training
    only) replaces its user by the null user with probability `p_drop_user`
    and, independently, its score by the null score with probability
    `p_drop_score`. The network's output is compared with the target of
    `parameterization` by a per-example MSE, weighted per `snr_weighting`.

    Args:
        network: a `PriorNetwork`.
        num_timesteps: int >= 2, T. Defaults to 1000.
        schedule: `"linear"` or `"cosine"` (default).
        parameterization: `"epsilon"`, `"x0"` or `"v"` (default).
        p_drop_user: float in `[0, 1]`. Defaults to 0.1.
        p_drop_score: float in `[0, 1]`. Defaults to 0.1.
        snr_weighting: `"none"` (default) or `"min_snr"`.
        snr_gamma: float > 0, the Min-SNR cap. Defaults to 5.0.
        seed: optional int for the timestep, noise and dropout draws.

    Call arguments:
        inputs: dict with `"x0"` `(batch, D)` float clean embeddings,
            `"user"` and `"score"` `(batch,)` int; optionally `"timestep"`
            `(batch,)` int and `"noise"` `(batch, D)` float, used instead
            of fresh draws (a fixed validation set).
        training: bool, turns condition dropout on.

    Returns:
        dict with `"prediction"` and `"target"` `(batch, D)` and `"weight"`
        `(batch,)`.

    Example:

    ```python
    prior = DiffusionPrior(PriorNetwork(64, num_users=610))
    prior.compile(optimizer="adam")
    prior.fit({"x0": x0, "user": user, "score": score}, epochs=10)
    ```
    """

    def __init__(
        self,
        network,
        num_timesteps=1000,
        schedule="cosine",
        parameterization="v",
        p_drop_user=0.1,
        p_drop_score=0.1,
        snr_weighting="none",
        snr_gamma=5.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(network, PriorNetwork):
            raise ValueError(
                "`network` must be a `PriorNetwork`. Received: "
                f"{type(network).__name__}"
            )
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"`parameterization` must be one of {PARAMETERIZATIONS}. "
                f"Received: parameterization={parameterization!r}"
            )
        for name, value in (
            ("p_drop_user", p_drop_user),
            ("p_drop_score", p_drop_score),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"`{name}` must be in [0, 1]. Received: {name}={value!r}"
                )
        if snr_weighting not in SNR_WEIGHTINGS:
            raise ValueError(
                f"`snr_weighting` must be one of {SNR_WEIGHTINGS}. "
                f"Received: snr_weighting={snr_weighting!r}"
            )
        if not snr_gamma > 0:
            raise ValueError(
                f"`snr_gamma` must be > 0. Received: snr_gamma={snr_gamma!r}"
            )
        self.network = network
        self.noise_schedule = NoiseSchedule(num_timesteps, schedule)
        if network.num_timesteps != self.noise_schedule.num_timesteps:
            raise ValueError(
                "`network.num_timesteps` must equal `num_timesteps`. "
                f"Received: {network.num_timesteps} and {num_timesteps}"
            )
        self.parameterization = parameterization
        self.p_drop_user = float(p_drop_user)
        self.p_drop_score = float(p_drop_score)
        self.snr_weighting = snr_weighting
        self.snr_gamma = float(snr_gamma)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.build()

    def build(self, input_shape=None):
        # The functional network is built on construction.
        self.built = True

    def call(self, inputs, training=False):
        x0 = ops.cast(inputs["x0"], self.compute_dtype)
        batch = ops.shape(x0)[0]
        timestep = inputs.get("timestep")
        if timestep is None:
            timestep = keras.random.randint(
                (batch,),
                0,
                self.noise_schedule.num_timesteps,
                seed=self.seed_generator,
            )
        timestep = ops.cast(timestep, "int32")
        noise = inputs.get("noise")
        if noise is None:
            noise = keras.random.normal(
                ops.shape(x0),
                dtype=self.compute_dtype,
                seed=self.seed_generator,
            )
        noise = ops.cast(noise, self.compute_dtype)
        user = ops.cast(inputs["user"], "int32")
        score = ops.cast(inputs["score"], "int32")
        if training:
            user = self._drop(user, self.p_drop_user, self.network.null_user)
            score = self._drop(score, self.p_drop_score, SCORE_NULL)
        schedule = self.noise_schedule
        x_t = schedule.add_noise(x0, noise, timestep)
        prediction = self.network(
            {"x_t": x_t, "timestep": timestep, "user": user, "score": score},
            training=training,
        )
        return {
            "prediction": prediction,
            "target": schedule.target(
                x0, noise, timestep, self.parameterization
            ),
            "weight": schedule.loss_weight(
                timestep,
                self.parameterization,
                self.snr_weighting,
                self.snr_gamma,
            ),
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Weighted MSE: mean over the batch of `weight * mean_d (prediction
        - target)^2`, times `sample_weight` when given, plus any layer
        losses."""
        prediction = ops.convert_to_tensor(y_pred["prediction"])
        error = ops.mean(
            ops.square(
                prediction - ops.cast(y_pred["target"], prediction.dtype)
            ),
            axis=-1,
        )
        weight = ops.cast(y_pred["weight"], error.dtype)
        if sample_weight is not None:
            weight = weight * ops.reshape(
                ops.cast(sample_weight, error.dtype), (-1,)
            )
        total = ops.mean(weight * error)
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        return total

    def get_config(self):
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "num_timesteps": self.noise_schedule.num_timesteps,
            "schedule": self.noise_schedule.schedule,
            "parameterization": self.parameterization,
            "p_drop_user": self.p_drop_user,
            "p_drop_score": self.p_drop_score,
            "snr_weighting": self.snr_weighting,
            "snr_gamma": self.snr_gamma,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network=network, **config)

    def _drop(self, tokens, rate, null):
        """Each token replaced by `null` with probability `rate`."""
        if rate == 0.0:
            return tokens
        draw = keras.random.uniform(ops.shape(tokens), seed=self.seed_generator)
        return ops.where(draw < rate, ops.full_like(tokens, null), tokens)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_tokens(embedding_dim, num_tokens):
    if not _is_int(embedding_dim) or embedding_dim < 1:
        raise ValueError(
            "`embedding_dim` must be an int >= 1. Received: "
            f"embedding_dim={embedding_dim!r}"
        )
    if not _is_int(num_tokens) or not 1 <= num_tokens <= embedding_dim:
        raise ValueError(
            f"`num_tokens` must be an int in [1, embedding_dim="
            f"{embedding_dim}]. Received: num_tokens={num_tokens!r}"
        )


def _check_width_heads(width, num_heads):
    if not _is_int(num_heads) or num_heads < 1:
        raise ValueError(
            f"`num_heads` must be an int >= 1. Received: {num_heads!r}"
        )
    if not _is_int(width) or width < 1 or width % num_heads:
        raise ValueError(
            "`width` must be a positive int divisible by `num_heads` "
            f"({num_heads}). Received: width={width!r}"
        )


def _check_conditioning(conditioning):
    if conditioning not in CONDITIONINGS:
        raise ValueError(
            f"`conditioning` must be one of {CONDITIONINGS}. Received: "
            f"conditioning={conditioning!r}"
        )
