"""Tests for diffusion/schedule.py: beta schedules against their closed
forms, pinned values, the forward process, the posterior, the three
parameterisations and their conversions, Min-SNR weights."""

import json
import math

import numpy as np
import pytest
from keras import ops

from diffusion.schedule import NoiseSchedule


def _cosine_f(t, num_timesteps, s=0.008):
    return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2


def _dummy(shape=(3, 4)):
    """A deterministic sample and noise (diffusers-style dummy inputs)."""
    size = int(np.prod(shape))
    x0 = np.linspace(-1.0, 1.0, size).reshape(shape).astype(np.float32)
    noise = np.cos(np.arange(size)).reshape(shape).astype(np.float32)
    return x0, noise


# ---------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------


def test_linear_schedule_closed_form_and_pinned_values():
    s = NoiseSchedule(1000, "linear")
    np.testing.assert_allclose(
        s.tables64["betas"], np.linspace(1e-4, 0.02, 1000), rtol=0, atol=0
    )
    # abar_t = prod (1 - beta_s), computed another way: exp(sum log1p).
    expected = np.exp(np.cumsum(np.log1p(-np.linspace(1e-4, 0.02, 1000))))
    np.testing.assert_allclose(
        s.tables64["alphas_cumprod"], expected, rtol=1e-12
    )
    np.testing.assert_allclose(
        s.tables64["alphas_cumprod"][[0, 1, 499, 998, 999]],
        [0.9999, 0.999780092, 0.0785872429, 4.11819364e-05, 4.03582977e-05],
        rtol=1e-8,
    )


def test_linear_schedule_scales_with_the_number_of_steps():
    s = NoiseSchedule(100, "linear")
    assert s.tables64["betas"][0] == pytest.approx(1e-3)
    assert s.tables64["betas"][-1] == pytest.approx(0.2)
    # Fully noised at the end, as with T = 1000.
    assert s.alphas_cumprod[-1] < 1e-4


def test_cosine_schedule_closed_form_and_pinned_values():
    T = 1000
    s = NoiseSchedule(T, "cosine")
    abar = s.tables64["alphas_cumprod"]
    # Telescoping product: abar_t = f(t + 1) / f(0) wherever beta is not
    # capped (every step but the last for T = 1000).
    uncapped = s.tables64["betas"] < 0.999
    assert uncapped[:-1].all() and not uncapped[-1]
    for t in (0, 1, 250, 499, 900, 998):
        assert abar[t] == pytest.approx(
            _cosine_f(t + 1, T) / _cosine_f(0, T), rel=1e-10
        )
    assert s.tables64["betas"][-1] == 0.999
    np.testing.assert_allclose(
        abar[[0, 1, 499, 998, 999]],
        [0.999958716, 0.999912576, 0.493843590, 2.42876691e-06, 2.42876691e-09],
        rtol=1e-7,
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_tables_float32_from_float64(schedule):
    s = NoiseSchedule(50, schedule)
    for name in ("betas", "alphas_cumprod", "posterior_variance", "snr"):
        table = getattr(s, name)
        assert table.dtype == np.float32 and table.shape == (50,)
        np.testing.assert_array_equal(
            table, s.tables64[name].astype(np.float32)
        )
    assert np.all(np.diff(s.tables64["alphas_cumprod"]) < 0)
    np.testing.assert_allclose(
        s.tables64["sqrt_alphas_cumprod"] ** 2
        + s.tables64["sqrt_one_minus_alphas_cumprod"] ** 2,
        1.0,
        rtol=1e-12,
    )


def test_config_round_trip_and_errors():
    s = NoiseSchedule(64, "linear")
    again = NoiseSchedule.from_config(json.loads(json.dumps(s.get_config())))
    np.testing.assert_array_equal(again.betas, s.betas)
    assert again.get_config() == {"num_timesteps": 64, "schedule": "linear"}
    with pytest.raises(ValueError, match="`schedule` must be one of"):
        NoiseSchedule(10, "sigmoid")
    with pytest.raises(ValueError, match="`num_timesteps` must be an int"):
        NoiseSchedule(1)
    with pytest.raises(ValueError, match="`num_timesteps` must be an int"):
        NoiseSchedule(10.0)


# ---------------------------------------------------------------------------
# Forward process and posterior
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, noised_sum, velocity_sum",
    [
        ("linear", -3.48961091, -2.38290524),
        ("cosine", -3.84158158, -1.81327713),
    ],
)
def test_add_noise_pinned_and_closed_form(schedule, noised_sum, velocity_sum):
    s = NoiseSchedule(1000, schedule)
    x0, noise = _dummy()
    t = np.array([0, 500, 999])
    x_t = s.add_noise(x0, noise, t)
    abar = s.tables64["alphas_cumprod"][t][:, None]
    np.testing.assert_allclose(
        x_t,
        np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise,
        rtol=1e-6,
        atol=1e-6,
    )
    assert float(x_t.sum()) == pytest.approx(noised_sum, abs=1e-5)
    v = s.velocity(x0, noise, t)
    assert float(v.sum()) == pytest.approx(velocity_sum, abs=1e-5)


def test_backend_tensors_give_the_numpy_result():
    s = NoiseSchedule(100, "cosine")
    x0, noise = _dummy((4, 3))
    t = np.array([0, 10, 50, 99], np.int32)
    expected = s.add_noise(x0, noise, t)
    got = s.add_noise(
        ops.convert_to_tensor(x0),
        ops.convert_to_tensor(noise),
        ops.convert_to_tensor(t),
    )
    assert not isinstance(got, np.ndarray)
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), expected, rtol=1e-6, atol=1e-6
    )
    weights = s.loss_weight(ops.convert_to_tensor(t), "epsilon", "min_snr")
    np.testing.assert_allclose(
        ops.convert_to_numpy(weights),
        s.loss_weight(t, "epsilon", "min_snr"),
        rtol=1e-6,
    )


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_is_the_gaussian_product(schedule):
    """q(x_{t-1} | x_t, x0) ~ q(x_t | x_{t-1}) q(x_{t-1} | x0), derived
    here as a product of two 1-D Gaussians, not from Ho et al.'s eq. 7."""
    s = NoiseSchedule(200, schedule)
    x0, noise = _dummy((5, 2))
    t = np.array([1, 2, 50, 150, 199])
    x_t = s.add_noise(x0, noise, t).astype(np.float64)
    mean, variance, log_variance = s.posterior(x0.astype(np.float64), x_t, t)
    beta = s.tables64["betas"][t][:, None]
    abar_prev = s.tables64["alphas_cumprod_prev"][t][:, None]
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)
    expected_mean = (
        np.sqrt(1 - beta) * x_t / beta
        + np.sqrt(abar_prev) * x0 / (1 - abar_prev)
    ) / precision
    np.testing.assert_allclose(variance, 1 / precision, rtol=1e-5)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_variance, np.log(1 / precision), rtol=1e-5)


def test_posterior_at_t0_returns_x0_with_clipped_log_variance():
    s = NoiseSchedule(100, "linear")
    x0, noise = _dummy((1, 4))
    t = np.array([0])
    mean, variance, log_variance = s.posterior(x0, s.add_noise(x0, noise, t), t)
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    assert variance.item() == 0.0
    assert log_variance.item() == pytest.approx(
        math.log(s.tables64["posterior_variance"][1]), rel=1e-6
    )


# ---------------------------------------------------------------------------
# Parameterisations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("parameterization", ["epsilon", "x0", "v"])
def test_target_round_trips_to_x0_and_noise(schedule, parameterization):
    s = NoiseSchedule(1000, schedule)
    x0, noise = _dummy((4, 3))
    # Mid-range timesteps, where every conversion is well conditioned.
    t = np.array([0, 100, 500, 900])
    x_t = s.add_noise(x0, noise, t)
    target = s.target(x0, noise, t, parameterization)
    x0_hat, eps_hat = s.split_prediction(target, x_t, t, parameterization)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, noise, atol=2e-4)


def test_velocity_round_trip_is_exact_at_every_timestep():
    """v <-> (x0, eps) is a rotation, well conditioned even at T - 1 where
    abar ~ 2e-9 and eps -> x0 is not."""
    s = NoiseSchedule(1000, "cosine")
    x0, noise = _dummy((4, 3))
    t = np.array([0, 1, 998, 999])
    x_t = s.add_noise(x0, noise, t)
    v = s.velocity(x0, noise, t)
    np.testing.assert_allclose(s.x0_from_velocity(x_t, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(
        s.epsilon_from_velocity(x_t, v, t), noise, atol=1e-5
    )


def test_pinned_conversions():
    s = NoiseSchedule(1000, "linear")
    x0, noise = _dummy((2, 3))
    t = np.array([10, 700])
    x_t = s.add_noise(x0, noise, t)
    abar = s.tables64["alphas_cumprod"][t][:, None]
    np.testing.assert_allclose(
        s.x0_from_epsilon(x_t, noise, t),
        (x_t - np.sqrt(1 - abar) * noise) / np.sqrt(abar),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        s.epsilon_from_x0(x_t, x0, t),
        (x_t - np.sqrt(abar) * x0) / np.sqrt(1 - abar),
        atol=1e-5,
    )


@pytest.mark.parametrize("source", ["epsilon", "x0", "v"])
@pytest.mark.parametrize("destination", ["epsilon", "x0", "v"])
def test_convert_between_every_pair(source, destination):
    s = NoiseSchedule(300, "cosine")
    x0, noise = _dummy((3, 5))
    t = np.array([5, 150, 250])
    x_t = s.add_noise(x0, noise, t)
    output = s.target(x0, noise, t, source)
    np.testing.assert_allclose(
        s.convert(output, x_t, t, source, destination),
        s.target(x0, noise, t, destination),
        atol=2e-4,
    )


def test_bad_parameterization_is_named():
    s = NoiseSchedule(10)
    x0, noise = _dummy()
    with pytest.raises(ValueError, match="`parameterization` must be one"):
        s.target(x0, noise, np.zeros(3, int), "score")
    with pytest.raises(ValueError, match="`snr_weighting` must be one"):
        s.loss_weight(np.zeros(3, int), "v", "p2")
    with pytest.raises(ValueError, match="`snr_gamma` must be > 0"):
        s.loss_weight(np.zeros(3, int), "v", "min_snr", snr_gamma=0.0)


# ---------------------------------------------------------------------------
# Loss weights
# ---------------------------------------------------------------------------


def test_min_snr_weights_make_every_parameterisation_the_same_loss():
    """min(SNR, gamma) |x0 - x0_hat|^2 whatever the network predicts: for a
    prediction error in x0-space, each parameterisation's weighted MSE on
    its own target is that same number."""
    s = NoiseSchedule(1000, "cosine")
    x0, noise = _dummy((6, 4))
    t = np.array([0, 50, 300, 600, 900, 999])
    x_t = s.add_noise(x0, noise, t)
    x0_hat = x0 + 0.1 * np.sin(np.arange(24)).reshape(6, 4).astype(np.float32)
    snr = s.tables64["snr"][t]
    expected = np.minimum(snr, 5.0) * ((x0 - x0_hat) ** 2).mean(-1)
    for p in ("epsilon", "x0", "v"):
        output = s.convert(x0_hat, x_t, t, "x0", p)
        error = ((output - s.target(x0, noise, t, p)) ** 2).mean(-1)
        weighted = s.loss_weight(t, p, "min_snr", 5.0) * error
        np.testing.assert_allclose(weighted, expected, rtol=2e-3, atol=1e-7)
    np.testing.assert_array_equal(s.loss_weight(t, "v"), np.ones(6))
