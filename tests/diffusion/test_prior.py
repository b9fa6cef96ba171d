"""Tests for diffusion/prior.py, sampler.py, embeddings.py, evaluate.py and
the prior's actions: samplers against an exact denoiser of a 2-D Gaussian
mixture, a small trained prior on a 2-D toy problem (fit, guided sampling,
`.keras` round trip), the network's contract, and train_prior / generate /
evaluate_prior end to end on tiny synthetic data."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from diffusion import embeddings as emb_lib
from diffusion import evaluate as eval_lib
from diffusion import sampler as sampler_lib
from diffusion.prior import SCORE_LIKE
from diffusion.prior import SCORE_NULL
from diffusion.prior import DiffusionPrior
from diffusion.prior import PriorNetwork
from diffusion.prior import score_tokens
from diffusion.schedule import NoiseSchedule

MODES = np.array([[2.0, 2.0], [-2.0, -1.0]], np.float32)
MODE_STD = 0.3


def _mixture_x0(schedule, weights):
    """Exact E[x0 | x_t] of the mixture sum_k w_k N(MODES[k], MODE_STD^2)."""

    def denoise(x_t, t):
        abar = schedule.tables64["alphas_cumprod"][t][:, None]
        var = abar * MODE_STD**2 + (1 - abar)  # (rows, 1)
        means = np.sqrt(abar)[:, None, :] * MODES[None]  # (rows, K, 2)
        sq = ((x_t[:, None, :] - means) ** 2).sum(-1)  # (rows, K)
        logits = np.log(np.asarray(weights))[None] - sq / (2 * var)
        post = np.exp(logits - logits.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        gain = np.sqrt(abar) * MODE_STD**2 / var  # (rows, 1)
        cond = MODES[None] + gain[:, None, :] * (x_t[:, None, :] - means)
        return (post[:, :, None] * cond).sum(1).astype(np.float32)

    return denoise


def _run(denoise, schedule, sampler, parameterization="x0", rows=2000):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 2), dtype=np.float32)
    return sampler_lib.reverse_process(
        denoise, x, schedule, sampler, parameterization, rng
    )


def _assignments(samples):
    return ((samples[:, None, :] - MODES[None]) ** 2).sum(-1).argmin(1)


# ---------------------------------------------------------------------------
# Samplers with an exact denoiser
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, steps, eta",
    [
        ("ddpm", 1000, 0.0),
        ("ddpm", 100, 0.0),
        ("ddim", 50, 0.0),
        ("ddim", 50, 1.0),
    ],
)
def test_samplers_recover_a_gaussian_mixture(method, steps, eta):
    schedule = NoiseSchedule(1000, "cosine")
    sampler = sampler_lib.make_sampler(schedule, method, steps, eta)
    samples = _run(_mixture_x0(schedule, [0.7, 0.3]), schedule, sampler)
    mode = _assignments(samples)
    assert np.mean(mode == 0) == pytest.approx(0.7, abs=0.04)
    for k in (0, 1):
        group = samples[mode == k]
        np.testing.assert_allclose(group.mean(0), MODES[k], atol=0.05)
        np.testing.assert_allclose(group.std(0), MODE_STD, atol=0.05)


def test_the_parameterisation_does_not_change_ddim_samples():
    schedule = NoiseSchedule(1000, "linear")
    sampler = sampler_lib.DDIMSampler(schedule, 25)
    x0_model = _mixture_x0(schedule, [0.5, 0.5])
    reference = _run(x0_model, schedule, sampler, rows=200)
    for p in ("epsilon", "v"):

        def model(x_t, t, p=p):
            return schedule.convert(x0_model(x_t, t), x_t, t, "x0", p)

        np.testing.assert_allclose(
            _run(model, schedule, sampler, p, rows=200),
            reference,
            atol=2e-3,
        )


def test_guidance_between_exact_conditional_and_unconditional_models():
    schedule = NoiseSchedule(1000, "cosine")
    sampler = sampler_lib.DDIMSampler(schedule, 50)
    cond = _mixture_x0(schedule, [0.999, 0.001])
    uncond = _mixture_x0(schedule, [0.5, 0.5])
    rates = {}
    for scale in (0.0, 1.0, 3.0):

        def guided(x_t, t, scale=scale):
            # Guidance on x0 outputs equals guidance on eps (affine map).
            return sampler_lib.guide(cond(x_t, t), uncond(x_t, t), scale)

        rates[scale] = np.mean(
            _assignments(_run(guided, schedule, sampler)) == 0
        )
    assert rates[0.0] == pytest.approx(0.5, abs=0.05)
    assert rates[1.0] > 0.99 and rates[3.0] > 0.99


def test_ddim_with_eta_one_is_ddpm_and_full_ddpm_is_the_posterior():
    schedule = NoiseSchedule(100, "linear")
    rng = np.random.default_rng(1)
    x0, x_t, noise = (
        rng.standard_normal((4, 3)).astype(np.float32) for _ in range(3)
    )
    ddpm = sampler_lib.DDPMSampler(schedule, 20)
    ddim = sampler_lib.DDIMSampler(schedule, 20, eta=1.0)
    for i, t in enumerate(ddpm.timesteps):
        eps = schedule.epsilon_from_x0(x_t, x0, np.full(4, t))
        np.testing.assert_allclose(
            ddim.step(x0, eps, i, x_t, noise),
            ddpm.step(x0, eps, i, x_t, noise),
            atol=1e-5,
        )
    full = sampler_lib.DDPMSampler(schedule)
    t = np.full(4, 40)
    index = int(np.flatnonzero(full.timesteps == 40)[0])
    mean, variance, _ = schedule.posterior(x0, x_t, t)
    np.testing.assert_allclose(
        full.step(x0, None, index, x_t, noise),
        mean + np.sqrt(variance) * noise,
        atol=1e-5,
    )
    assert list(sampler_lib.spaced_timesteps(10, 4)) == [9, 6, 3, 0]
    with pytest.raises(ValueError, match="`num_steps` must be an int"):
        sampler_lib.spaced_timesteps(10, 11)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        sampler_lib.make_sampler(schedule, "euler")


# ---------------------------------------------------------------------------
# The network and the training model
# ---------------------------------------------------------------------------


def _inputs(rows=4, dim=5, num_users=3):
    rng = np.random.default_rng(0)
    return {
        "x_t": rng.standard_normal((rows, dim)).astype(np.float32),
        "timestep": np.arange(rows, dtype=np.int32),
        "user": (np.arange(rows) % (num_users + 1)).astype(np.int32),
        "score": (np.arange(rows) % 3).astype(np.int32),
    }


@pytest.mark.parametrize("conditioning", ["adaln", "cross", "both"])
def test_network_shapes_zero_init_and_config(conditioning):
    net = PriorNetwork(
        5,
        3,
        num_tokens=2,
        width=8,
        depth=1,
        num_heads=2,
        conditioning=conditioning,
        num_timesteps=20,
    )
    out = net(_inputs())
    assert tuple(out.shape) == (4, 5)
    # AdaLN-Zero gates and the zero-initialised head: the network starts
    # at 0 whatever the input.
    np.testing.assert_array_equal(ops.convert_to_numpy(out), 0.0)
    symbolic = net(
        {
            k: keras.KerasTensor((None,) + v.shape[1:], v.dtype)
            for k, v in _inputs().items()
        }
    )
    assert tuple(symbolic.shape) == (None, 5)
    config = json.loads(json.dumps(net.get_config()))
    again = PriorNetwork.from_config(config)
    assert again.get_config() == net.get_config()
    assert again.null_user == 3


def test_network_validates_arguments():
    with pytest.raises(ValueError, match="`num_tokens` must be an int"):
        PriorNetwork(4, 2, num_tokens=5)
    with pytest.raises(ValueError, match="divisible by `num_heads`"):
        PriorNetwork(4, 2, num_tokens=2, width=10, num_heads=4)
    with pytest.raises(ValueError, match="`conditioning` must be one of"):
        PriorNetwork(
            4, 2, num_tokens=2, width=8, num_heads=2, conditioning="film"
        )
    net = PriorNetwork(
        4, 2, num_tokens=2, width=8, depth=1, num_heads=2, num_timesteps=10
    )
    with pytest.raises(ValueError, match="`p_drop_user` must be in"):
        DiffusionPrior(net, num_timesteps=10, p_drop_user=1.5)
    with pytest.raises(ValueError, match="must equal `num_timesteps`"):
        DiffusionPrior(net, num_timesteps=20)
    assert score_tokens([5.0, 4.0, 3.0, 2.0, 0.5], 4.0, 2.0).tolist() == [
        1,
        1,
        2,
        0,
        0,
    ]


def test_condition_dropout_replaces_user_and_score_by_null():
    net = PriorNetwork(
        5, 3, num_tokens=2, width=8, depth=1, num_heads=2, num_timesteps=20
    )
    rng = np.random.default_rng(2)
    net.set_weights(
        [
            rng.normal(0, 0.3, w.shape).astype(np.float32)
            for w in net.get_weights()
        ]
    )
    prior = DiffusionPrior(
        net, num_timesteps=20, p_drop_user=1.0, p_drop_score=1.0, seed=3
    )
    x = _inputs()
    batch = {
        "x0": x["x_t"],
        "user": x["user"],
        "score": x["score"],
        "timestep": x["timestep"],
        "noise": np.ones_like(x["x_t"]),
    }
    x_t = prior.noise_schedule.add_noise(
        batch["x0"], batch["noise"], batch["timestep"]
    )
    null = net.predict_on_batch(
        {
            "x_t": x_t,
            "timestep": x["timestep"],
            "user": np.full(4, net.null_user, np.int32),
            "score": np.full(4, SCORE_NULL, np.int32),
        }
    )
    dropped = ops.convert_to_numpy(prior(batch, training=True)["prediction"])
    kept = ops.convert_to_numpy(prior(batch, training=False)["prediction"])
    np.testing.assert_allclose(dropped, null, atol=1e-5)
    assert np.abs(kept - null).max() > 1e-3


def test_trained_prior_samples_the_right_mode_and_survives_keras_round_trip(
    tmp_path,
):
    """A small prior on a 2-D toy: user k's items lie around MODES[k]. After
    a few seconds of training, guided samples for each user land at that
    user's mode; unconditional ones cover both. The `.keras` file reloads
    to the same samples."""
    rng = np.random.default_rng(0)
    n = 1536
    user = (np.arange(n) % 2).astype(np.int32)
    x0 = MODES[user] + MODE_STD * rng.standard_normal((n, 2))
    net = PriorNetwork(
        2, 2, num_tokens=2, width=32, depth=2, num_heads=2, num_timesteps=100
    )
    prior = DiffusionPrior(
        net,
        num_timesteps=100,
        parameterization="v",
        p_drop_user=0.2,
        p_drop_score=0.0,
        seed=0,
    )
    prior.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = prior.fit(
        {
            "x0": x0.astype(np.float32),
            "user": user,
            "score": np.full(n, SCORE_LIKE, np.int32),
        },
        batch_size=256,
        epochs=25,
        verbose=0,
    )
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]

    def sample(network, scale, users=(0, 1)):
        return sampler_lib.generate(
            network,
            prior.noise_schedule,
            "v",
            list(users),
            [SCORE_LIKE] * len(users),
            num_samples=64,
            guidance_scale=scale,
            num_steps=20,
            seed=0,
        )

    guided = sample(net, 2.0)
    for k in (0, 1):
        assert np.mean(_assignments(guided[k]) == k) > 0.9
        np.testing.assert_allclose(np.median(guided[k], 0), MODES[k], atol=0.6)
    free = sample(net, 0.0, users=(0,))[0]
    assert 0.15 < np.mean(_assignments(free) == 0) < 0.85
    path = tmp_path / "prior.keras"
    prior.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert isinstance(loaded, DiffusionPrior)
    assert loaded.get_config()["parameterization"] == "v"
    np.testing.assert_allclose(sample(loaded.network, 2.0), guided, atol=1e-4)


# ---------------------------------------------------------------------------
# Embeddings and evaluation helpers
# ---------------------------------------------------------------------------


def test_align_embeddings_by_raw_id(tmp_path):
    item_ids = np.array([10, 20, 30, 40])
    items = emb_lib.align(["30", "10", "99"], np.eye(3), item_ids, "file")
    assert items.available.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(items.vectors[0], [0, 1, 0])
    with pytest.raises(ValueError, match="appears 2 times"):
        emb_lib.align([10, 10], np.eye(2), item_ids, "file")
    with pytest.raises(ValueError, match="none of its 1 item ids"):
        emb_lib.align([7], np.eye(1), item_ids, "file")
    np.save(tmp_path / "e.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match="has 3 rows but the catalog"):
        emb_lib.from_file(tmp_path / "e.npy", None, item_ids)
    with pytest.raises(FileNotFoundError, match="embedding file not found"):
        emb_lib.from_file(tmp_path / "missing.npy", None, item_ids)


def test_evaluation_measures():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 3))
    assert eval_lib.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert eval_lib.frechet_distance(a, a + [2.0, 0, 0]) == pytest.approx(
        4.0, rel=1e-6
    )
    same = rng.standard_normal((20, 8, 3))
    apart = same + 5 * rng.standard_normal((20, 1, 3))
    assert eval_lib.personalisation(same)["ratio"] == pytest.approx(1, abs=0.1)
    assert eval_lib.personalisation(apart)["ratio"] > 3
    items = rng.standard_normal((6, 3))
    available = np.array([True] * 5 + [False])
    samples = items[[0, 5]][None] * 2.0  # (1, 2, 3)
    scores = eval_lib.cosine_item_scores(samples, items, available)
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 5] == -np.inf
    top, cos = eval_lib.nearest_items(samples[0], items, available, 2)
    assert top[0, 0] == 0 and cos[0, 0] == pytest.approx(1.0)
    assert 5 not in top


# ---------------------------------------------------------------------------
# Actions end to end
# ---------------------------------------------------------------------------


@pytest.mark.large
def test_train_generate_evaluate_end_to_end(tmp_path):
    """About a minute per backend even on a quiet machine (it fits the
    prior, the NCF judge and samples the sweep), hence `large`."""
    from conftest import tiny_config

    from diffusion import actions

    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.standard_normal((30, 6)))
    np.save(tmp_path / "ids.npy", 100 + 3 * np.arange(30))
    cfg = tiny_config(
        tmp_path,
        f"diffusion.item_embeddings={str(tmp_path / 'emb.npy')!r}",
        f"diffusion.item_ids_path={str(tmp_path / 'ids.npy')!r}",
        "diffusion.timesteps=50",
        "diffusion.width=8",
        "diffusion.depth=1",
        "diffusion.num_heads=2",
        "diffusion.num_tokens=2",
        "diffusion.epochs=2",
        "diffusion.batch_size=512",
        "diffusion.sampling_steps=4",
        "diffusion.sweep_scales=(0.0, 2.0)",
        "diffusion.eval_users=0",
        "diffusion.samples_per_user=2",
        "diffusion.random_users=2",
        "eval.num_bootstrap=20",
    )
    with pytest.raises(FileNotFoundError, match="run `python main.py"):
        actions.generate(cfg, user="1", n=2)
    info = actions.train_prior(cfg)
    assert info["embedding_dim"] == 6 and info["epochs_run"] == 2
    assert set(info["score_tokens"]) == {"like", "dislike", "null"}
    generation = actions.generate(cfg, user="3", n=3)
    assert generation.embeddings.shape == (3, 6)
    written = json.loads(
        (cfg.run_dir / "generated" / "user-3.json").read_text()
    )
    assert written["user"] == 3 and len(written["samples"]) == 3
    assert len(written["samples"][0]["nearest"]) == cfg.output.top_k
    with pytest.raises(ValueError, match="Unknown user id"):
        actions.generate(cfg, user="999", n=1)
    report = actions.evaluate_prior(cfg)
    assert [r["guidance_scale"] for r in report["sweep"]] == [0.0, 2.0]
    assert np.isfinite(report["sweep"][1]["ncf"]["own_vs_random"]["diff"])
    out = cfg.run_dir / "prior_eval"
    assert (out / "sweep.png").stat().st_size > 0
    assert "most_popular" in (out / "sweep.md").read_text()
