"""Generated item embeddings -> images: one decoder interface, two decoders.

Each decoder (`diffusion.actions` picks one by `decode.decoder`) has
`.decode(embeddings, seed, guidance_scale, steps) -> (n, H, W, 3) uint8`:

- `"poster_decoder"` (`PosterImageDecoder`): the offline poster
  autoencoder of `diffusion/poster_autoencoder.py`, trained here on the
  ML-1M posters. Its embeddings are the item embeddings the diffusion prior
  generates, so it inverts them directly. Guidance pushes an embedding away
  from the catalog's mean poster embedding (the "unconditional" point):
  `e_w = mean + w * (e - mean)`, the classifier-free guidance formula in
  embedding space; `w = 1` is off.
- `"stable_diffusion"` (`StableDiffusionDecoder`): KerasCV's Stable
  Diffusion v1 components (`DiffusionModel`, `Decoder`, `TextEncoder`,
  `ImageEncoder`). An `EmbeddingAdapter` maps the embedding to a few
  context tokens in the text encoder's width; they replace the tail of the
  77-token text context (of `decode.prompt`, or of the empty prompt) that
  the denoiser cross-attends to, in the spirit of image-prompt adapters
  (Ye et al., 2023, "IP-Adapter"). The loop is DDIM (Song et al., 2021)
  with classifier-free guidance (Ho and Salimans, 2022) against the empty
  prompt, then the VAE decoder. The adapter is trained on (poster latent,
  poster embedding) pairs with the frozen denoiser's noise-prediction loss
  (`train_sd_adapter`).

Stable Diffusion weights load the library's usual way
(`download_weights=True`, cached under `~/.keras`). Offline,
`decode.sd_weights="random"` builds the same components with random
weights: the whole pipeline runs, at any multiple of 64 pixels, but the
pictures are noise; logs and grid titles say so. A missing download stops
with `WeightsUnavailable` (a `FileNotFoundError`), not a stack trace.

The prior's guidance scale and the image model's are independent:
`guidance_sweep` decodes embeddings sampled at several prior scales
(rows) with every image guidance scale (columns); `generate --images`
adds the user's nearest catalog posters as the last row.

`import keras_cv` always imports TensorFlow, so it happens only inside the
Stable Diffusion helpers.
"""

import json
import logging
import pathlib
import time

import keras
import numpy as np
from keras import ops
from tqdm.auto import tqdm

from content import images as images_lib
from diffusion import poster_autoencoder as poster_lib
from diffusion.prior import sinusoidal_embedding
from diffusion.sampler import DDIMSampler
from diffusion.sampler import guide
from diffusion.schedule import NoiseSchedule

logger = logging.getLogger(__name__)

DECODERS = ("poster_decoder", "stable_diffusion")
SD_WEIGHTS = ("pretrained", "random")
CONTEXT_LENGTH = 77  # CLIP text tokens the SD v1 denoiser attends to
CONTEXT_DIM = 768  # CLIP ViT-L/14 text width
TIMESTEP_DIM = 320  # SD v1 timestep embedding width
TRAIN_TIMESTEPS = 1000
LATENT_CHANNELS = 4
LATENT_FACTOR = 8  # VAE: pixels per latent cell per side
SIZE_MULTIPLE = 64  # VAE /8, then three UNet halvings
ADAPTER_FOLDER = "sd_adapter"
ADAPTER_FILE = "adapter.keras"
_CLIP_START, _CLIP_END = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>
_KERAS_CV_HINT = "pip install keras-cv==0.9.0"


class WeightsUnavailable(FileNotFoundError):
    """Pretrained weights are neither cached nor downloadable."""


# ---------------------------------------------------------------------------
# The decoder interface
# ---------------------------------------------------------------------------


class PosterImageDecoder:
    """Decodes embeddings with the trained poster autoencoder's decoder.

    Args:
        decoder: a `PosterDecoder`.
        mean_embedding: `(d,)` mean training-poster embedding, the
            reference point of guidance.
        batch_size: embeddings per forward pass.
    """

    name = "poster_decoder"

    def __init__(self, decoder, mean_embedding, batch_size=64):
        self.decoder = decoder
        self.mean_embedding = np.asarray(mean_embedding, np.float32)
        self.batch_size = batch_size
        self.embedding_dim = decoder.embedding_dim
        self.image_size = (decoder.height, decoder.width)
        self.mode = "poster_decoder (autoencoder trained on posters)"

    @classmethod
    def from_folder(cls, folder, batch_size=64):
        """Load `model.keras` and `embeddings.npz` written by
        `train_poster_decoder` in `folder`."""
        folder = pathlib.Path(folder)
        model = poster_lib.load_poster_model(folder)
        with np.load(folder / poster_lib.EMBEDDINGS_FILE) as stored:
            train = stored["embeddings"][stored["split"] == 0]
        return cls(model.decoder, train.mean(axis=0), batch_size)

    def decode(self, embeddings, seed=0, guidance_scale=1.0, steps=None):
        """Images of `embeddings`.

        Args:
            embeddings: `(n, embedding_dim)` float.
            seed: unused (the decoder is deterministic); accepted so every
                decoder has one signature.
            guidance_scale: float >= 0; `mean + w * (e - mean)` is decoded.
            steps: unused (no iterative sampling).

        Returns:
            `(n, H, W, 3)` uint8.
        """
        del seed, steps
        embeddings = _check_embeddings(
            embeddings,
            self.embedding_dim,
            hint=" It decodes poster embeddings: train the prior on them "
            "with `--set diffusion.item_embeddings=posters`.",
        )
        _check_guidance(guidance_scale)
        unit = embeddings / np.maximum(
            np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12
        )
        guided = self.mean_embedding + guidance_scale * (
            unit - self.mean_embedding
        )
        return poster_lib.decode_embeddings(
            self.decoder, guided, self.batch_size
        )


class StableDiffusionDecoder:
    """Embedding -> adapter context -> guided DDIM -> VAE decoder -> pixels.

    Args:
        adapter: an `EmbeddingAdapter`.
        diffusion_model: KerasCV `DiffusionModel` (or any model with its
            inputs `latent`, `timestep_embedding`, `context` -> noise).
        decoder: KerasCV `Decoder`: latents -> images in [-1, 1].
        base_context: `(1, 77, 768)` text context the adapter tokens are
            written into (the prompt's, or the empty prompt's).
        unconditional_context: `(1, 77, 768)` empty-prompt context, the
            unconditional branch of guidance.
        mode: text naming the weights, shown in logs and grid titles.
        verbose: bool, a progress bar over the denoising steps.
    """

    name = "stable_diffusion"

    def __init__(
        self,
        adapter,
        diffusion_model,
        decoder,
        base_context,
        unconditional_context,
        mode="stable_diffusion",
        verbose=False,
    ):
        self.adapter = adapter
        self.diffusion_model = diffusion_model
        self.decoder = decoder
        self.base_context = _check_context(base_context, "base_context")
        self.unconditional_context = _check_context(
            unconditional_context, "unconditional_context"
        )
        self.embedding_dim = adapter.embedding_dim
        shapes = {x.name: tuple(x.shape) for x in diffusion_model.inputs}
        if "latent" not in shapes:
            raise ValueError(
                "`diffusion_model` needs an input named `latent` (as "
                f"KerasCV's DiffusionModel). Received inputs: {list(shapes)}"
            )
        self.latent_size = shapes["latent"][1:3]
        self.image_size = tuple(LATENT_FACTOR * s for s in self.latent_size)
        self.mode = mode
        self.verbose = verbose
        self.schedule = sd_schedule()

    def context(self, embeddings):
        """`(n, 77, 768)` denoiser context of `embeddings`."""
        tokens = self.adapter(
            np.asarray(embeddings, np.float32), training=False
        )
        return ops.convert_to_numpy(assemble_context(tokens, self.base_context))

    def decode(self, embeddings, seed=0, guidance_scale=7.5, steps=25):
        """Images of `embeddings`: DDIM with classifier-free guidance.

        Args:
            embeddings: `(n, embedding_dim)` float.
            seed: int; the initial latent noise comes from
                `numpy.random.default_rng(seed)`, so it is the same on every
                backend.
            guidance_scale: float >= 0. `eps = eps_u + w * (eps_c - eps_u)`
                with `eps_u` the empty prompt's prediction; `w = 1` runs the
                conditional branch only (half the work), `w = 0` ignores
                the embedding.
            steps: int >= 1, denoising steps.

        Returns:
            `(n, H, W, 3)` uint8.
        """
        embeddings = _check_embeddings(embeddings, self.embedding_dim)
        _check_guidance(guidance_scale)
        if int(steps) < 1:
            raise ValueError(f"`steps` must be >= 1. Received: {steps}")
        n = len(embeddings)
        context = self.context(embeddings)
        uncond = np.repeat(self.unconditional_context, n, axis=0)
        if guidance_scale == 1:
            contexts = context
        elif guidance_scale == 0:
            contexts = uncond
        else:
            contexts = np.concatenate([uncond, context])
        latent = (
            np.random.default_rng(seed)
            .standard_normal((n, *self.latent_size, LATENT_CHANNELS))
            .astype(np.float32)
        )
        sampler = DDIMSampler(self.schedule, int(steps))
        bar = keras.utils.Progbar(sampler.num_steps) if self.verbose else None
        reps = len(contexts) // n
        # Host arrays only: predict_on_batch refuses numpy mixed with
        # backend tensors (torch).
        steps_embedded = ops.convert_to_numpy(
            sinusoidal_embedding(sampler.timesteps, TIMESTEP_DIM)
        )
        for index, t in enumerate(sampler.timesteps):
            eps = np.asarray(
                self.diffusion_model.predict_on_batch(
                    {
                        "latent": np.concatenate([latent] * reps),
                        "timestep_embedding": np.repeat(
                            steps_embedded[index : index + 1], n * reps, 0
                        ),
                        "context": contexts,
                    }
                ),
                np.float32,
            )
            if reps == 2:
                eps = guide(eps[n:], eps[:n], guidance_scale)
            x0 = self.schedule.x0_from_epsilon(latent, eps, np.full(n, t))
            latent = sampler.step(x0, eps, index, latent, None)
            if bar is not None:
                bar.update(index + 1)
        pixels = np.asarray(self.decoder.predict_on_batch(latent))
        return np.clip(np.round((pixels + 1.0) * 127.5), 0, 255).astype(
            np.uint8
        )


# ---------------------------------------------------------------------------
# The adapter and its training model
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="recsys")
class EmbeddingAdapter(keras.Model):
    """Item embedding -> `num_tokens` context tokens for the SD denoiser.

    A two-layer MLP whose output is reshaped to tokens and layer-normalised
    (as CLIP's text encoder output is), like IP-Adapter's image projection.

    Args:
        embedding_dim: int >= 1, width of the item embeddings.
        num_tokens: int in [1, 77), tokens made per embedding. Defaults
            to 4.
        context_dim: int, token width (768 for SD v1). Defaults to 768.
        hidden_dim: int >= 1, MLP width. Defaults to 1024.
        activation: str, MLP activation. Defaults to `"gelu"`.
        dropout: float in [0, 1), after the hidden layer. Defaults to 0.

    Call arguments:
        embeddings: `(batch, embedding_dim)` float.

    Returns:
        `(batch, num_tokens, context_dim)` tokens.

    Example:

    ```python
    adapter = EmbeddingAdapter(embedding_dim=128, num_tokens=4)
    tokens = adapter(np.zeros((2, 128), "float32"))  # (2, 4, 768)
    ```
    """

    def __init__(
        self,
        embedding_dim,
        num_tokens=4,
        context_dim=CONTEXT_DIM,
        hidden_dim=1024,
        activation="gelu",
        dropout=0.0,
        **kwargs,
    ):
        for arg, value in (
            ("embedding_dim", embedding_dim),
            ("context_dim", context_dim),
            ("hidden_dim", hidden_dim),
        ):
            if int(value) < 1:
                raise ValueError(f"`{arg}` must be >= 1. Received: {value}")
        if not 1 <= num_tokens < CONTEXT_LENGTH:
            raise ValueError(
                f"`num_tokens` must be in [1, {CONTEXT_LENGTH}). "
                f"Received: {num_tokens}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: {dropout}"
            )
        # === Layers ===
        hidden = keras.layers.Dense(
            hidden_dim, activation=activation, name="hidden"
        )
        drop = keras.layers.Dropout(dropout)
        project = keras.layers.Dense(num_tokens * context_dim, name="tokens")
        norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")
        # === Functional Model ===
        embeddings = keras.Input((embedding_dim,), name="embeddings")
        x = project(drop(hidden(embeddings)))
        tokens = norm(keras.layers.Reshape((num_tokens, context_dim))(x))
        super().__init__(inputs=embeddings, outputs=tokens, **kwargs)
        # === Config ===
        self.embedding_dim = embedding_dim
        self.num_tokens = num_tokens
        self.context_dim = context_dim
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.dropout = dropout

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedding_dim": self.embedding_dim,
            "num_tokens": self.num_tokens,
            "context_dim": self.context_dim,
            "hidden_dim": self.hidden_dim,
            "activation": self.activation,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class AdapterTrainer(keras.Model):
    """Training model of the adapter: noise prediction through a frozen
    denoiser (Ho et al., 2020, eq. 14), with the adapter's context.

    Per example: a uniform timestep `t`, noise `eps`,
    `z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`; the frozen denoiser predicts
    `eps` from `z_t` and the context; the loss is the MSE. With probability
    `cond_drop_prob` the context is the empty prompt's, so the adapter
    learns alongside an unconditional branch for guidance. Only the
    adapter's weights train; only the adapter is saved (this wrapper holds
    the frozen denoiser and is not serialised).

    Args:
        adapter: `EmbeddingAdapter`.
        diffusion_model: the denoiser (frozen here).
        base_context, unconditional_context: `(1, 77, 768)` arrays.
        cond_drop_prob: float in [0, 1).
        seed: optional int for timesteps, noise and condition dropout.

    Call arguments:
        inputs: dict with `embedding` `(batch, d)` and `latent`
            `(batch, h, w, 4)` (scaled VAE latents of the posters).

    Returns:
        dict of `eps` (prediction) and `noise` (target).
    """

    def __init__(
        self,
        adapter,
        diffusion_model,
        base_context,
        unconditional_context,
        cond_drop_prob=0.1,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0 <= cond_drop_prob < 1:
            raise ValueError(
                f"`cond_drop_prob` must be in [0, 1). Received: "
                f"{cond_drop_prob}"
            )
        self.adapter = adapter
        self.diffusion_model = diffusion_model
        self.diffusion_model.trainable = False
        self.base_context = _check_context(base_context, "base_context")
        self.unconditional_context = _check_context(
            unconditional_context, "unconditional_context"
        )
        self.cond_drop_prob = cond_drop_prob
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.alphas_cumprod = sd_schedule().alphas_cumprod

    def call(self, inputs, training=False):
        latent = inputs["latent"]
        batch = ops.shape(latent)[0]
        t = keras.random.randint(
            (batch,), 0, TRAIN_TIMESTEPS, seed=self.seed_generator
        )
        noise = keras.random.normal(
            ops.shape(latent), seed=self.seed_generator, dtype=latent.dtype
        )
        a = ops.reshape(
            ops.take(ops.cast(self.alphas_cumprod, latent.dtype), t),
            (-1, 1, 1, 1),
        )
        noisy = ops.sqrt(a) * latent + ops.sqrt(1.0 - a) * noise
        context = assemble_context(
            self.adapter(inputs["embedding"], training=training),
            self.base_context,
        )
        if training and self.cond_drop_prob:
            drop = keras.random.uniform((batch, 1, 1), seed=self.seed_generator)
            context = ops.where(
                drop < self.cond_drop_prob,
                ops.cast(self.unconditional_context, context.dtype),
                context,
            )
        eps = self.diffusion_model(
            {
                "latent": noisy,
                "timestep_embedding": sinusoidal_embedding(t, TIMESTEP_DIM),
                "context": context,
            },
            training=False,
        )
        return {"eps": eps, "noise": noise}

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        del x, y, sample_weight, training
        return ops.mean(
            ops.square(ops.cast(y_pred["eps"], "float32") - y_pred["noise"])
        )


def assemble_context(tokens, base_context):
    """The base context with its last `num_tokens` tokens replaced by the
    adapter's.

    Args:
        tokens: `(batch, num_tokens, 768)`.
        base_context: `(1 or batch, 77, 768)`.

    Returns:
        `(batch, 77, 768)`: `base[:, :77 - num_tokens]` then `tokens`. The
        prompt's own words sit at the front (its tail is end-of-text
        padding), so a short prompt is kept whole.
    """
    tokens = ops.convert_to_tensor(tokens)
    batch, num_tokens = ops.shape(tokens)[0], tokens.shape[1]
    base = ops.cast(ops.convert_to_tensor(base_context), tokens.dtype)
    base = ops.broadcast_to(
        base[:, : CONTEXT_LENGTH - num_tokens],
        (batch, CONTEXT_LENGTH - num_tokens, tokens.shape[2]),
    )
    return ops.concatenate([base, tokens], axis=1)


# ---------------------------------------------------------------------------
# Stable Diffusion components, schedule and sampling maths
# ---------------------------------------------------------------------------


def load_stable_diffusion(
    height, width, weights="pretrained", with_image_encoder=False
):
    """KerasCV's SD v1 components for `height` x `width` images.

    Args:
        height, width: pixels, positive multiples of 64.
        weights: `"pretrained"` (download or `~/.keras` cache) or
            `"random"` (offline; random initialisation).
        with_image_encoder: also build the VAE encoder (adapter training).

    Returns:
        dict of `diffusion_model`, `decoder`, `text_encoder` and, when
        asked, `image_encoder`.

    Raises:
        ValueError: bad size or weights name.
        ImportError: keras-cv is missing (with the pip command).
        WeightsUnavailable: pretrained weights cannot be downloaded.
    """
    if weights not in SD_WEIGHTS:
        raise ValueError(
            f"`decode.sd_weights` must be one of {SD_WEIGHTS}. Received: "
            f"{weights!r}"
        )
    for arg, value in (("height", height), ("width", width)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            raise ValueError(
                f"Stable Diffusion `{arg}` must be a positive multiple of "
                f"{SIZE_MULTIPLE} (VAE /8, three UNet halvings). "
                f"Received: {value}"
            )
    sd = _keras_cv_sd()
    download = weights == "pretrained"
    if download:
        logger.info(
            "stable diffusion: loading pretrained weights "
            "(downloaded once to ~/.keras)"
        )
    else:
        logger.warning(
            "stable diffusion: RANDOM weights (decode.sd_weights=random): "
            "the pipeline runs end to end, the pictures are noise"
        )
    start = time.perf_counter()
    parts = {
        # The text encoder first: the smallest download fails fastest.
        "text_encoder": _build(sd.TextEncoder, download, CONTEXT_LENGTH),
        "decoder": _build(sd.Decoder, download, height, width),
        "diffusion_model": _build(
            sd.DiffusionModel, download, height, width, CONTEXT_LENGTH
        ),
    }
    if with_image_encoder:
        parts["image_encoder"] = _build(sd.ImageEncoder, download)
    logger.info(
        "stable diffusion: components ready in %.1fs (%dx%d)",
        time.perf_counter() - start,
        height,
        width,
    )
    return parts


def prompt_contexts(text_encoder, prompt=""):
    """`(base, unconditional)` `(1, 77, 768)` contexts: the prompt's (the
    empty prompt's when `prompt` is "") and the empty prompt's."""
    empty = [_CLIP_START] + [_CLIP_END] * (CONTEXT_LENGTH - 1)
    unconditional = _encode_tokens(text_encoder, empty)
    if not prompt:
        return unconditional, unconditional
    return _encode_tokens(text_encoder, tokenize_prompt(prompt)), unconditional


def tokenize_prompt(prompt):
    """77 CLIP token ids of `prompt` (KerasCV's tokenizer; its vocabulary
    is downloaded once).

    Raises:
        WeightsUnavailable: the vocabulary cannot be downloaded.
        ValueError: the prompt is longer than 77 tokens.
    """
    sd = _keras_cv_sd()
    try:
        tokenizer = sd.SimpleTokenizer()
    except Exception as e:  # keras.utils.get_file raises a bare Exception
        raise WeightsUnavailable(
            "The CLIP tokenizer vocabulary could not be downloaded, so "
            f"`decode.prompt` ({prompt!r}) cannot be encoded: {e}. Leave "
            "`decode.prompt` empty to decode from the embedding alone."
        ) from None
    ids = tokenizer.encode(prompt)
    if len(ids) > CONTEXT_LENGTH:
        raise ValueError(
            f"`decode.prompt` is {len(ids)} CLIP tokens; at most "
            f"{CONTEXT_LENGTH} fit. Received: {prompt!r}"
        )
    return ids + [_CLIP_END] * (CONTEXT_LENGTH - len(ids))


def encode_latents(
    image_encoder, paths, height, width, batch_size=4, progress=True
):
    """Scaled VAE latents `(n, height/8, width/8, 4)` of image files,
    decoded and encoded `batch_size` at a time."""
    out = []
    for i in tqdm(
        range(0, len(paths), batch_size),
        desc="sd latents",
        unit="batch",
        disable=not progress,
    ):
        pixels, _ = images_lib.load_images(
            paths[i : i + batch_size], height, width, progress=False
        )
        x = pixels.astype(np.float32) / 127.5 - 1.0
        out.append(np.asarray(image_encoder.predict_on_batch(x), np.float32))
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# Grids: the two-way guidance sweep per user
# ---------------------------------------------------------------------------


def guidance_sweep(
    decoder, embeddings_by_prior_scale, image_scales, seed=0, steps=25
):
    """Decode embeddings sampled at several prior guidance scales with
    several image guidance scales.

    Args:
        decoder: any decoder of `make_decoder`.
        embeddings_by_prior_scale: `{prior_scale: (n, d) array}` (a key may
            be None when the prior was sampled once).
        image_scales: image-model guidance scales (columns).
        seed: int, the same for every cell, so cells differ by the scales.
        steps: denoising steps (Stable Diffusion).

    Returns:
        `(rows, row_labels)`: one row per (prior scale, sample), one
        uint8 image per image scale.
    """
    if not image_scales:
        raise ValueError("`image_scales` must hold at least one scale.")
    rows, labels = [], []
    for prior_scale, embeddings in embeddings_by_prior_scale.items():
        by_scale = [
            decoder.decode(embeddings, seed=seed, guidance_scale=w, steps=steps)
            for w in image_scales
        ]
        for i in range(len(by_scale[0])):
            rows.append([images[i] for images in by_scale])
            prefix = "" if prior_scale is None else f"prior {prior_scale:g} "
            labels.append(f"{prefix}#{i}")
    return rows, labels


def sd_schedule():
    """Stable Diffusion v1's noise schedule ("scaled linear", T = 1000)."""
    return NoiseSchedule(TRAIN_TIMESTEPS, "scaled_linear")


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _keras_cv_sd():
    try:
        # keras-cv imports TensorFlow whatever the backend: only here.
        from keras_cv.models import stable_diffusion
    except ImportError as e:
        raise ImportError(
            f"The Stable Diffusion decoder needs keras-cv ({e}). Install "
            f"it with `{_KERAS_CV_HINT}`, or use "
            "`--set decode.decoder=poster_decoder`."
        ) from None
    return stable_diffusion


def _build(cls, download, *args):
    try:
        return cls(*args, download_weights=download)
    except Exception as e:  # keras.utils.get_file raises a bare Exception
        if not download:
            raise
        raise WeightsUnavailable(
            f"Pretrained Stable Diffusion weights for {cls.__name__} could "
            f"not be loaded: {e}. They are downloaded once from "
            "huggingface.co into ~/.keras; without network access use "
            "`--set decode.sd_weights=random` (wiring check, noise "
            "pictures) or `--set decode.decoder=poster_decoder`."
        ) from None


def _encode_tokens(text_encoder, tokens):
    return np.asarray(
        text_encoder.predict_on_batch(
            {
                "tokens": np.asarray([tokens], np.int32),
                "positions": np.arange(CONTEXT_LENGTH, dtype=np.int32)[None],
            }
        ),
        np.float32,
    )


def poster_row(item_ids, by_id, size):
    """Images of `item_ids` from `{id: path}` at `size` (None where an item
    has no poster): the "nearest catalog items" row of a grid."""
    present = [i for i in item_ids if i in by_id]
    loaded = (
        dict(
            zip(
                present,
                images_lib.load_images(
                    [by_id[i] for i in present], *size, progress=False
                )[0],
            )
        )
        if present
        else {}
    )
    return [loaded.get(i) for i in item_ids] or [None]


def _check_embeddings(embeddings, dim, hint=""):
    embeddings = np.asarray(embeddings, np.float32)
    if (
        embeddings.ndim != 2
        or embeddings.shape[1] != dim
        or not len(embeddings)
    ):
        raise ValueError(
            f"`embeddings` must be a non-empty (n, {dim}) array (the "
            f"decoder's embedding width). Received shape: "
            f"{embeddings.shape}.{hint}"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("`embeddings` holds NaN or infinite values.")
    return embeddings


def _check_guidance(scale):
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(
            f"`guidance_scale` must be a finite number >= 0. Received: {scale}"
        )


def _check_context(context, name):
    context = np.asarray(context, np.float32)
    if context.shape != (1, CONTEXT_LENGTH, CONTEXT_DIM):
        raise ValueError(
            f"`{name}` must have shape (1, {CONTEXT_LENGTH}, {CONTEXT_DIM})"
            f". Received: {context.shape}"
        )
    return context


def check_adapter_mode(folder, weights):
    """Warn when the adapter in `folder` was trained with other SD
    weights than `weights`."""
    info_path = folder / "adapter.json"
    if not info_path.is_file():
        return
    trained = json.loads(info_path.read_text(encoding="utf-8")).get(
        "sd_weights"
    )
    if trained != weights:
        logger.warning(
            "the adapter in %s was trained with sd_weights=%s; decoding "
            "with sd_weights=%s",
            folder,
            trained,
            weights,
        )
