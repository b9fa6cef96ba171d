"""Item content for the multimodal model: join, presence masks, feature cache.

`load_item_content` joins, by raw item id, the catalog's own item table
(`data.item_features`, e.g. MovieLens `movies.csv`: title, genres) with an
optional extra content table (`multimodal.content_path`, e.g. ML-1M
`movies_extrainfos.dat`: plot, director, actors, year) and an image per
item found through a path pattern (`multimodal.image_pattern`, e.g.
`{shared}/datasets/ml-1m-posters/{id}.jpg`). Every modality gets a
per-item presence mask; items that lack one are counted, logged and masked
in the model, never silently zero-filled. A configured column that exists
in no table, or an image pattern that matches no file at all, is an error.

`build_item_features` turns the content into the one float32 matrix the
Keras model reads (`[text | image | numeric | presence]`, its layout in
`FeatureTable.stats["layout"]`). The outputs of frozen encoders (MiniLM or
hashed text, a pretrained image backbone) and the resized poster pixels are
computed once and kept in a `FeatureCache`: one memory-mapped `.npy` per
array plus a JSON key that records the encoder name, the encoder config and
a fingerprint of the content it was built from; any change of those is a
new key, so a stale entry is never read.

Paths in the config may start with `{shared}`: the shared folder,
`$RECSYS_SHARED` when set, else `<repo>/../shared` (`config.shared_root`).
"""

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import config as config_lib
import data
from content import images as images_lib
from models import encoders
from models import text_encoders
from runtime import runs

logger = logging.getLogger(__name__)

MODALITIES = config_lib.MODALITIES
IMAGE_ENCODERS = ("cnn", "backbone")
_MEMO_SIZE = 2  # item matrices kept in memory by multimodal_item_features
_MEMO = {}


# ---------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ItemContent:
    """Raw content of every catalog item, aligned to the item index.

    Args:
        item_ids: `(n,)` raw item ids (index order).
        texts: `n` strings, the text columns joined ("" = no text).
        image_paths: `n` image paths as str ("" = no file).
        numeric: `(n, 2 * len(numeric_columns))` float32: per column the
            standardised value (log1p first when skewed) and a missing flag.
        numeric_names: names of the `numeric` columns.
        presence: modality -> `(n,)` bool, the item has that modality.
        coverage: JSON-ready counts per modality and per column.
        fingerprints: modality -> sha256 of the content it was built from.
    """

    item_ids: np.ndarray
    texts: list
    image_paths: list
    numeric: np.ndarray
    numeric_names: list
    presence: dict
    coverage: dict
    fingerprints: dict

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def load_item_content(
    item_ids,
    text_columns=(),
    numeric_columns=(),
    image_pattern="",
    tables=(),
) -> ItemContent:
    """Join item content from tables and image files by raw item id.

    Args:
        item_ids: `(n,)` raw item ids, in item index order.
        text_columns: column names joined (". ") into each item's text; a
            column is looked up in `tables` in order, and for each item the
            first table with a non-empty value wins (so a title can come
            from the extra table where it has the item, else the catalog).
        numeric_columns: column names of numbers, looked up the same way.
            Cells that are not numbers count as missing (and are reported).
        image_pattern: path pattern with `{id}` (raw item id), e.g.
            `{shared}/datasets/ml-1m-posters/{id}.jpg`; "" = no images.
        tables: sequence of `(frame, id_col, source_name)`.

    Returns:
        `ItemContent`.

    Raises:
        ValueError: a column exists in none of the tables (naming the
            columns that do), or an id column is missing.
        FileNotFoundError: `image_pattern` matches no file for any item.
    """
    item_ids = np.asarray(item_ids)
    n = len(item_ids)
    aligned = [
        _align(frame, id_col, item_ids, name) for frame, id_col, name in tables
    ]
    coverage = {"items": n, "columns": {}}
    text_parts = []
    for col in text_columns:
        values = _coalesce(aligned, col, text=True)
        coverage["columns"][col] = int((values != "").sum())
        text_parts.append(values)
    if text_parts:
        stacked = np.stack(text_parts, axis=1)
        texts = [". ".join(v for v in row if v) for row in stacked.tolist()]
    else:
        texts = [""] * n
    has_text = np.array([bool(t) for t in texts], bool)
    numeric_blocks, numeric_names = [], []
    has_numeric = np.zeros(n, bool)
    for col in numeric_columns:
        raw = _coalesce(aligned, col, text=False)
        values = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(
            np.float64
        )
        bad = np.isnan(values) & (raw != "")
        if bad.any():
            example = raw[np.flatnonzero(bad)[0]]
            logger.warning(
                "numeric column `%s`: %d values are not numbers (e.g. %r); "
                "they count as missing",
                col,
                int(bad.sum()),
                example,
            )
        finite = np.isfinite(values)
        coverage["columns"][col] = int(finite.sum())
        has_numeric |= finite
        numeric_blocks.append(data.standardise_numeric(values)[0])
        numeric_names += [col, f"{col}_missing"]
    numeric = (
        np.concatenate(numeric_blocks, axis=1)
        if numeric_blocks
        else np.zeros((n, 0), np.float32)
    )
    image_paths, has_image = _image_paths(image_pattern, item_ids)
    presence = {"text": has_text, "image": has_image, "numeric": has_numeric}
    coverage["modalities"] = {m: int(presence[m].sum()) for m in MODALITIES}
    coverage["no_content"] = int((~(has_text | has_image | has_numeric)).sum())
    for modality in MODALITIES:
        configured = {
            "text": bool(text_columns),
            "image": bool(image_pattern),
            "numeric": bool(numeric_columns),
        }[modality]
        if configured:
            logger.info(
                "content %s: %d of %d items have it, %d lack it",
                modality,
                coverage["modalities"][modality],
                n,
                n - coverage["modalities"][modality],
            )
    fingerprints = {
        "ids": _digest(item_ids.astype(str).tolist()),
        "text": _digest(texts),
        "numeric": _digest(numeric.tobytes()),
        "image": _digest(_file_stamps(image_paths)),
    }
    return ItemContent(
        item_ids=item_ids,
        texts=texts,
        image_paths=image_paths,
        numeric=numeric,
        numeric_names=numeric_names,
        presence=presence,
        coverage=coverage,
        fingerprints=fingerprints,
    )


def content_tables(mm, item_table_cfg=None) -> list:
    """The `(frame, id_col, name)` tables named by a `MultimodalConfig`:
    its `content_path` first (if set), then the catalog's item table (a
    `FeatureFileConfig`, if it has a path)."""
    tables = []
    if mm.content_path is not None:
        path = config_lib.resolve_shared(pathlib.Path(mm.content_path))
        frame = data.read_table(
            path,
            sep=mm.content_sep,
            header=not mm.content_column_names,
            column_names=mm.content_column_names,
            encoding=mm.content_encoding,
        )
        tables.append((frame, mm.content_id_col, str(path)))
    if item_table_cfg is not None and item_table_cfg.path is not None:
        f = item_table_cfg
        frame = data.read_table(
            f.path, f.format, f.sep, f.header, f.column_names, f.encoding
        )
        tables.append((frame, f.id_col, str(f.path)))
    return tables


# ---------------------------------------------------------------------------
# Frozen image backbone
# ---------------------------------------------------------------------------


def embed_images(paths, model, size, batch_size=64, progress=True):
    """Stream images through a frozen `model` in batches.

    Args:
        paths: `n` str paths ("" = no image).
        model: from `models.encoders.image_backbone`.
        size: int, side the images are resized to.
        batch_size: int, images per forward pass (the last batch is padded
            so one compiled shape serves every call).
        progress: bool, tqdm bar.

    Returns:
        `(features, present)`: `(n, D)` float32 (zero rows where absent)
        and `(n,)` bool (files that decoded).
    """
    paths = list(paths)
    todo = np.flatnonzero([bool(p) for p in paths])
    dim = int(model.output.shape[-1])
    out = np.zeros((len(paths), dim), np.float32)
    present = np.zeros(len(paths), bool)
    bar = tqdm(
        total=len(todo), desc="image backbone", unit="img", disable=not progress
    )
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        images, ok = images_lib.load_images(
            [paths[i] for i in idx],
            size,
            size,
            progress=False,
            resample="bilinear",
            skip_unreadable=True,
        )
        batch = np.zeros((batch_size, size, size, 3), np.float32)
        batch[: len(idx)] = images
        vectors = np.asarray(model.predict_on_batch(batch), np.float32)
        out[idx[ok]] = vectors[: len(idx)][ok]
        present[idx[ok]] = True
        bar.update(len(idx))
    bar.close()
    return out, present


# ---------------------------------------------------------------------------
# The feature cache
# ---------------------------------------------------------------------------


class FeatureCache:
    """Arrays computed once per (encoder, encoder config, content) on disk.

    An entry is `<folder>/<name>-<key>.<array>.npy` files (read back
    memory-mapped) and `<folder>/<name>-<key>.json` holding the key: the
    encoder `name`, its `config`, the content `fingerprint`, the array
    shapes and the build time. The key is a sha256 of name, config and
    fingerprint, so changing any of them misses; the JSON is written last
    and checked on read, so an interrupted build is never read back.

    Args:
        folder: cache directory (created on first write).
    """

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)

    def key(self, name: str, config: dict, fingerprint: str) -> str:
        payload = json.dumps(
            {"name": name, "config": config, "fingerprint": fingerprint},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def get(self, name, config, fingerprint):
        """The entry's arrays (memory-mapped, read-only) or None."""
        stem = f"{name}-{self.key(name, config, fingerprint)}"
        info_path = self.folder / f"{stem}.json"
        if not info_path.is_file():
            return None
        try:
            info = json.loads(info_path.read_text())
            if (info["name"], info["fingerprint"]) != (name, fingerprint) or (
                json.dumps(info["config"], sort_keys=True, default=str)
                != json.dumps(config, sort_keys=True, default=str)
            ):
                return None
            arrays = {
                k: np.load(self.folder / f"{stem}.{k}.npy", mmap_mode="r")
                for k in info["arrays"]
            }
        except (OSError, ValueError, KeyError) as e:
            logger.warning(
                "cache entry %s unreadable (%s): rebuilding", stem, e
            )
            return None
        for k, shape in info["arrays"].items():
            if list(arrays[k].shape) != shape:
                return None
        return arrays

    def get_or_build(self, name, config, fingerprint, build, rebuild=False):
        """Return `(arrays, hit)`: the cached arrays, or `build()`'s dict of
        arrays written to the cache first (always with `rebuild`)."""
        if not rebuild:
            arrays = self.get(name, config, fingerprint)
            if arrays is not None:
                logger.info("feature cache hit: %s", name)
                return arrays, True
        start = time.perf_counter()
        arrays = build()
        seconds = time.perf_counter() - start
        self.put(name, config, fingerprint, arrays, seconds)
        logger.info("feature cache miss: built %s in %.1fs", name, seconds)
        return self.get(name, config, fingerprint), False

    def put(self, name, config, fingerprint, arrays: dict, seconds=0.0):
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{self.key(name, config, fingerprint)}"
        for k, value in arrays.items():
            final = self.folder / f"{stem}.{k}.npy"
            tmp = self.folder / f".{stem}.{k}.tmp-{os.getpid()}.npy"
            try:
                np.save(tmp, np.ascontiguousarray(value))
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        info = {
            "name": name,
            "config": config,
            "fingerprint": fingerprint,
            "arrays": {k: list(np.shape(v)) for k, v in arrays.items()},
            "dtypes": {k: str(np.asarray(v).dtype) for k, v in arrays.items()},
            "build_seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        runs.atomic_write_text(
            self.folder / f"{stem}.json",
            json.dumps(info, indent=2, default=str),
        )

    def entries(self) -> list:
        """The JSON keys of every complete entry."""
        if not self.folder.is_dir():
            return []
        return [
            json.loads(p.read_text())
            for p in sorted(self.folder.glob("*.json"))
        ]

    def clear(self, name=None) -> int:
        """Delete every entry (or those of encoder `name`); returns the
        number of files removed."""
        if not self.folder.is_dir():
            return 0
        pattern = "*" if name is None else f"{name}-*"
        removed = 0
        for path in self.folder.glob(pattern):
            if path.suffix in (".json", ".npy") and path.is_file():
                path.unlink()
                removed += 1
        return removed


# ---------------------------------------------------------------------------
# The model's item matrix
# ---------------------------------------------------------------------------


def build_item_features(
    content: ItemContent,
    cache: FeatureCache,
    modalities=MODALITIES,
    text_encoder="minilm",
    text_options=None,
    image_encoder="cnn",
    image_size=32,
    image_backbone="MobileNetV3Small",
    image_backbone_weights="imagenet",
    batch_size=64,
    rebuild=False,
    progress=True,
) -> data.FeatureTable:
    """The multimodal model's input: one float32 row per item.

    Columns, in order: text vector (frozen encoder), image block (host-
    normalised pixels in [-1, 1] for the trainable CNN, or frozen backbone
    features), numeric block, and three presence flags (text, image,
    numeric). A modality not in `modalities` has width 0 and presence 0.

    Args:
        content: `ItemContent`.
        cache: `FeatureCache` for the frozen encoders and pixels.
        modalities: subset of `MODALITIES` to use (ablations drop one).
        text_encoder: `"minilm"` or `"hashed"` (`models/text_encoders.py`).
        text_options: dict of that encoder's keyword arguments
            (`sequence_length`, or `dim`).
        image_encoder: `"cnn"` (pixels for a trainable CNN) or
            `"backbone"` (frozen pretrained features).
        image_size: int, side of the pixels given to the CNN or backbone.
        image_backbone: keras.applications class name, or
            `"keras_hub:<preset>"`.
        image_backbone_weights: `"imagenet"` or None (random init).
        batch_size: int, items per frozen-encoder forward pass.
        rebuild: bool, recompute even on a cache hit.
        progress: bool, progress bars.

    Returns:
        `data.FeatureTable` with `stats = {"layout": ..., "coverage": ...,
        "cache": {entry: "hit"|"miss"}}`; `missing` marks items with none
        of the used modalities.
    """
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown or not modalities:
        raise ValueError(
            f"`modalities` must be a non-empty subset of {MODALITIES}. "
            f"Received: {tuple(modalities)}"
        )
    if image_encoder not in IMAGE_ENCODERS:
        raise ValueError(
            f"`image_encoder` must be one of {IMAGE_ENCODERS}. Received: "
            f"{image_encoder!r}"
        )
    n = content.num_items
    blocks, names = [], []
    presence = np.zeros((n, len(MODALITIES)), np.float32)
    layout = {"text_dim": 0, "image_dim": 0, "image_size": 0, "numeric_dim": 0}
    hits = {}
    if "text" in modalities:
        vectors, hits["text"] = _text_block(
            content,
            cache,
            text_encoder,
            dict(text_options or {}),
            batch_size,
            rebuild,
            progress,
        )
        blocks.append(vectors)
        names += [f"text_{text_encoder}#{i}" for i in range(vectors.shape[1])]
        layout["text_dim"] = vectors.shape[1]
        presence[:, 0] = content.presence["text"]
    if "image" in modalities:
        image, present, hits["image"] = _image_block(
            content,
            cache,
            image_encoder,
            image_size,
            image_backbone,
            image_backbone_weights,
            batch_size,
            rebuild,
            progress,
        )
        blocks.append(image)
        names += [f"image_{image_encoder}#{i}" for i in range(image.shape[1])]
        layout["image_dim"] = image.shape[1]
        if image_encoder == "cnn":
            layout["image_size"] = image_size
        presence[:, 1] = present
    if "numeric" in modalities:
        blocks.append(content.numeric)
        names += list(content.numeric_names)
        layout["numeric_dim"] = content.numeric.shape[1]
        presence[:, 2] = content.presence["numeric"] & (
            content.numeric.shape[1] > 0
        )
    blocks.append(presence)
    names += [f"has_{m}" for m in MODALITIES]
    values = np.concatenate([np.asarray(b, np.float32) for b in blocks], axis=1)
    coverage = dict(content.coverage)
    coverage["used"] = {
        m: int(presence[:, i].sum()) for i, m in enumerate(MODALITIES)
    }
    logger.info(
        "multimodal item matrix: items=%d columns=%d (%.1f MiB) with "
        "text=%d image=%d numeric=%d items",
        n,
        values.shape[1],
        values.nbytes / 2**20,
        *coverage["used"].values(),
    )
    return data.FeatureTable(
        values=values,
        names=names,
        missing=presence.sum(axis=1) == 0,
        stats={"layout": layout, "coverage": coverage, "cache": hits},
    )


def content_vectors(features: data.FeatureTable) -> np.ndarray:
    """A fixed content vector per item for content baselines: the frozen
    blocks of `build_item_features` (text, backbone image features,
    numeric), each L2-normalised so every modality weighs the same; CNN
    pixels are left out (they are no embedding)."""
    layout = features.stats["layout"]
    start, parts = 0, []
    for key in ("text_dim", "image_dim", "numeric_dim"):
        width = layout[key]
        block = features.values[:, start : start + width]
        start += width
        if width and not (key == "image_dim" and layout["image_size"]):
            norm = np.linalg.norm(block, axis=1, keepdims=True)
            parts.append(block / np.maximum(norm, 1e-12))
    if not parts:
        raise ValueError(
            "No frozen content block to build content vectors from: use the "
            "text or numeric modality, or image_encoder='backbone'."
        )
    return np.concatenate(parts, axis=1).astype(np.float32)


def multimodal_item_features(
    mm, item_table_cfg, item_ids, modalities=None, rebuild=False, progress=True
):
    """`build_item_features` as a `config.MultimodalConfig` `mm` describes
    it, over the catalog `item_ids`, with content from `mm` and the
    catalog's item table `item_table_cfg` (`data.item_features`).

    The last few results are kept in memory (keyed by the settings and the
    ids), so the fits of one action (select, then refit) build them once.
    """
    memo_key = (
        mm,
        item_table_cfg,
        None if modalities is None else tuple(modalities),
        _digest(np.asarray(item_ids).astype(str).tolist()),
    )
    if not rebuild and memo_key in _MEMO:
        return _MEMO[memo_key]
    content = load_item_content(
        item_ids,
        text_columns=mm.text_columns,
        numeric_columns=mm.numeric_columns,
        image_pattern=config_lib.resolve_shared(mm.image_pattern),
        tables=content_tables(mm, item_table_cfg),
    )
    text_options = (
        {"sequence_length": mm.text_sequence_length}
        if mm.text_encoder == "minilm"
        else {"dim": mm.hashed_text_dim}
    )
    features = build_item_features(
        content,
        FeatureCache(mm.cache_dir),
        modalities=mm.modalities if modalities is None else modalities,
        text_encoder=mm.text_encoder,
        text_options=text_options,
        image_encoder=mm.image_encoder,
        image_size=mm.image_size,
        image_backbone=mm.image_backbone,
        image_backbone_weights=mm.image_backbone_weights,
        batch_size=mm.encode_batch_size,
        rebuild=rebuild,
        progress=progress,
    )
    while len(_MEMO) >= _MEMO_SIZE:
        _MEMO.pop(next(iter(_MEMO)))
    _MEMO[memo_key] = features
    return features


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _text_block(
    content, cache, encoder, options, batch_size, rebuild, progress
):
    if encoder not in text_encoders.TEXT_ENCODERS:
        raise ValueError(
            f"`text_encoder` must be one of "
            f"{sorted(text_encoders.TEXT_ENCODERS)}. Received: {encoder!r}"
        )
    present = content.presence["text"]
    config = {"encoder": encoder, **options}
    if encoder == "minilm":
        config["model"] = text_encoders.MINILM_PACKAGE

    def build():
        texts = [t for t, p in zip(content.texts, present) if p]
        kwargs = dict(options)
        if encoder == "minilm":
            kwargs.update(batch_size=batch_size, progress=progress)
        vectors = text_encoders.encode_texts(texts, encoder, **kwargs)
        out = np.zeros((content.num_items, vectors.shape[1]), np.float32)
        out[present] = vectors
        return {"values": out}

    arrays, hit = cache.get_or_build(
        f"text-{encoder}",
        config,
        content.fingerprints["text"],
        build,
        rebuild,
    )
    return np.asarray(arrays["values"]), "hit" if hit else "miss"


def _image_block(
    content,
    cache,
    encoder,
    size,
    backbone,
    weights,
    batch_size,
    rebuild,
    progress,
):
    if not any(content.image_paths):
        return (
            np.zeros((content.num_items, 0), np.float32),
            np.zeros(content.num_items, bool),
            "none",
        )
    fingerprint = content.fingerprints["image"]
    if encoder == "cnn":

        def build():
            images, present = images_lib.load_images(
                content.image_paths,
                size,
                size,
                progress,
                resample="bilinear",
                skip_unreadable=True,
            )
            return {"values": images, "present": present}

        arrays, hit = cache.get_or_build(
            "image-pixels", {"size": size}, fingerprint, build, rebuild
        )
        pixels = np.asarray(arrays["values"]).reshape(content.num_items, -1)
        # Host normalisation to [-1, 1]; the CNN takes it as is.
        block = pixels.astype(np.float32) / 127.5 - 1.0
        block[~np.asarray(arrays["present"])] = 0.0
    else:
        config = {"backbone": backbone, "weights": weights, "size": size}

        def build():
            model = encoders.image_backbone(backbone, size, weights)
            vectors, present = embed_images(
                content.image_paths, model, size, batch_size, progress
            )
            return {"values": vectors, "present": present}

        arrays, hit = cache.get_or_build(
            f"image-{backbone.replace(':', '_').replace('/', '_')}",
            config,
            fingerprint,
            build,
            rebuild,
        )
        block = np.asarray(arrays["values"], np.float32)
    return block, np.asarray(arrays["present"]), "hit" if hit else "miss"


def _image_paths(pattern, item_ids):
    n = len(item_ids)
    if not pattern:
        return [""] * n, np.zeros(n, bool)
    if "{id}" not in pattern:
        raise ValueError(
            "`image_pattern` must contain `{id}` (the raw item id). "
            f"Received: {pattern!r}"
        )
    paths = [pattern.replace("{id}", str(runs.plain(i))) for i in item_ids]
    exists = np.array([os.path.isfile(p) for p in paths], bool)
    if n and not exists.any():
        raise FileNotFoundError(
            f"No image file found for any of the {n} items with "
            f"`image_pattern` {pattern!r} (e.g. {paths[0]}). Point "
            "`multimodal.image_pattern` at your images, or drop 'image' from "
            "`multimodal.modalities`."
        )
    if (~exists).any():
        logger.info(
            "%d of %d items have no image file (e.g. %s); masked",
            int((~exists).sum()),
            n,
            paths[int(np.flatnonzero(~exists)[0])],
        )
    return [p if e else "" for p, e in zip(paths, exists)], exists


def _file_stamps(paths):
    stamps = []
    for p in paths:
        if p:
            st = os.stat(p)
            stamps.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
        else:
            stamps.append("")
    return stamps


def _align(frame, id_col, item_ids, name):
    """`frame`'s rows reordered to `item_ids` (None where absent)."""
    if id_col not in frame.columns:
        raise ValueError(
            f"{name}: id column `{id_col}` not found. Columns in the file: "
            f"{[str(c) for c in frame.columns]}."
        )
    frame = frame.drop_duplicates(id_col, keep="last")
    index = pd.Index(_id_keys(frame[id_col].to_numpy()))
    rows = index.get_indexer(_id_keys(item_ids))
    return {"frame": frame.reset_index(drop=True), "rows": rows, "name": name}


def _coalesce(aligned, col, text):
    """Per item, the first non-empty value of `col` over the tables, as
    str ("" = none)."""
    sources = [a for a in aligned if col in a["frame"].columns]
    if not sources:
        available = sorted(
            {str(c) for a in aligned for c in a["frame"].columns}
        )
        names = [a["name"] for a in aligned] or ["(no content table)"]
        raise ValueError(
            f"Content column `{col}` not found in {names}. Columns there: "
            f"{available}. Fix `multimodal.text_columns` / "
            "`multimodal.numeric_columns`."
        )
    n = len(sources[0]["rows"])
    out = np.full(n, "", dtype=object)
    for source in sources:
        rows = source["rows"]
        column = source["frame"][col]
        values = np.full(n, "", dtype=object)
        hit = rows >= 0
        cells = column.to_numpy(dtype=object)[rows[hit]]
        values[hit] = [
            "" if c is None or c != c else str(c).strip() for c in cells
        ]
        if text and col == "genres":
            # MovieLens writes "(no genres listed)" for an empty list and
            # separates genres with "|".
            values = np.array(
                [
                    v.replace("(no genres listed)", "").replace("|", ", ")
                    for v in values
                ],
                dtype=object,
            )
        fill = (out == "") & (values != "")
        out[fill] = values[fill]
    return out.astype(str)


def _id_keys(ids):
    """Ids as comparable strings: integral numbers without a decimal part,
    so 1, 1.0 and "1" all match."""
    series = pd.Series(np.asarray(ids))
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().all() and np.all(np.mod(numeric.to_numpy(), 1) == 0):
        return numeric.astype(np.int64).astype(str).to_numpy()
    return series.astype(str).str.strip().to_numpy()


def _digest(payload) -> str:
    h = hashlib.sha256()
    if isinstance(payload, bytes):
        h.update(payload)
    else:
        for item in payload:
            h.update(str(item).encode())
            h.update(b"\x00")
    return h.hexdigest()
