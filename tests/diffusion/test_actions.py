"""diffusion/actions.py: the poster decoder action and the poster
embedding source of the prior."""

import json

import numpy as np
import pytest

import config
from content import images as images_lib
from diffusion import actions as diffusion_actions
from diffusion import poster_autoencoder as pa
from tests.diffusion.test_poster_autoencoder import FILTERS
from tests.diffusion.test_poster_autoencoder import D
from tests.diffusion.test_poster_autoencoder import H
from tests.diffusion.test_poster_autoencoder import W
from tests.diffusion.test_poster_autoencoder import write_posters


def test_train_action_writes_run_and_embeddings(tmp_path):
    folder = write_posters(tmp_path / "p", n=10)
    cfg = config.override(
        config.Config(),
        [
            f"output.runs_dir={str(tmp_path / 'runs')!r}",
            f"decode.posters_dir={str(folder)!r}",
            f"decode.cache_dir={str(tmp_path / 'cache')!r}",
            f"decode.image_height={H}",
            f"decode.image_width={W}",
            f"decode.embedding_dim={D}",
            f"decode.filters={FILTERS}",
            "decode.epochs=1",
            "decode.batch_size=4",
            "decode.valid_fraction=0.2",
            "decode.test_fraction=0.2",
            "train.verbose=0",
            "train.jit_compile=False",
        ],
    )
    # poster_embeddings trains the model when the run has none.
    ids, emb = diffusion_actions.poster_embeddings(cfg)
    np.testing.assert_array_equal(ids, np.arange(1, 11))
    assert emb.shape == (10, D) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    run = cfg.run_dir / "poster_decoder"
    for name in (
        "model.keras",
        "embeddings.npz",
        "metrics.json",
        "reconstructions.png",
        "history.json",
        "config.json",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_posters"] == 2
    for ref in ("autoencoder", "pca", "mean_poster"):
        assert set(metrics[ref]) == {"mse", "psnr", "ssim"}
    model = pa.load_poster_model(run)
    with np.load(run / "embeddings.npz") as stored:
        test = stored["split"] == 2
    x = images_lib.cached_posters(
        folder, H, W, cfg.decode.cache_dir, progress=False
    )[1]
    recon = pa.decode_embeddings(model.decoder, emb[test])
    assert metrics["autoencoder"]["mse"] == pytest.approx(
        pa.reconstruction_metrics(x[test], recon)["mse"], rel=1e-4
    )
    with pytest.raises(FileNotFoundError, match="train_poster_decoder"):
        pa.load_poster_model(tmp_path / "nowhere")
