"""Noise schedules, the forward process and the three parameterisations.

A Gaussian diffusion (Ho et al. 2020) corrupts a clean vector x_0 over
timesteps t = 0 .. T-1 with

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
    abar_t = prod_{s <= t} (1 - beta_s),

so `x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`. A denoiser may predict
the noise eps, the clean x_0, or the velocity
`v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0` (Salimans & Ho 2022); given
x_t, each determines the others, and `NoiseSchedule` converts between them.

The schedule holds tables only (no weights, no network): they are computed
once in float64 NumPy and stored as float32. Every method takes NumPy arrays
(host-side sampling, tests) or backend tensors (the training model); the one
place that tells them apart is `_extract`, which gathers a table at `t` and
reshapes it to broadcast against x.

References:
    Ho, Jain, Abbeel 2020. Denoising Diffusion Probabilistic Models.
    Nichol & Dhariwal 2021. Improved Denoising Diffusion Probabilistic
        Models (cosine schedule, "squaredcos_cap_v2").
    Salimans & Ho 2022. Progressive Distillation for Fast Sampling of
        Diffusion Models (v-prediction).
    Hang et al. 2023. Efficient Diffusion Training via Min-SNR Weighting
        Strategy.
    Wang et al. 2023. Diffusion Recommender Model (DiffRec; the
        "linear_variance" schedule: few steps, little noise).
"""

import math

import numpy as np
from keras import ops

SCHEDULES = ("linear", "cosine", "scaled_linear", "linear_variance")
PARAMETERIZATIONS = ("epsilon", "x0", "v")
SNR_WEIGHTINGS = ("none", "min_snr")

# Ho et al. 2020 use betas from 1e-4 to 0.02 over T = 1000; for other T both
# ends scale by 1000 / T so that abar_{T-1} stays near zero (Nichol &
# Dhariwal 2021, section 3.2).
_LINEAR_BETA_START = 1e-4
_LINEAR_BETA_END = 0.02
# Stable Diffusion v1 trains with "scaled linear" betas: linear in
# sqrt(beta) from 0.00085 to 0.012 over T = 1000 (Rombach et al. 2022).
_SCALED_LINEAR_BETA_START = 0.00085
_SCALED_LINEAR_BETA_END = 0.012
# Cosine schedule offset s and the beta cap of Nichol & Dhariwal 2021.
_COSINE_OFFSET = 0.008
_MAX_BETA = 0.999
_TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
)


class NoiseSchedule:
    """Beta schedule of a Gaussian diffusion with its derived tables.

    Args:
        num_timesteps: int >= 2, the number of diffusion steps T; timesteps
            are integers in `[0, T)`. Defaults to 1000.
        schedule: `"linear"` (Ho et al. 2020, ends scaled by 1000 / T),
            `"cosine"` (Nichol & Dhariwal 2021, `squaredcos_cap_v2`) or
            `"scaled_linear"` (Stable Diffusion v1's training schedule) or
            `"linear_variance"` (DiffRec: the noise variance `1 - abar_t`
            grows linearly over `variance_range`). Defaults to `"cosine"`.
        variance_range: `(first, last)` noise variances of
            `"linear_variance"`, `0 < first <= last < 1`.

    Attributes (float32 NumPy arrays of shape `(T,)`; the float64 originals
    are in `self.tables64`): `betas`, `alphas`, `alphas_cumprod` (abar_t),
    `alphas_cumprod_prev` (abar_{t-1}, 1 at t = 0), `sqrt_alphas_cumprod`,
    `sqrt_one_minus_alphas_cumprod`, `sqrt_recip_alphas_cumprod`,
    `sqrt_recipm1_alphas_cumprod`, `posterior_variance`,
    `posterior_log_variance_clipped`, `posterior_mean_coef1`,
    `posterior_mean_coef2`, `snr` (abar_t / (1 - abar_t)).

    Example:

    ```python
    schedule = NoiseSchedule(1000, "cosine")
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.target(x0, noise, t, "v")
    x0_hat, eps_hat = schedule.split_prediction(output, x_t, t, "v")
    ```
    """

    def __init__(
        self, num_timesteps=1000, schedule="cosine", variance_range=None
    ):
        if (
            isinstance(num_timesteps, bool)
            or not isinstance(num_timesteps, (int, np.integer))
            or num_timesteps < 2
        ):
            raise ValueError(
                "`num_timesteps` must be an int >= 2. Received: "
                f"num_timesteps={num_timesteps!r}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. Received: "
                f"schedule={schedule!r}"
            )
        if schedule == "linear_variance":
            lo, hi = variance_range or (None, None)
            if lo is None or not 0.0 < lo < hi < 1.0:
                raise ValueError(
                    "`schedule='linear_variance'` needs `variance_range` "
                    "(first, last) with 0 < first < last < 1. Received: "
                    f"variance_range={variance_range!r}"
                )
            variance_range = (float(lo), float(hi))
            betas = _linear_variance_betas(lo, hi, int(num_timesteps))
        else:
            variance_range = None
            betas = _betas(schedule, int(num_timesteps))
        self.num_timesteps = int(num_timesteps)
        self.schedule = schedule
        self.variance_range = variance_range
        self.tables64 = _tables(betas)
        for name in _TABLES:
            setattr(self, name, self.tables64[name].astype(np.float32))

    # --- forward process --------------------------------------------------

    def add_noise(self, x0, noise, t):
        """Sample of q(x_t | x_0): `sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`.

        Args:
            x0: `(batch, ...)` clean data.
            noise: standard normal noise, shaped like `x0`.
            t: `(batch,)` int timesteps in `[0, T)`.
        """
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def posterior(self, x0, x_t, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7).

        Returns:
            `(mean, variance, log_variance)`; variance and log variance are
            broadcastable against `x_t` (the log variance is clipped at
            t = 0, where the variance is 0).
        """
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._extract(self.posterior_variance, t, x_t),
            self._extract(self.posterior_log_variance_clipped, t, x_t),
        )

    # --- parameterisations ------------------------------------------------

    def velocity(self, x0, noise, t):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * noise
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def x0_from_epsilon(self, x_t, eps, t):
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def epsilon_from_x0(self, x_t, x0, t):
        """eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0
        ) / self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def x0_from_velocity(self, x_t, v, t):
        """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def epsilon_from_velocity(self, x_t, v, t):
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
        return (
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
            + self._extract(self.sqrt_alphas_cumprod, t, x_t) * v
        )

    def target(self, x0, noise, t, parameterization):
        """What a network of this parameterisation learns to output."""
        _check_parameterization(parameterization)
        if parameterization == "epsilon":
            return noise
        if parameterization == "x0":
            return x0
        return self.velocity(x0, noise, t)

    def split_prediction(self, output, x_t, t, parameterization):
        """`(x0_hat, eps_hat)` from a network output of any
        parameterisation, given the x_t it saw."""
        _check_parameterization(parameterization)
        if parameterization == "epsilon":
            return self.x0_from_epsilon(x_t, output, t), output
        if parameterization == "x0":
            return output, self.epsilon_from_x0(x_t, output, t)
        return (
            self.x0_from_velocity(x_t, output, t),
            self.epsilon_from_velocity(x_t, output, t),
        )

    def convert(self, output, x_t, t, source, destination):
        """A network output re-expressed in another parameterisation."""
        _check_parameterization(destination)
        x0, eps = self.split_prediction(output, x_t, t, source)
        if destination == "epsilon":
            return eps
        if destination == "x0":
            return x0
        return self.velocity(x0, eps, t)

    def loss_weight(
        self, t, parameterization, snr_weighting="none", snr_gamma=5.0
    ):
        """Per-example weight of the MSE on the parameterisation's target.

        `"none"` weighs every example 1. `"min_snr"` (Hang et al. 2023)
        makes the loss `min(SNR_t, gamma) * |x0 - x0_hat|^2`, which is
        `min(SNR, gamma) / SNR` times the epsilon MSE,
        `min(SNR, gamma) / (SNR + 1)` times the v MSE, and
        `min(SNR, gamma)` times the x0 MSE.

        Args:
            t: `(batch,)` int timesteps, NumPy or a backend tensor.

        Returns:
            `(batch,)` float32 weights, of the same kind as `t`.
        """
        _check_parameterization(parameterization)
        if snr_weighting not in SNR_WEIGHTINGS:
            raise ValueError(
                f"`snr_weighting` must be one of {SNR_WEIGHTINGS}. "
                f"Received: snr_weighting={snr_weighting!r}"
            )
        if not snr_gamma > 0:
            raise ValueError(
                f"`snr_gamma` must be > 0. Received: snr_gamma={snr_gamma!r}"
            )
        if snr_weighting == "none":
            table = np.ones(self.num_timesteps, np.float64)
        else:
            snr = self.tables64["snr"]
            clipped = np.minimum(snr, snr_gamma)
            table = {
                "epsilon": clipped / snr,
                "v": clipped / (snr + 1.0),
                "x0": clipped,
            }[parameterization]
        table = table.astype(np.float32)
        if isinstance(t, (np.ndarray, int, np.integer)):
            return table[np.asarray(t)]
        return ops.take(table, ops.cast(t, "int32"))

    # --- serialisation ----------------------------------------------------

    def get_config(self):
        config = {
            "num_timesteps": self.num_timesteps,
            "schedule": self.schedule,
        }
        if self.variance_range is not None:
            config["variance_range"] = list(self.variance_range)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (
            f"NoiseSchedule(num_timesteps={self.num_timesteps}, "
            f"schedule={self.schedule!r})"
        )

    # --- private ----------------------------------------------------------

    def _extract(self, table, t, x):
        """`table[t]` reshaped to `(batch, 1, ..., 1)` to broadcast against
        `x`; NumPy in, NumPy out, a backend tensor otherwise."""
        if isinstance(x, np.ndarray):
            values = table[np.asarray(t)]
            return values.reshape(values.shape + (1,) * (x.ndim - 1))
        values = ops.take(table, ops.cast(t, "int32"))
        values = ops.cast(values, x.dtype)
        return ops.reshape(values, (-1,) + (1,) * (len(x.shape) - 1))


def _betas(schedule, num_timesteps):
    """`(T,)` float64 betas of the named schedule."""
    if schedule == "linear":
        scale = 1000.0 / num_timesteps
        return np.linspace(
            scale * _LINEAR_BETA_START,
            scale * _LINEAR_BETA_END,
            num_timesteps,
            dtype=np.float64,
        )
    if schedule == "scaled_linear":
        return (
            np.linspace(
                _SCALED_LINEAR_BETA_START**0.5,
                _SCALED_LINEAR_BETA_END**0.5,
                num_timesteps,
                dtype=np.float64,
            )
            ** 2
        )
    # beta_t = 1 - f(t + 1) / f(t) with f(t) = cos^2(((t / T) + s) / (1 + s)
    # * pi / 2), capped so that the last steps stay invertible.
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2)
    f = f**2
    return np.minimum(1.0 - f[1:] / f[:-1], _MAX_BETA)


def _linear_variance_betas(first, last, num_timesteps):
    """Betas whose noise variance `1 - abar_t` runs linearly from `first`
    to `last` (DiffRec's schedule)."""
    abar = 1.0 - np.linspace(first, last, num_timesteps, dtype=np.float64)
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    return np.minimum(betas, _MAX_BETA)


def _tables(betas):
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": posterior_variance,
        # The variance is 0 at t = 0; Ho et al.'s code logs the t = 1 value
        # there instead so the log stays finite.
        "posterior_log_variance_clipped": np.log(
            np.concatenate([posterior_variance[1:2], posterior_variance[1:]])
        ),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev)
        * np.sqrt(alphas)
        / (1.0 - abar),
        "snr": abar / (1.0 - abar),
    }


def _check_parameterization(parameterization):
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"`parameterization` must be one of {PARAMETERIZATIONS}. "
            f"Received: parameterization={parameterization!r}"
        )
