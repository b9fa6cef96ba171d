"""diffusion/interactions.py: DiffRec-style diffusion over interaction
vectors. Training denoises a forward-noised row; scoring is the
posterior-mean walk from the history, checked against NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

from diffusion.interactions import DiffusionCF
from diffusion.schedule import NoiseSchedule

NUM_ITEMS = 10


def _np(x):
    return ops.convert_to_numpy(x)


def _model(**kwargs):
    args = dict(
        num_users=4,
        num_items=NUM_ITEMS,
        hidden_dims=(16,),
        timestep_dim=6,
        dropout=0.0,
        num_timesteps=4,
        seed=0,
    )
    args.update(kwargs)
    return DiffusionCF(**args)


def _rows(n=5):
    rng = np.random.default_rng(1)
    return (rng.random((n, NUM_ITEMS)) < 0.4).astype("float32")


def _reverse_walk(model, rows):
    schedule, batch = model.schedule, len(rows)
    x_t = rows
    if model.start_step:
        t = np.full(batch, model.start_step)
        x_t = schedule.add_noise(rows, np.zeros_like(rows), t)
    for step in range(model.start_step, -1, -1):
        t = np.full(batch, step)
        x0_hat = _np(model.denoise(x_t, t))
        x_t = schedule.posterior(x0_hat, x_t, t)[0]
    return x_t


def test_linear_variance_schedule():
    schedule = NoiseSchedule(5, "linear_variance", variance_range=(0.01, 0.05))
    np.testing.assert_allclose(
        1 - schedule.tables64["alphas_cumprod"], np.linspace(0.01, 0.05, 5)
    )
    assert NoiseSchedule.from_config(schedule.get_config()).variance_range == (
        0.01,
        0.05,
    )
    with pytest.raises(ValueError, match="variance_range"):
        NoiseSchedule(5, "linear_variance")
    with pytest.raises(ValueError, match="variance_range"):
        NoiseSchedule(5, "linear_variance", variance_range=(0.05, 0.01))


@pytest.mark.parametrize("start_step", [0, 2])
def test_scores_follow_the_posterior_mean_walk(start_step):
    model = _model(start_step=start_step)
    rows = _rows()
    got = _np(model({"interactions": rows})["scores"])
    np.testing.assert_allclose(
        got, _reverse_walk(model, rows), rtol=1e-4, atol=1e-5
    )


def test_training_loss_is_x0_mse_and_fit_save_load(tmp_path):
    model = _model(dropout=0.2)
    x = {"interactions": _rows(8)}
    y_pred = model(x, training=True)
    got = float(_np(model.compute_loss(x=x, y=None, y_pred=y_pred)))
    err = (_np(y_pred["scores"]) - x["interactions"]) ** 2
    assert got == pytest.approx(err.sum(-1).mean(), rel=1e-5)
    model.compile(optimizer="adam")
    history = model.fit(x, np.zeros(8), batch_size=4, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    model.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras", compile=False)
    np.testing.assert_allclose(
        _np(loaded(x)["scores"]), _np(model(x)["scores"]), atol=1e-5
    )


def test_argument_errors():
    with pytest.raises(ValueError, match="start_step"):
        _model(start_step=4)
    with pytest.raises(ValueError, match="noise_scale"):
        _model(noise_scale=0.0)
