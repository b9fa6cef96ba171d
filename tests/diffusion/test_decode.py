"""Tests for diffusion/decode.py: the adapter, its training step, the
Stable Diffusion pipeline wiring, guidance, the poster decoder interface,
the image grids and the error messages.

The pipeline is exercised with small stand-ins that have KerasCV's call
signatures (inputs `latent`, `timestep_embedding`, `context`; latents at
1/8 of the pixels): KerasCV's real DiffusionModel has 860M parameters and
takes minutes to build on a CPU, so its wiring is checked by the `large`
tests at the end; `python main.py generate --images` with it (random
weights, 64 x 64) runs on torch in every test run, where it builds fastest.
"""

import json

import keras
import numpy as np
import pytest

import config
from content import images as images_lib
from diffusion import actions as diffusion_actions
from diffusion import decode
from diffusion import poster_autoencoder as poster_lib
from diffusion.prior import sinusoidal_embedding
from diffusion.sampler import DDIMSampler
from runtime import seeding
from tests.conftest import large_on

EMB = 8
TOKENS = 3
LATENT = 2  # latent cells per side: 16 x 16 pixels


# ---------------------------------------------------------------------------
# Stand-ins with KerasCV's signatures
# ---------------------------------------------------------------------------


def small_denoiser(latent=LATENT, width=8):
    """`latent`, `timestep_embedding`, `context` -> noise; each latent cell
    cross-attends to the context, so the context reaches the output."""
    lat = keras.Input((latent, latent, 4), name="latent")
    temb = keras.Input((decode.TIMESTEP_DIM,), name="timestep_embedding")
    ctx = keras.Input(
        (decode.CONTEXT_LENGTH, decode.CONTEXT_DIM), name="context"
    )
    x = keras.layers.Dense(width)(lat)
    x = x + keras.layers.Reshape((1, 1, width))(keras.layers.Dense(width)(temb))
    q = keras.layers.Reshape((latent * latent, width))(x)
    att = keras.layers.MultiHeadAttention(1, width)(
        q, keras.layers.Dense(width)(ctx)
    )
    x = x + keras.layers.Reshape((latent, latent, width))(att)
    out = keras.layers.Dense(4)(x)
    return keras.Model([lat, temb, ctx], out)


def small_vae_decoder(latent=LATENT):
    lat = keras.Input((latent, latent, 4))
    x = keras.layers.UpSampling2D(decode.LATENT_FACTOR)(lat)
    return keras.Model(lat, keras.layers.Dense(3, activation="tanh")(x))


def small_text_encoder():
    tokens = keras.Input((decode.CONTEXT_LENGTH,), dtype="int32", name="tokens")
    positions = keras.Input(
        (decode.CONTEXT_LENGTH,), dtype="int32", name="positions"
    )
    t = keras.layers.Embedding(50000, 4)(tokens)
    p = keras.layers.Embedding(decode.CONTEXT_LENGTH, 4)(positions)
    return keras.Model(
        [tokens, positions], keras.layers.Dense(decode.CONTEXT_DIM)(t + p)
    )


class Recording:
    """Wraps a denoiser and keeps every batch it is given."""

    def __init__(self, model):
        self.model = model
        self.inputs = model.inputs
        self.calls = []

    def predict_on_batch(self, batch):
        self.calls.append({k: np.asarray(v) for k, v in batch.items()})
        return self.model.predict_on_batch(batch)


@pytest.fixture(scope="module")
def parts():
    seeding.set_seed(1)
    text = small_text_encoder()
    base, uncond = decode.prompt_contexts(text)
    return {
        "denoiser": small_denoiser(),
        "vae": small_vae_decoder(),
        "text": text,
        "base": base,
        "uncond": uncond,
    }


def make_sd(parts, adapter=None, denoiser=None):
    adapter = adapter or decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16)
    return decode.StableDiffusionDecoder(
        adapter,
        denoiser or parts["denoiser"],
        parts["vae"],
        parts["base"],
        parts["uncond"],
    )


def embeddings(n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, EMB)).astype(np.float32)


# ---------------------------------------------------------------------------
# EmbeddingAdapter
# ---------------------------------------------------------------------------


def test_adapter_shapes_symbolic_and_config_round_trip(tmp_path):
    adapter = decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16, dropout=0.1)
    out = adapter(embeddings(3))
    assert tuple(out.shape) == (3, TOKENS, decode.CONTEXT_DIM)
    symbolic = adapter(keras.KerasTensor((None, EMB)))
    assert tuple(symbolic.shape) == (None, TOKENS, decode.CONTEXT_DIM)
    config_ = json.loads(json.dumps(adapter.get_config()))
    clone = decode.EmbeddingAdapter.from_config(config_)
    assert clone.get_config() == adapter.get_config()
    path = tmp_path / "adapter.keras"
    adapter.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(embeddings(3))),
        keras.ops.convert_to_numpy(adapter(embeddings(3))),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_tokens": 0}, "num_tokens"),
        ({"num_tokens": 77}, "num_tokens"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_adapter_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        decode.EmbeddingAdapter(EMB, **kwargs)


def test_assemble_context_keeps_prompt_head_and_appends_tokens():
    base = (
        np.random.default_rng(0)
        .normal(size=(1, 77, decode.CONTEXT_DIM))
        .astype(np.float32)
    )
    tokens = np.ones((2, TOKENS, decode.CONTEXT_DIM), np.float32)
    out = keras.ops.convert_to_numpy(decode.assemble_context(tokens, base))
    assert out.shape == (2, 77, decode.CONTEXT_DIM)
    np.testing.assert_array_equal(
        out[:, : 77 - TOKENS], np.repeat(base[:, : 77 - TOKENS], 2, 0)
    )
    np.testing.assert_array_equal(out[:, 77 - TOKENS :], tokens)


def test_adapter_training_step_moves_only_the_adapter(parts):
    adapter = decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16)
    trainer = decode.AdapterTrainer(
        adapter,
        parts["denoiser"],
        parts["base"],
        parts["uncond"],
        cond_drop_prob=0.5,
        seed=0,
    )
    frozen = [w.copy() for w in parts["denoiser"].get_weights()]
    before = [w.copy() for w in adapter.get_weights()]
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = {
        "embedding": embeddings(4),
        "latent": np.random.default_rng(1)
        .normal(size=(4, LATENT, LATENT, 4))
        .astype(np.float32),
    }
    history = trainer.fit(x, batch_size=2, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert len(losses) == 2 and np.isfinite(losses).all()
    after = adapter.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    for a, b in zip(frozen, parts["denoiser"].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert parts["denoiser"].trainable is False
    parts["denoiser"].trainable = True


def test_adapter_trainer_rejects_bad_drop_probability(parts):
    with pytest.raises(ValueError, match="cond_drop_prob"):
        decode.AdapterTrainer(
            decode.EmbeddingAdapter(EMB),
            parts["denoiser"],
            parts["base"],
            parts["uncond"],
            cond_drop_prob=1.0,
        )


# ---------------------------------------------------------------------------
# Schedule and sampling maths
# ---------------------------------------------------------------------------


def test_sd_schedule_is_the_scaled_linear_one():
    a = decode.sd_schedule().alphas_cumprod
    assert a.shape == (1000,) and a.dtype == np.float32
    assert np.all(np.diff(a) < 0)
    np.testing.assert_allclose(a[0], 1 - 0.00085, rtol=1e-6)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    np.testing.assert_allclose(a[-1], np.prod(1 - betas), rtol=1e-5)


def test_sd_denoising_uses_the_shared_ddim_step():
    """The SD loop is the prior's DDIM sampler: with the exact noise it
    lands on x0 after the last step."""
    schedule = decode.sd_schedule()
    sampler = DDIMSampler(schedule, 4)
    np.testing.assert_array_equal(sampler.timesteps, [999, 666, 333, 0])
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(2, 3)).astype(np.float32)
    eps = rng.normal(size=(2, 3)).astype(np.float32)
    a = schedule.tables64["alphas_cumprod"]
    x = np.sqrt(a[999]) * x0 + np.sqrt(1 - a[999]) * eps
    for index, t in enumerate(sampler.timesteps):
        x0_hat = schedule.x0_from_epsilon(x, eps, np.full(2, t))
        x = sampler.step(x0_hat, eps, index, x, None)
    np.testing.assert_allclose(x, x0, atol=1e-4)


def test_sd_timestep_embedding_is_cos_then_sin():
    emb = keras.ops.convert_to_numpy(
        sinusoidal_embedding(np.array([0, 10]), decode.TIMESTEP_DIM)
    )
    assert emb.shape == (2, 320)
    np.testing.assert_allclose(emb[0, :160], 1.0)  # cos(0)
    np.testing.assert_allclose(emb[0, 160:], 0.0)  # sin(0)
    np.testing.assert_allclose(emb[1, 0], np.cos(10.0), rtol=1e-5)
    np.testing.assert_allclose(emb[1, 160], np.sin(10.0), rtol=1e-5)


# ---------------------------------------------------------------------------
# The Stable Diffusion pipeline wiring
# ---------------------------------------------------------------------------


def test_sd_decode_shapes_determinism_and_embedding_dependence(parts):
    sd = make_sd(parts)
    e = embeddings(2)
    first = sd.decode(e, seed=3, guidance_scale=1.0, steps=2)
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(
        sd.decode(e, seed=3, guidance_scale=1.0, steps=2), first
    )
    other = sd.decode(
        embeddings(2, seed=9), seed=3, guidance_scale=1.0, steps=2
    )
    assert np.abs(other.astype(int) - first.astype(int)).max() > 0
    assert not np.array_equal(
        sd.decode(e, seed=4, guidance_scale=1.0, steps=2), first
    )


def test_our_context_reaches_the_denoiser(parts):
    recorder = Recording(parts["denoiser"])
    adapter = decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16)
    sd = make_sd(parts, adapter=adapter, denoiser=recorder)
    e = embeddings(2)
    sd.decode(e, seed=0, guidance_scale=1.0, steps=3)
    assert len(recorder.calls) == 3
    context = recorder.calls[0]["context"]
    tokens = keras.ops.convert_to_numpy(adapter(e))
    np.testing.assert_allclose(context[:, 77 - TOKENS :], tokens, atol=1e-5)
    np.testing.assert_allclose(
        context[:, : 77 - TOKENS],
        np.repeat(parts["base"][:, : 77 - TOKENS], 2, 0),
        atol=1e-6,
    )
    t = [c["timestep_embedding"] for c in recorder.calls]
    expected = keras.ops.convert_to_numpy(
        sinusoidal_embedding(np.array([999, 999, 0, 0]), decode.TIMESTEP_DIM)
    )
    # From pure noise down to t = 0.
    np.testing.assert_allclose(t[0], expected[:2], atol=1e-6)
    np.testing.assert_allclose(t[-1], expected[2:], atol=1e-6)


def test_guidance_on_and_off(parts):
    recorder = Recording(parts["denoiser"])
    sd = make_sd(parts, denoiser=recorder)
    e = embeddings(2)
    off = sd.decode(e, seed=0, guidance_scale=1.0, steps=2)
    assert [len(c["latent"]) for c in recorder.calls] == [2, 2]
    recorder.calls.clear()
    on = sd.decode(e, seed=0, guidance_scale=7.5, steps=2)
    assert [len(c["latent"]) for c in recorder.calls] == [4, 4]
    np.testing.assert_allclose(
        recorder.calls[0]["context"][:2],
        np.repeat(parts["uncond"], 2, 0),
        atol=1e-6,
    )
    assert not np.array_equal(on, off)
    recorder.calls.clear()
    unconditional = sd.decode(e, seed=0, guidance_scale=0.0, steps=2)
    assert [len(c["latent"]) for c in recorder.calls] == [2, 2]
    # w = 0 ignores the embedding: both images come from the same context,
    # so only the noise (per row) tells them apart.
    again = sd.decode(
        embeddings(2, seed=5), seed=0, guidance_scale=0.0, steps=2
    )
    np.testing.assert_array_equal(unconditional, again)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda sd: sd.decode(np.zeros((2, EMB + 1))), "embedding width"),
        (lambda sd: sd.decode(np.zeros((0, EMB))), "non-empty"),
        (lambda sd: sd.decode(np.full((1, EMB), np.nan)), "NaN"),
        (
            lambda sd: sd.decode(np.zeros((1, EMB)), guidance_scale=-1),
            "guidance_scale",
        ),
        (lambda sd: sd.decode(np.zeros((1, EMB)), steps=0), "steps"),
    ],
)
def test_sd_decode_errors_are_specific(parts, call, match):
    with pytest.raises(ValueError, match=match):
        call(make_sd(parts))


def test_sd_decoder_checks_contexts_and_inputs(parts):
    adapter = decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16)
    with pytest.raises(ValueError, match="base_context"):
        decode.StableDiffusionDecoder(
            adapter,
            parts["denoiser"],
            parts["vae"],
            np.zeros((1, 10, 768)),
            parts["uncond"],
        )
    with pytest.raises(ValueError, match="latent"):
        decode.StableDiffusionDecoder(
            adapter, parts["vae"], parts["vae"], parts["base"], parts["uncond"]
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": "imagenet"}, "sd_weights"),
        ({"height": 100}, "multiple of 64"),
        ({"width": 0}, "multiple of 64"),
    ],
)
def test_load_stable_diffusion_validates_before_building(kwargs, match):
    args = {"height": 64, "width": 64, "weights": "random", **kwargs}
    with pytest.raises(ValueError, match=match):
        decode.load_stable_diffusion(**args)


def test_missing_weights_raise_a_clear_error():
    def offline(*args, download_weights):
        # What keras.utils.get_file raises without network access.
        raise Exception(
            "URL fetch failure on https://huggingface.co/x: "
            "None -- [Errno -3] Temporary failure"
        )

    with pytest.raises(
        decode.WeightsUnavailable, match="sd_weights=random"
    ) as info:
        decode._build(offline, True, 77)
    assert isinstance(info.value, FileNotFoundError)


def test_pretrained_sd_without_adapter_says_how_to_train(
    tmp_path, monkeypatch, parts
):
    monkeypatch.setattr(
        decode,
        "load_stable_diffusion",
        lambda *a, **k: {
            "text_encoder": parts["text"],
            "decoder": parts["vae"],
            "diffusion_model": parts["denoiser"],
        },
    )
    cfg = config.override(
        config.Config(),
        [
            f"output.runs_dir={str(tmp_path)!r}",
            "decode.decoder=stable_diffusion",
        ],
    )
    with pytest.raises(FileNotFoundError, match="train_sd_adapter"):
        diffusion_actions.make_decoder(cfg)
    cfg = config.override(
        cfg, ["decode.sd_weights=random", f"decode.embedding_dim={EMB}"]
    )
    sd = diffusion_actions.make_decoder(cfg)
    assert "RANDOM" in sd.mode
    assert sd.decode(embeddings(1), steps=1).shape == (1, 16, 16, 3)


def test_unknown_decoder_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="decode.decoder"):
        config.override(config.Config(), ["decode.decoder=gan"])


# ---------------------------------------------------------------------------
# Poster decoder behind the same interface, and the grids
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poster_run(tmp_path_factory):
    """A run folder as `train_poster_decoder` leaves it (untrained weights:
    the action itself is tested in test_poster_autoencoder.py), beside a
    folder of 10 synthetic posters."""
    root = tmp_path_factory.mktemp("posters")
    rng = np.random.default_rng(0)
    ids = np.arange(10, 110, 10)
    write_posters(root, ids, rng)
    cfg = config.override(
        config.Config(),
        [
            f"output.runs_dir={str(root / 'runs')!r}",
            f"decode.posters_dir={str(root)!r}",
            f"decode.embedding_dim={EMB}",
            "decode.image_guidance_scales=(1.0, 3.0)",
            "decode.steps=1",
        ],
    )
    write_poster_model(cfg, ids, rng)
    return cfg


def write_posters(folder, ids, rng):
    """One solid-colour 30 x 20 JPEG per raw item id."""
    from PIL import Image

    for item in ids:
        pixels = np.full((30, 20, 3), rng.integers(0, 255, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"{item}.jpg")


def write_poster_model(cfg, ids, rng):
    """`<run>/poster_decoder/` as `train_poster_decoder` leaves it, with
    untrained 16 x 16 weights and unit embeddings for 10 items `ids`."""
    folder = cfg.run_dir / poster_lib.FOLDER_NAME
    folder.mkdir(parents=True)
    poster_lib.PosterAutoencoder(16, 16, EMB, (4, 8)).save(
        folder / poster_lib.MODEL_FILE
    )
    emb = rng.normal(size=(10, EMB)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.savez(
        folder / poster_lib.EMBEDDINGS_FILE,
        item_ids=ids,
        embeddings=emb,
        split=np.array([0] * 6 + [1, 1, 2, 2]),
    )


def test_poster_decoder_interface_and_guidance(poster_run):
    dec = diffusion_actions.make_decoder(poster_run)
    assert dec.name == "poster_decoder"
    ids, emb = diffusion_actions.poster_embeddings(poster_run)
    out = dec.decode(emb[:3], seed=0, guidance_scale=1.0, steps=None)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    # w = 1 decodes the embedding itself, as the autoencoder would.
    model = poster_lib.load_poster_model(poster_run.run_dir / "poster_decoder")
    direct = poster_lib.decode_embeddings(model.decoder, emb[:3])
    np.testing.assert_array_equal(out, direct)
    # w = 0 decodes the mean embedding for every row.
    mean = dec.decode(emb[:3], guidance_scale=0.0)
    np.testing.assert_array_equal(mean[0], mean[2])
    assert not np.array_equal(dec.decode(emb[:3], guidance_scale=3.0), out)
    with pytest.raises(ValueError, match="embedding width"):
        dec.decode(np.zeros((1, EMB + 2)))


def test_image_grids_in_both_decoder_modes(poster_run, parts, tmp_path):
    ids, emb = diffusion_actions.poster_embeddings(poster_run)
    by_user = {7: {1.0: emb[:2], 4.0: emb[2:4]}, 8: emb[4:5]}
    neighbours = {7: [10, 20, 999999], 8: []}
    decoders = {
        "poster": diffusion_actions.make_decoder(poster_run),
        "sd": make_sd(parts),
    }
    for name, dec in decoders.items():
        paths = diffusion_actions.write_image_grids(
            poster_run,
            [7, 8],
            by_user,
            neighbours,
            tmp_path / name,
            decoder=dec,
        )
        assert sorted(paths) == [7, 8]
        from PIL import Image

        with Image.open(paths[7]) as grid:
            width, height = grid.size
        # 4 generated rows + nearest row; 3 columns (2 scales, 3 posters)
        assert height >= 5 * 16 and width >= 3 * 16
        assert not list((tmp_path / name).glob(".*tmp*"))
    with pytest.raises(ValueError, match="user 9"):
        diffusion_actions.write_image_grids(
            poster_run,
            [9],
            by_user,
            neighbours,
            tmp_path / "x",
            decoder=decoders["poster"],
        )


def test_guidance_sweep_rows_and_columns(poster_run):
    dec = diffusion_actions.make_decoder(poster_run)
    _, emb = diffusion_actions.poster_embeddings(poster_run)
    rows, labels = decode.guidance_sweep(
        dec, {2.0: emb[:2], 5.0: emb[2:3]}, (1.0, 2.0, 4.0)
    )
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    assert labels == ["prior 2 #0", "prior 2 #1", "prior 5 #0"]
    np.testing.assert_array_equal(rows[0][0], dec.decode(emb[:1])[0])
    with pytest.raises(ValueError, match="image_scales"):
        decode.guidance_sweep(dec, {None: emb[:1]}, ())


def test_grid_writer_validates(tmp_path):
    tile = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="no image"):
        images_lib.write_grid(tmp_path / "g.png", [[None]])
    with pytest.raises(ValueError, match="one"):
        images_lib.write_grid(
            tmp_path / "g.png", [[tile, np.zeros((5, 4, 3), np.uint8)]]
        )
    with pytest.raises(ValueError, match="row_labels"):
        images_lib.write_grid(
            tmp_path / "g.png", [[tile]], row_labels=["a", "b"]
        )


# ---------------------------------------------------------------------------
# KerasCV's real components (slow: minutes on a CPU)
# ---------------------------------------------------------------------------


@pytest.mark.large
def test_keras_cv_random_weights_pipeline_wiring():
    parts = decode.load_stable_diffusion(64, 64, "random")
    base, uncond = decode.prompt_contexts(parts["text_encoder"])
    adapter = decode.EmbeddingAdapter(EMB, TOKENS, hidden_dim=16)
    sd = decode.StableDiffusionDecoder(
        adapter, parts["diffusion_model"], parts["decoder"], base, uncond
    )
    a = sd.decode(embeddings(1), seed=0, guidance_scale=1.0, steps=2)
    b = sd.decode(embeddings(1, seed=4), seed=0, guidance_scale=1.0, steps=2)
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------------------
# `python main.py generate --images` end to end, in both decoder modes
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory):
    """`--set` options of a run with a tiny trained prior over 8-d item
    embeddings, a poster decoder (untrained weights) of the same width and
    a poster folder for the catalog (every other item has a poster)."""
    import main
    from tests.conftest import write_ratings

    root = tmp_path_factory.mktemp("generate")
    write_ratings(root / "ratings.csv")
    ids = 100 + 3 * np.arange(30)
    rng = np.random.default_rng(0)
    np.save(root / "emb.npy", rng.standard_normal((30, EMB)))
    np.save(root / "ids.npy", ids)
    posters = root / "posters"
    posters.mkdir()
    write_posters(posters, ids[::2], rng)
    sets = [
        f"data.path={str(root / 'ratings.csv')!r}",
        "data.item_features.path=None",
        f"output.runs_dir={str(root / 'runs')!r}",
        f"diffusion.item_embeddings={str(root / 'emb.npy')!r}",
        f"diffusion.item_ids_path={str(root / 'ids.npy')!r}",
        "diffusion.timesteps=50",
        "diffusion.width=8",
        "diffusion.depth=1",
        "diffusion.num_heads=2",
        "diffusion.num_tokens=2",
        "diffusion.epochs=1",
        "diffusion.batch_size=512",
        "diffusion.sampling_steps=2",
        "diffusion.guidance_scale=3.0",
        f"decode.posters_dir={str(posters)!r}",
        f"decode.embedding_dim={EMB}",
        "decode.image_guidance_scales=(1.0, 3.0)",
        "decode.steps=1",
    ]
    args = [a for s in sets for a in ("--set", s)]
    main.main(["train_prior", "--preset", "tiny", "-q", *args])
    cfg = config.override(config.tiny(), sets)
    write_poster_model(cfg, ids[:10], rng)
    return cfg, args


def _generate_grid(prior_run, *extra):
    from PIL import Image

    import main

    cfg, args = prior_run
    grid = cfg.run_dir / "generated" / "user_3.png"
    grid.unlink(missing_ok=True)
    main.main(
        [
            "generate",
            "--preset",
            "tiny",
            "-q",
            "--user",
            "3",
            "--n",
            "2",
            "--images",
            *args,
            *extra,
        ]
    )
    written = json.loads(
        (cfg.run_dir / "generated" / "user-3.json").read_text()
    )
    assert written["user"] == 3 and len(written["samples"]) == 2
    with Image.open(grid) as image:
        return np.asarray(image.convert("RGB"))


def test_generate_images_with_the_poster_decoder(prior_run):
    pixels = _generate_grid(prior_run)
    # rows: prior guidance 1 and 3 (2 samples each) + the nearest posters;
    # columns: image guidance 1 and 3, tiles of 16 x 16 at least.
    assert pixels.shape[0] >= 5 * 16 and pixels.shape[1] >= 2 * 16
    assert pixels.std() > 0


# KerasCV's 860M-parameter denoiser builds in well under a minute on torch
# but takes minutes on the JAX and TensorFlow CPU backends: `large` there.
@large_on("jax", "tensorflow")
def test_generate_images_with_random_weight_stable_diffusion(prior_run):
    pixels = _generate_grid(
        prior_run,
        "--set",
        "decode.decoder='stable_diffusion'",
        "--set",
        "decode.sd_weights='random'",
        "--set",
        "decode.sd_height=64",
        "--set",
        "decode.sd_width=64",
        "--set",
        "decode.num_context_tokens=2",
        "--set",
        "decode.adapter_hidden_dim=16",
    )
    assert pixels.shape[0] >= 5 * 64 and pixels.shape[1] >= 2 * 64
