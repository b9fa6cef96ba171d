"""DDPM and DDIM sampling with classifier-free guidance, batched over users.

The reverse process runs on the host: a loop over the sampler's timesteps
whose only heavy work, the network call, goes through
`keras.Model.predict_on_batch` (XLA-compiled on JAX, a `tf.function` on
TensorFlow, eager on torch) on a few fixed, padded batch shapes, so each
shape compiles once. The per-step update is a handful of NumPy operations
on `(rows, dim)` arrays, and all noise comes from one
`np.random.default_rng(seed)`, so a seed gives the same samples on every
backend up to float rounding.

Classifier-free guidance (Ho & Salimans 2022) mixes a conditional and an
unconditional prediction,

    out = out_uncond + s * (out_cond - out_uncond),

for s >= 0 (s = 0: unconditional, s = 1: conditional, s > 1: guided). It
is written for eps, but every parameterisation converts to eps by an affine
map of the output with coefficients that depend only on (x_t, t) (see
`NoiseSchedule.split_prediction`), and the mixing weights (1 - s, s) sum to
one, so mixing x0- or v-outputs gives exactly the eps-guided result.

References:
    Ho, Jain, Abbeel 2020. Denoising Diffusion Probabilistic Models.
    Song, Meng, Ermon 2021. Denoising Diffusion Implicit Models.
    Nichol & Dhariwal 2021. Improved Denoising Diffusion Probabilistic
        Models (respacing: sampling over a subset of the timesteps).
    Ho & Salimans 2022. Classifier-Free Diffusion Guidance.
"""

import logging

import keras
import numpy as np

from diffusion.prior import SCORE_NULL

logger = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim")
_MAX_BATCH = 4096  # rows per network call (cond + uncond together)


class DDPMSampler:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2).

    With `num_steps < T` it samples over an evenly spaced subset of the
    timesteps with the respaced betas `1 - abar_t / abar_prev` (Nichol &
    Dhariwal 2021, section 4); with `num_steps = T` (the default) it is the
    original algorithm with the posterior variance beta-tilde.

    Args:
        schedule: a `NoiseSchedule`.
        num_steps: int in `[1, T]`, or None for T.

    Example:

    ```python
    sampler = DDPMSampler(schedule, num_steps=100)
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(x0_hat, eps_hat, i, x, rng.standard_normal(x.shape))
    ```
    """

    def __init__(self, schedule, num_steps=None):
        self.schedule = schedule
        self.set_timesteps(
            schedule.num_timesteps if num_steps is None else num_steps
        )

    def set_timesteps(self, num_steps):
        """Use `num_steps` evenly spaced timesteps, from T - 1 down to 0."""
        self.timesteps = spaced_timesteps(
            self.schedule.num_timesteps, num_steps
        )
        abar = self.schedule.tables64["alphas_cumprod"]
        self._abar = abar[self.timesteps]
        self._abar_prev = np.append(abar[self.timesteps[1:]], 1.0)

    @property
    def num_steps(self):
        return len(self.timesteps)

    @property
    def stochastic(self):
        """Whether `step` uses its `noise` argument."""
        return True

    def step(self, x0_hat, eps_hat, index, x_t, noise):
        """x_{t_prev} from x_t and the denoiser's estimate of x0.

        Args:
            x0_hat: `(rows, dim)` predicted clean sample.
            eps_hat: `(rows, dim)` predicted noise (unused here; kept so
                every sampler has one signature).
            index: int, position of t in `self.timesteps`.
            x_t: `(rows, dim)` current sample.
            noise: `(rows, dim)` standard normal draws.

        Returns:
            `(rows, dim)` float32 sample at the next (smaller) timestep.
        """
        abar_t, abar_prev = self._abar[index], self._abar_prev[index]
        # 1. The beta of the (possibly respaced) step t -> t_prev.
        beta = 1.0 - abar_t / abar_prev
        # 2. Posterior q(x_prev | x_t, x0) with x0 := x0_hat (Ho et al.
        #    2020, eqs. 6-7): mean = c1 x0 + c2 x_t, variance beta-tilde.
        c1 = np.sqrt(abar_prev) * beta / (1.0 - abar_t)
        c2 = np.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
        variance = beta * (1.0 - abar_prev) / (1.0 - abar_t)
        # 3. Ancestral draw; the variance is 0 on the last step.
        x_prev = c1 * x0_hat + c2 * x_t + np.sqrt(variance) * noise
        return x_prev.astype(np.float32)


class DDIMSampler(DDPMSampler):
    """Denoising diffusion implicit models (Song et al. 2021, eq. 12).

    `eta = 0` is the deterministic DDIM; `eta = 1` has the DDPM posterior
    variance on the same timesteps (and matches `DDPMSampler` exactly).

    Args:
        schedule: a `NoiseSchedule`.
        num_steps: int in `[1, T]`. Defaults to 50.
        eta: float >= 0. Defaults to 0.0.
    """

    def __init__(self, schedule, num_steps=50, eta=0.0):
        if not eta >= 0:
            raise ValueError(f"`eta` must be >= 0. Received: eta={eta!r}")
        self.eta = float(eta)
        super().__init__(schedule, num_steps)

    @property
    def stochastic(self):
        return self.eta > 0

    def step(self, x0_hat, eps_hat, index, x_t, noise):
        """See `DDPMSampler.step`; here `eps_hat` is used and `noise` only
        when `eta > 0`."""
        abar_t, abar_prev = self._abar[index], self._abar_prev[index]
        # 1. sigma_t of eq. 16, scaled by eta.
        sigma = (
            self.eta
            * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
            * np.sqrt(1.0 - abar_t / abar_prev)
        )
        # 2. "direction pointing to x_t" (eq. 12, middle term).
        direction = np.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps_hat
        # 3. x_prev = sqrt(abar_prev) x0_hat + direction + sigma z.
        x_prev = np.sqrt(abar_prev) * x0_hat + direction
        if sigma > 0:
            x_prev = x_prev + sigma * noise
        return x_prev.astype(np.float32)


def spaced_timesteps(num_timesteps, num_steps):
    """`num_steps` distinct ints evenly spaced over `[0, T)`, descending,
    always including T - 1 and (for two or more steps) 0."""
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or not 1 <= num_steps <= num_timesteps
    ):
        raise ValueError(
            f"`num_steps` must be an int in [1, {num_timesteps}]. "
            f"Received: num_steps={num_steps!r}"
        )
    steps = np.round(np.linspace(num_timesteps - 1, 0, num_steps))
    return steps.astype(np.int64)


def make_sampler(schedule, method="ddim", num_steps=50, eta=0.0):
    """`DDIMSampler` or (respaced) `DDPMSampler` by name."""
    if method not in SAMPLERS:
        raise ValueError(
            f"`sampler` must be one of {SAMPLERS}. Received: {method!r}"
        )
    if method == "ddpm":
        return DDPMSampler(schedule, num_steps)
    return DDIMSampler(schedule, num_steps, eta)


def guide(cond, uncond, scale):
    """Classifier-free guidance: `uncond + scale * (cond - uncond)`."""
    return uncond + scale * (cond - uncond)


def reverse_process(
    denoise, x, schedule, sampler, parameterization, rng, progress=False
):
    """Run the reverse process from x_T to x_0.

    Args:
        denoise: callable `(x_t (rows, dim) float32, t (rows,) int32) ->
            (rows, dim)` network output in `parameterization`.
        x: `(rows, dim)` float32 starting noise x_T.
        schedule: the `NoiseSchedule` the denoiser was trained with.
        sampler: a `DDPMSampler` or `DDIMSampler` on that schedule.
        parameterization: `"epsilon"`, `"x0"` or `"v"`.
        rng: `np.random.Generator` for the step noise.
        progress: bool, show a Keras progress bar over the steps.

    Returns:
        `(rows, dim)` float32 samples.
    """
    x = np.asarray(x, np.float32)
    bar = keras.utils.Progbar(sampler.num_steps) if progress else None
    for index, t in enumerate(sampler.timesteps):
        t_vec = np.full(len(x), t, np.int32)
        output = np.asarray(denoise(x, t_vec), np.float32)
        x0_hat, eps_hat = schedule.split_prediction(
            output, x, t_vec, parameterization
        )
        noise = (
            rng.standard_normal(x.shape, dtype=np.float32)
            if sampler.stochastic
            else None
        )
        x = sampler.step(x0_hat, eps_hat, index, x, noise)
        if bar is not None:
            bar.update(index + 1)
    return x


class GuidedDenoiser:
    """A `PriorNetwork` with classifier-free guidance, as the `denoise`
    callable of `reverse_process`.

    The conditional rows `(user, score)` and the unconditional rows (null
    user, null score) go through the network in one call. Only the needed
    pass runs when `scale` is 0 (unconditional) or 1 (conditional). Batches
    are padded to a power of two (at most `max_batch` rows) so compiled
    backends trace a few shapes only.

    Args:
        network: a built `PriorNetwork`.
        user: `(rows,)` int user indices (the network's null user allowed).
        score: `(rows,)` int score tokens.
        scale: float >= 0, the guidance scale s.
        max_batch: int, largest network batch. Defaults to 4096.
    """

    def __init__(self, network, user, score, scale, max_batch=_MAX_BATCH):
        if not scale >= 0:
            raise ValueError(
                f"`guidance_scale` must be >= 0. Received: {scale!r}"
            )
        self.network = network
        self.user = np.asarray(user, np.int32)
        self.score = np.asarray(score, np.int32)
        self.scale = float(scale)
        self.max_batch = int(max_batch)

    def __call__(self, x_t, t):
        rows = len(x_t)
        null_user = np.full(rows, self.network.null_user, np.int32)
        null_score = np.full(rows, SCORE_NULL, np.int32)
        if self.scale == 0.0:
            return self._predict(x_t, t, null_user, null_score)
        if self.scale == 1.0:
            return self._predict(x_t, t, self.user, self.score)
        both = self._predict(
            np.concatenate([x_t, x_t]),
            np.concatenate([t, t]),
            np.concatenate([self.user, null_user]),
            np.concatenate([self.score, null_score]),
        )
        return guide(both[:rows], both[rows:], self.scale)

    def _predict(self, x_t, t, user, score):
        rows = len(x_t)
        batch = min(self.max_batch, 1 << max(0, (rows - 1).bit_length()))
        out = np.empty_like(x_t)
        for start in range(0, rows, batch):
            stop = min(start + batch, rows)
            pad = batch - (stop - start)
            inputs = {
                "x_t": x_t[start:stop],
                "timestep": t[start:stop],
                "user": user[start:stop],
                "score": score[start:stop],
            }
            if pad:
                inputs = {
                    k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)])
                    for k, v in inputs.items()
                }
            result = self.network.predict_on_batch(inputs)
            out[start:stop] = keras.ops.convert_to_numpy(result)[: stop - start]
        return out


def generate(
    network,
    schedule,
    parameterization,
    user,
    score,
    num_samples=1,
    guidance_scale=1.0,
    method="ddim",
    num_steps=50,
    eta=0.0,
    seed=0,
    max_batch=_MAX_BATCH,
    progress=False,
):
    """Sample item embeddings (in the prior's standardised space).

    Args:
        network: a trained `PriorNetwork`.
        schedule: the `NoiseSchedule` it was trained with.
        parameterization: what the network predicts.
        user: `(num_conditions,)` int user indices (`network.null_user`
            for none).
        score: `(num_conditions,)` int score tokens (`SCORE_LIKE`,
            `SCORE_DISLIKE` or `SCORE_NULL`).
        num_samples: int >= 1, samples per condition.
        guidance_scale: float >= 0.
        method: `"ddim"` or `"ddpm"`.
        num_steps: int, reverse steps.
        eta: float >= 0, DDIM noise.
        seed: int, seeds all noise (start and steps).
        max_batch: int, rows per network call.
        progress: bool, progress bar over the steps.

    Returns:
        `(num_conditions, num_samples, embedding_dim)` float32.
    """
    user = np.asarray(user, np.int32).reshape(-1)
    score = np.asarray(score, np.int32).reshape(-1)
    if user.shape != score.shape:
        raise ValueError(
            "`user` and `score` must have one entry per condition. "
            f"Received: {user.shape} and {score.shape}"
        )
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, (int, np.integer))
        or num_samples < 1
    ):
        raise ValueError(
            f"`num_samples` must be an int >= 1. Received: {num_samples!r}"
        )
    sampler = make_sampler(schedule, method, num_steps, eta)
    dim = network.embedding_dim
    rows_user = np.repeat(user, num_samples)
    rows_score = np.repeat(score, num_samples)
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((len(rows_user), dim), dtype=np.float32)
    denoise = GuidedDenoiser(
        network, rows_user, rows_score, guidance_scale, max_batch
    )
    logger.info(
        "sampling conditions=%d samples=%d (%s, %d steps, eta=%g, guidance=%g)",
        len(user),
        num_samples,
        method,
        sampler.num_steps,
        eta,
        guidance_scale,
    )
    x0 = reverse_process(
        denoise, x_T, schedule, sampler, parameterization, rng, progress
    )
    return x0.reshape(len(user), num_samples, dim)
