"""The offline poster model: a convolutional autoencoder on small posters.

It gives every poster an item embedding (`PosterEncoder`: image -> unit
vector) and turns any such embedding back into a picture (`PosterDecoder`),
so a user without downloaded Stable Diffusion weights still sees a poster
for an item embedding that the diffusion prior generated. The prior is
trained on `poster_embeddings(cfg)`, the same space the decoder inverts.

Two choices keep decoded *generated* embeddings recognisable:
- embeddings are unit vectors (`UnitNormalization` ends the encoder and
  starts the decoder), so the decoder accepts a vector of any length and
  only its direction matters;
- while training, Gaussian noise of norm about `latent_noise` is added to
  the unit embedding before decoding, so the decoder learns to decode the
  neighbourhood of each catalog embedding, not just the points (a
  deterministic cousin of the VAE; Kingma and Welling, 2014).

The loss is pixel MSE plus `ssim_weight * (1 - SSIM)` (Wang et al., 2004,
"Image quality assessment: from error visibility to structural
similarity"), which keeps edges and title blocks sharper than MSE alone.
`train_poster_decoder` reports MSE, PSNR and SSIM on held-out posters
beside two references computed the same way: the mean training poster and
PCA with as many components as the embedding has dimensions.

References:
- Hinton and Salakhutdinov, 2006, "Reducing the dimensionality of data
  with neural networks" (autoencoders vs PCA).
"""

import logging
import math
import pathlib

import keras
import numpy as np
from keras import ops

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
EMBEDDINGS_FILE = "embeddings.npz"
FOLDER_NAME = "poster_decoder"
_SSIM_K1 = 0.01  # Wang et al. 2004, section III-C
_SSIM_K2 = 0.03


# ---------------------------------------------------------------------------
# Layers and models
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="recsys")
class PosterEncoder(keras.Model):
    """Poster image -> unit-length embedding.

    Strided 3x3 convolutions halve the resolution once per entry of
    `filters`; a dense layer maps the last feature map to the embedding,
    which is L2-normalised.

    Args:
        height: int, image height in pixels; divisible by
            `2 ** len(filters)`.
        width: int, image width in pixels; same rule.
        embedding_dim: int >= 2, embedding width. Defaults to 128.
        filters: tuple of int, channels per stage. Defaults to
            `(16, 32, 64, 128)`.
        activation: str, activation of the convolutions. Defaults to
            `"silu"`.

    Call arguments:
        images: `(batch, height, width, 3)` float in [0, 1].

    Returns:
        `(batch, embedding_dim)` unit vectors.
    """

    def __init__(
        self,
        height,
        width,
        embedding_dim=128,
        filters=(16, 32, 64, 128),
        activation="silu",
        **kwargs,
    ):
        _check_architecture(height, width, embedding_dim, filters)
        # === Layers ===
        convs = [
            keras.layers.Conv2D(
                f,
                3,
                strides=2,
                padding="same",
                activation=activation,
                name=f"down_{i}",
            )
            for i, f in enumerate(filters)
        ]
        mix = keras.layers.Conv2D(
            filters[-1], 3, padding="same", activation=activation, name="mix"
        )
        project = keras.layers.Dense(embedding_dim, name="project")
        # === Functional Model ===
        images = keras.Input((height, width, 3), name="images")
        x = images
        for conv in convs:
            x = conv(x)
        x = keras.layers.Flatten()(mix(x))
        embedding = keras.layers.UnitNormalization(name="unit")(project(x))
        super().__init__(inputs=images, outputs=embedding, **kwargs)
        # === Config ===
        self.height = height
        self.width = width
        self.embedding_dim = embedding_dim
        self.filters = tuple(filters)
        self.activation = activation

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "height": self.height,
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            "filters": list(self.filters),
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="recsys")
class PosterDecoder(keras.Model):
    """Embedding -> poster image; the mirror of `PosterEncoder`.

    The input is L2-normalised first, so any vector decodes (its direction
    counts). A dense layer makes the smallest feature map; each stage then
    doubles the resolution (nearest upsampling + 3x3 convolution), and a
    4x4 transposed convolution makes the last doubling cheap at full size.

    Args:
        height, width, embedding_dim, filters, activation: as in
            `PosterEncoder` (the stages run in reverse order).

    Call arguments:
        embeddings: `(batch, embedding_dim)` float.

    Returns:
        `(batch, height, width, 3)` images in [0, 1].
    """

    def __init__(
        self,
        height,
        width,
        embedding_dim=128,
        filters=(16, 32, 64, 128),
        activation="silu",
        **kwargs,
    ):
        _check_architecture(height, width, embedding_dim, filters)
        scale = 2 ** len(filters)
        grid = (height // scale, width // scale, filters[-1])
        # === Layers ===
        unit = keras.layers.UnitNormalization(name="unit")
        expand = keras.layers.Dense(
            math.prod(grid), activation=activation, name="expand"
        )
        ups = [
            keras.layers.Conv2D(
                f, 3, padding="same", activation=activation, name=f"up_{i}"
            )
            for i, f in enumerate(reversed(filters[:-1]))
        ]
        last = keras.layers.Conv2DTranspose(
            max(filters[0] // 2, 8),
            4,
            strides=2,
            padding="same",
            activation=activation,
            name="up_last",
        )
        to_rgb = keras.layers.Conv2D(
            3, 3, padding="same", activation="sigmoid", name="rgb"
        )
        # === Functional Model ===
        embeddings = keras.Input((embedding_dim,), name="embeddings")
        x = keras.layers.Reshape(grid)(expand(unit(embeddings)))
        for conv in ups:
            x = conv(keras.layers.UpSampling2D(2)(x))
        images = to_rgb(last(x))
        super().__init__(inputs=embeddings, outputs=images, **kwargs)
        # === Config ===
        self.height = height
        self.width = width
        self.embedding_dim = embedding_dim
        self.filters = tuple(filters)
        self.activation = activation

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "height": self.height,
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            "filters": list(self.filters),
            "activation": self.activation,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="recsys")
class PosterAutoencoder(keras.Model):
    """`PosterEncoder` -> latent noise (training only) -> `PosterDecoder`.

    Args:
        height, width, embedding_dim, filters, activation: as in
            `PosterEncoder`.
        latent_noise: float >= 0, expected norm of the Gaussian noise added
            to the unit embedding while training (0 = plain autoencoder).
            Defaults to 0.2.
        seed: optional int, seed of the noise.

    Call arguments:
        images: `(batch, height, width, 3)` float in [0, 1].

    Returns:
        `(batch, height, width, 3)` reconstructions in [0, 1].

    Example:

    ```python
    model = PosterAutoencoder(96, 64, embedding_dim=32)
    emb = model.encoder(images)        # (n, 32) unit vectors
    pictures = model.decoder(emb)      # (n, 96, 64, 3)
    ```
    """

    def __init__(
        self,
        height,
        width,
        embedding_dim=128,
        filters=(16, 32, 64, 128),
        activation="silu",
        latent_noise=0.2,
        seed=None,
        **kwargs,
    ):
        if latent_noise < 0:
            raise ValueError(
                f"`latent_noise` must be >= 0. Received: {latent_noise}"
            )
        # === Layers ===
        encoder = PosterEncoder(
            height, width, embedding_dim, filters, activation, name="encoder"
        )
        decoder = PosterDecoder(
            height, width, embedding_dim, filters, activation, name="decoder"
        )
        # Per-coordinate stddev so the noise vector's norm is ~latent_noise.
        noise = keras.layers.GaussianNoise(
            latent_noise / math.sqrt(embedding_dim), seed=seed, name="noise"
        )
        # === Functional Model ===
        images = keras.Input((height, width, 3), name="images")
        outputs = decoder(noise(encoder(images)))
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        # === Config ===
        self.encoder = encoder
        self.decoder = decoder
        self.height = height
        self.width = width
        self.embedding_dim = embedding_dim
        self.filters = tuple(filters)
        self.activation = activation
        self.latent_noise = latent_noise
        self.seed = seed

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "height": self.height,
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            "filters": list(self.filters),
            "activation": self.activation,
            "latent_noise": self.latent_noise,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="recsys")
class PosterReconstructionLoss(keras.losses.Loss):
    """Per-image `MSE + ssim_weight * (1 - SSIM)` on images in [0, 1].

    Args:
        ssim_weight: float >= 0. Defaults to 0.2.
    """

    def __init__(self, ssim_weight=0.2, name="poster_reconstruction", **kwargs):
        if ssim_weight < 0:
            raise ValueError(
                f"`ssim_weight` must be >= 0. Received: {ssim_weight}"
            )
        super().__init__(name=name, **kwargs)
        self.ssim_weight = ssim_weight

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        mse = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
        if not self.ssim_weight:
            return mse
        return mse + self.ssim_weight * (1.0 - ssim(y_true, y_pred))

    def get_config(self):
        return {**super().get_config(), "ssim_weight": self.ssim_weight}


def ssim(x, y, max_value=1.0, window_size=11, sigma=1.5):
    """Mean structural similarity of each image pair (Wang et al., 2004).

    Local means, variances and the covariance are taken under a Gaussian
    window (`window_size`, `sigma`) over the positions where the window
    fits (no padding), per channel; the SSIM map is averaged per image.

    Args:
        x, y: `(batch, height, width, channels)` tensors in
            [0, `max_value`].
        max_value: dynamic range L of the pixel values.
        window_size: odd int, side of the Gaussian window; images smaller
            than it use the largest odd window that fits.
        sigma: float, its standard deviation in pixels.

    Returns:
        `(batch,)` SSIM in [-1, 1]; 1 for identical images.
    """
    x = ops.convert_to_tensor(x)
    y = ops.cast(ops.convert_to_tensor(y), x.dtype)
    channels = x.shape[-1]
    window_size = min(window_size, int(x.shape[1]), int(x.shape[2]))
    window_size -= 1 - window_size % 2  # odd, so the window has a centre
    g = np.exp(
        -0.5 * ((np.arange(window_size) - window_size // 2) / sigma) ** 2
    )
    g = (g / g.sum()).astype(np.float32)
    # Separable Gaussian: a column pass then a row pass, per channel.
    col = ops.cast(
        np.tile(g[:, None, None, None], (1, 1, channels, 1)), x.dtype
    )
    row = ops.cast(
        np.tile(g[None, :, None, None], (1, 1, channels, 1)), x.dtype
    )

    def blur(t):
        t = ops.depthwise_conv(t, col, strides=1, padding="valid")
        return ops.depthwise_conv(t, row, strides=1, padding="valid")

    c1 = (_SSIM_K1 * max_value) ** 2
    c2 = (_SSIM_K2 * max_value) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ops.mean(ssim_map, axis=(1, 2, 3))


class PosterBatches(keras.utils.PyDataset):
    """`(x, x)` float batches in [0, 1] from a uint8 image stack.

    The order of epoch `e` is a permutation drawn from `(seed, e)`, so a
    batch depends only on `(seed, epoch, index)`; memory is one batch.

    Args:
        images: `(n, H, W, 3)` uint8.
        batch_size: int >= 1.
        seed: int.
        shuffle: bool; False keeps the stored order (evaluation).
    """

    def __init__(self, images, batch_size, seed=0, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(
                f"`batch_size` must be >= 1. Received: {batch_size}"
            )
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, idx):
        n = len(self.images)
        order = (
            np.random.default_rng((self.seed, self.epoch)).permutation(n)
            if self.shuffle
            else np.arange(n)
        )
        take = order[idx * self.batch_size : (idx + 1) * self.batch_size]
        x = self.images[np.sort(take)].astype(np.float32) / 255.0
        return x, x

    def on_epoch_end(self):
        self.epoch += 1


def load_poster_model(folder) -> PosterAutoencoder:
    """The `PosterAutoencoder` saved in `folder` (any backend wrote it).

    Raises:
        FileNotFoundError: no `model.keras` there, with the command to
            train one.
    """
    path = pathlib.Path(folder) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No poster model at {path}. Train one with "
            "`python main.py train_poster_decoder` (same --set options)."
        )
    return keras.saving.load_model(path, compile=False)


# ---------------------------------------------------------------------------
# Host-side helpers: batches, split, metrics
# ---------------------------------------------------------------------------


def encode_posters(encoder, posters, batch_size=64):
    """`(n, H, W, 3)` uint8 posters -> `(n, d)` float32 embeddings."""
    out = [
        ops.convert_to_numpy(encoder(x, training=False))
        for x, _ in PosterBatches(posters, batch_size, shuffle=False)
    ]
    return np.concatenate(out).astype(np.float32)


def decode_embeddings(decoder, embeddings, batch_size=64):
    """`(n, d)` embeddings -> `(n, H, W, 3)` uint8 images."""
    embeddings = np.asarray(embeddings, np.float32)
    out = [
        ops.convert_to_numpy(
            decoder(embeddings[i : i + batch_size], training=False)
        )
        for i in range(0, len(embeddings), batch_size)
    ]
    return to_uint8(np.concatenate(out))


def to_uint8(images):
    """Float images in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(
        np.uint8
    )


def split_posters(n, valid_fraction, test_fraction, seed):
    """`(n,)` int8 split labels: 0 train, 1 valid, 2 test (seeded).

    Raises:
        ValueError: fractions outside [0, 1) or leaving no training poster.
    """
    for name, value in (
        ("valid_fraction", valid_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0 <= value < 1:
            raise ValueError(
                f"`decode.{name}` must be in [0, 1). Received: {value}"
            )
    n_valid = int(round(n * valid_fraction))
    n_test = int(round(n * test_fraction))
    if n - n_valid - n_test < 1 or (valid_fraction and not n_valid):
        raise ValueError(
            f"{n} posters cannot be split with valid_fraction="
            f"{valid_fraction} and test_fraction={test_fraction}: each "
            "split needs at least one poster."
        )
    split = np.zeros(n, np.int8)
    order = np.random.default_rng(seed).permutation(n)
    split[order[:n_valid]] = 1
    split[order[n_valid : n_valid + n_test]] = 2
    return split


def reconstruction_metrics(truth, pred, batch_size=256):
    """MSE, PSNR (dB) and SSIM of uint8 reconstructions, on [0, 1] pixels.

    MSE is the mean over all pixels; PSNR and SSIM are per image, then
    averaged over images.

    Returns:
        `{"mse", "psnr", "ssim"}` floats.
    """
    if np.shape(truth) != np.shape(pred) or len(truth) == 0:
        raise ValueError(
            "`truth` and `pred` must be non-empty and of one shape. "
            f"Received: {np.shape(truth)} and {np.shape(pred)}"
        )
    mse, ssims = [], []
    for i in range(0, len(truth), batch_size):
        t = np.asarray(truth[i : i + batch_size], np.float32) / 255.0
        p = np.asarray(pred[i : i + batch_size], np.float32) / 255.0
        mse.append(((t - p) ** 2).mean(axis=(1, 2, 3)))
        ssims.append(ops.convert_to_numpy(ssim(t, p)))
    mse = np.concatenate(mse)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    return {
        "mse": float(mse.mean()),
        "psnr": float(psnr.mean()),
        "ssim": float(np.concatenate(ssims).mean()),
    }


def pca_reconstruction(train_images, test_images, dim):
    """Project `test_images` on the top `dim` principal components of
    `train_images` and back: the best linear `dim`-number code in MSE.

    Returns:
        uint8 reconstructions of `test_images`.
    """
    x = train_images.reshape(len(train_images), -1).astype(np.float32)
    mean = x.mean(axis=0)
    x -= mean
    # Components from the (n, n) Gram matrix: cheaper than an SVD of the
    # (n, pixels) matrix when there are fewer images than pixels.
    gram = (x @ x.T).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][: min(dim, len(x))]
    top = top[values[top] > 1e-9 * max(values.max(), 1e-12)]  # rank < dim
    basis = (vectors[:, top].T @ x) / np.sqrt(np.maximum(values[top], 1e-12))[
        :, None
    ]
    basis = basis.astype(np.float32)  # (dim, pixels), orthonormal rows
    t = test_images.reshape(len(test_images), -1).astype(np.float32) - mean
    recon = (t @ basis.T) @ basis + mean
    return (
        np.clip(np.round(recon), 0, 255)
        .astype(np.uint8)
        .reshape(test_images.shape)
    )


def _check_architecture(height, width, embedding_dim, filters):
    if not filters or any(int(f) < 1 for f in filters):
        raise ValueError(
            f"`filters` must be a non-empty tuple of positive ints. "
            f"Received: {filters}"
        )
    scale = 2 ** len(filters)
    if height % scale or width % scale or height < scale or width < scale:
        raise ValueError(
            f"Image `height` and `width` must be positive multiples of "
            f"2 ** len(filters) = {scale}. Received: height={height}, "
            f"width={width}"
        )
    if embedding_dim < 2:
        raise ValueError(
            f"`embedding_dim` must be >= 2. Received: {embedding_dim}"
        )
