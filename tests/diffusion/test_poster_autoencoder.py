"""Tests for diffusion/poster_autoencoder.py and diffusion/images.py: the
offline poster model (layers, loss, SSIM, batches, split, metrics, PCA
reference, the training action and the embedding source) and the poster
loading and cache."""

import json

import keras
import numpy as np
import pytest

from diffusion import poster_autoencoder as pa

H, W, D = 16, 8, 6
FILTERS = (4, 8)


def posters(n=6, seed=0):
    return (
        np.random.default_rng(seed)
        .integers(0, 256, size=(n, H, W, 3))
        .astype(np.uint8)
    )


def write_posters(folder, n=10, size=(30, 20), seed=0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for item in range(1, n + 1):
        pixels = np.zeros((*size, 3), np.uint8)
        pixels[:] = rng.integers(0, 255, 3)
        pixels[size[0] // 3 : 2 * size[0] // 3] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"{item}.jpg")
    return folder


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def test_shapes_unit_embeddings_and_symbolic_calls():
    model = pa.PosterAutoencoder(H, W, D, FILTERS, latent_noise=0.3, seed=1)
    x = posters(3).astype(np.float32) / 255
    out = keras.ops.convert_to_numpy(model(x))
    assert out.shape == (3, H, W, 3)
    assert out.min() >= 0 and out.max() <= 1
    emb = keras.ops.convert_to_numpy(model.encoder(x))
    assert emb.shape == (3, D)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # The decoder reads only the direction of its input.
    dec = model.decoder
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(dec(emb * 5.0)),
        keras.ops.convert_to_numpy(dec(emb)),
        atol=1e-5,
    )
    # Inference ignores the latent noise.
    np.testing.assert_allclose(
        out, keras.ops.convert_to_numpy(dec(emb)), atol=1e-5
    )
    assert tuple(model(keras.KerasTensor((None, H, W, 3))).shape) == (
        None,
        H,
        W,
        3,
    )
    assert tuple(model.encoder(keras.KerasTensor((None, H, W, 3))).shape) == (
        None,
        D,
    )


def test_fit_step_config_round_trip_and_save_load(tmp_path):
    model = pa.PosterAutoencoder(H, W, D, FILTERS, seed=0)
    model.compile(optimizer="adam", loss=pa.PosterReconstructionLoss(0.5))
    x = posters(4).astype(np.float32) / 255
    history = model.fit(x, x, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    config_ = json.loads(json.dumps(model.get_config()))
    clone = pa.PosterAutoencoder.from_config(config_)
    assert clone.get_config() == model.get_config()
    for part in (model.encoder, model.decoder):
        cfg = json.loads(json.dumps(part.get_config()))
        assert type(part).from_config(cfg).get_config() == part.get_config()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)),
        keras.ops.convert_to_numpy(model(x)),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.encoder(x)),
        keras.ops.convert_to_numpy(model.encoder(x)),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 10}, "multiples"),
        ({"filters": ()}, "filters"),
        ({"embedding_dim": 1}, "embedding_dim"),
        ({"latent_noise": -0.1}, "latent_noise"),
    ],
)
def test_model_arguments_are_validated(kwargs, match):
    args = {
        "height": H,
        "width": W,
        "embedding_dim": D,
        "filters": FILTERS,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        pa.PosterAutoencoder(**args)


# ---------------------------------------------------------------------------
# SSIM, loss, metrics, PCA
# ---------------------------------------------------------------------------


def ssim_reference(x, y, window=11, sigma=1.5):
    """Direct SSIM: every window position visited in Python, 2-D window."""
    g = np.exp(-0.5 * ((np.arange(window) - window // 2) / sigma) ** 2)
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for ch in range(x.shape[-1]):
        for i in range(x.shape[0] - window + 1):
            for j in range(x.shape[1] - window + 1):
                a = x[i : i + window, j : j + window, ch]
                b = y[i : i + window, j : j + window, ch]
                ma, mb = (w2 * a).sum(), (w2 * b).sum()
                va = (w2 * (a - ma) ** 2).sum()
                vb = (w2 * (b - mb) ** 2).sum()
                cov = (w2 * (a - ma) * (b - mb)).sum()
                values.append(
                    ((2 * ma * mb + c1) * (2 * cov + c2))
                    / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return np.mean(values)


def test_ssim_matches_a_direct_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 14, 13, 3)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    got = keras.ops.convert_to_numpy(pa.ssim(x, y))
    want = [ssim_reference(x[i], y[i]) for i in range(2)]
    np.testing.assert_allclose(got, want, atol=2e-4)
    same = keras.ops.convert_to_numpy(pa.ssim(x, x))
    np.testing.assert_allclose(same, 1.0, atol=1e-4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(pa.ssim(y, x)), got, atol=1e-5
    )


def test_loss_is_mse_plus_weighted_ssim_gap():
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(2, 12, 12, 3)).astype(np.float32)
    y = rng.uniform(size=(2, 12, 12, 3)).astype(np.float32)
    mse = ((x - y) ** 2).mean()
    plain = float(pa.PosterReconstructionLoss(0.0)(x, y))
    np.testing.assert_allclose(plain, mse, rtol=1e-5)
    s = keras.ops.convert_to_numpy(pa.ssim(x, y)).mean()
    np.testing.assert_allclose(
        float(pa.PosterReconstructionLoss(0.5)(x, y)),
        mse + 0.5 * (1 - s),
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="ssim_weight"):
        pa.PosterReconstructionLoss(-1.0)


def test_reconstruction_metrics():
    truth = posters(4)
    perfect = pa.reconstruction_metrics(truth, truth)
    assert perfect["mse"] == 0 and perfect["ssim"] == pytest.approx(1, abs=1e-4)
    shifted = np.clip(truth.astype(int) + 10, 0, 255).astype(np.uint8)
    base = np.full_like(truth, 100)
    m = pa.reconstruction_metrics(base, base + 10)
    assert m["mse"] == pytest.approx((10 / 255) ** 2, rel=1e-5)
    assert m["psnr"] == pytest.approx(
        10 * np.log10(1 / (10 / 255) ** 2), rel=1e-5
    )
    assert pa.reconstruction_metrics(truth, shifted)["mse"] > 0
    with pytest.raises(ValueError, match="one shape"):
        pa.reconstruction_metrics(truth, truth[:2])


def test_pca_reconstruction_is_exact_inside_the_span():
    rng = np.random.default_rng(0)
    basis = rng.uniform(0, 1, size=(3, H * W * 3))
    coef = rng.uniform(0, 1, size=(12, 3)) / 3
    train = np.round(255 * coef @ basis / basis.max()).astype(np.uint8)
    train = train.reshape(12, H, W, 3)
    recon = pa.pca_reconstruction(train, train[:4], dim=12)
    np.testing.assert_array_equal(recon, train[:4])
    coarse = pa.pca_reconstruction(train, train[:4], dim=1)
    assert np.abs(coarse.astype(int) - train[:4]).mean() > 0


# ---------------------------------------------------------------------------
# Batches and split
# ---------------------------------------------------------------------------


def test_batches_depend_only_on_seed_epoch_and_index():
    images = posters(10)
    a = pa.PosterBatches(images, 4, seed=3)
    b = pa.PosterBatches(images, 4, seed=3)
    assert len(a) == 3
    np.testing.assert_array_equal(a[1][0], b[1][0])
    x, y = a[0]
    assert x.dtype == np.float32 and x.max() <= 1 and x is y
    seen = np.concatenate([a[i][0] for i in range(len(a))])
    np.testing.assert_allclose(
        np.sort(seen.reshape(10, -1), axis=0),
        np.sort(images.reshape(10, -1) / 255, axis=0),
    )
    first = np.concatenate([a[i][0] for i in range(len(a))])
    a.on_epoch_end()
    assert not np.array_equal(
        first, np.concatenate([a[i][0] for i in range(len(a))])
    )
    ordered = pa.PosterBatches(images, 4, shuffle=False)
    np.testing.assert_allclose(ordered[0][0], images[:4] / 255)
    with pytest.raises(ValueError, match="batch_size"):
        pa.PosterBatches(images, 0)


def test_split_is_seeded_and_validated():
    s = pa.split_posters(100, 0.1, 0.2, seed=0)
    assert (s == 1).sum() == 10 and (s == 2).sum() == 20
    np.testing.assert_array_equal(s, pa.split_posters(100, 0.1, 0.2, 0))
    assert not np.array_equal(s, pa.split_posters(100, 0.1, 0.2, 1))
    with pytest.raises(ValueError, match="test_fraction"):
        pa.split_posters(100, 0.1, 1.0, 0)
    with pytest.raises(ValueError, match="at least one"):
        pa.split_posters(2, 0.4, 0.4, 0)
