"""Images on the host, for every part of the toolkit that reads them: NumPy
and Pillow, no Keras.

`read_image` decodes one file as RGB at a target size (JPEG draft mode, so
a 64 px thumbnail never decodes the full-size picture); `load_images`
decodes many in threads into one uint8 stack, with a presence flag per
row; `find_posters` lists a folder of `{item_id}.jpg` files and
`cached_posters` keeps the
resized stack as one uint8 `.npz` in the cache folder, keyed by the files'
names, sizes and modification times and the target size, so a changed
folder is never read from a stale cache. `write_grid` lays out rows of
images with labels as one PNG, written atomically.
"""

import concurrent.futures
import hashlib
import io
import logging
import os
import pathlib

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import UnidentifiedImageError
from tqdm.auto import tqdm

from runtime import runs

logger = logging.getLogger(__name__)

POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")
_LABEL_HEIGHT = 14  # pixels of the default bitmap font's text line
_BACKGROUND = (255, 255, 255)
_MISSING_TILE = 200  # grey of a tile whose image does not exist
_THREADS = 4  # Pillow decodes with the GIL released
RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}


def find_posters(folder) -> tuple[np.ndarray, list[pathlib.Path]]:
    """The image files named after integer item ids in `folder`.

    Args:
        folder: folder holding `{item_id}.jpg` (or `.jpeg`, `.png`) files.

    Returns:
        `(item_ids, paths)`: `(n,)` int64 raw ids in increasing order and
        the matching paths. Files with other names are skipped (logged).

    Raises:
        FileNotFoundError: the folder does not exist or holds no poster.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Poster folder not found: {folder}. Point `decode.posters_dir` "
            "at a folder of `{item_id}.jpg` files (MovieLens ids for the "
            "ml-1m-posters set)."
        )
    found, skipped = {}, []
    for path in folder.iterdir():
        if path.suffix.lower() in POSTER_SUFFIXES and path.stem.isdigit():
            found[int(path.stem)] = path
        else:
            skipped.append(path.name)
    if skipped:
        logger.info(
            "posters: skipped %d files not named `{id}.jpg` in %s (e.g. %s)",
            len(skipped),
            folder,
            sorted(skipped)[0],
        )
    if not found:
        raise FileNotFoundError(
            f"No poster in {folder}: expected files named `{{item_id}}.jpg`, "
            f"`.jpeg` or `.png`; found {len(skipped)} other files."
        )
    ids = np.array(sorted(found), np.int64)
    return ids, [found[i] for i in ids.tolist()]


def read_image(path, height: int, width: int, resample="bicubic"):
    """One image file as `(height, width, 3)` uint8 RGB (the aspect ratio of
    a file that differs is not kept: posters are all close to 2:3).

    Raises:
        ValueError: the file is not a readable image (naming it).
    """
    try:
        with Image.open(path) as img:
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale: much faster
            # when the target is a thumbnail.
            img.draft("RGB", (width * 2, height * 2))
            img = img.convert("RGB").resize(
                (width, height), RESAMPLING[resample], reducing_gap=2.0
            )
            return np.asarray(img, np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None


def load_images(
    paths,
    height: int,
    width: int,
    progress: bool = True,
    resample="bicubic",
    skip_unreadable=False,
):
    """Decode `paths` as RGB, resize each to `height` x `width` and stack.

    Args:
        paths: sequence of image paths; an empty path (`""`, None) is an
            item without an image.
        height, width: int >= 8, output size in pixels.
        progress: bool, tqdm bar.
        resample: `"bicubic"` or `"bilinear"`.
        skip_unreadable: bool; a file that cannot be decoded is logged and
            marked absent instead of raising.

    Returns:
        `(images, present)`: `(n, height, width, 3)` uint8 (zero rows where
        absent) and `(n,)` bool.

    Raises:
        ValueError: a file is not a readable image (naming it), unless
            `skip_unreadable`.
    """
    _check_size(height, width)
    if resample not in RESAMPLING:
        raise ValueError(
            f"`resample` must be one of {sorted(RESAMPLING)}. Received: "
            f"{resample!r}"
        )
    images = np.zeros((len(paths), height, width, 3), np.uint8)
    present = np.zeros(len(paths), bool)
    todo = [i for i, p in enumerate(paths) if p]
    failed = []

    def read(i):
        try:
            images[i] = read_image(paths[i], height, width, resample)
            present[i] = True
        except ValueError as e:
            if not skip_unreadable:
                raise
            failed.append(str(e))

    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        for _ in tqdm(
            pool.map(read, todo),
            total=len(todo),
            desc=f"images {height}x{width}",
            unit="img",
            disable=not progress,
            mininterval=2.0,
        ):
            pass
    if failed:
        logger.warning(
            "%d image files could not be read and are masked (e.g. %s)",
            len(failed),
            failed[0],
        )
    return images, present


def cached_posters(
    folder, height: int, width: int, cache_dir, progress: bool = True
):
    """All posters of `folder` at `height` x `width`, read once then cached.

    Args:
        folder: poster folder (see `find_posters`).
        height, width: int >= 8, output size in pixels.
        cache_dir: folder of the cache file (created when missing).
        progress: bool, tqdm bar while decoding.

    Returns:
        `(item_ids, images)`: `(n,)` int64 and `(n, height, width, 3)` uint8.
    """
    _check_size(height, width)
    ids, paths = find_posters(folder)
    stamps = [
        f"{p.name}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in paths
    ]
    key = hashlib.sha256(
        "\n".join([str(pathlib.Path(folder).resolve()), *stamps]).encode()
    ).hexdigest()[:16]
    cache_path = pathlib.Path(cache_dir) / f"posters-{height}x{width}-{key}.npz"
    if cache_path.is_file():
        with np.load(cache_path) as cached:
            logger.info("posters: %d from cache %s", len(ids), cache_path)
            return cached["item_ids"], cached["images"]
    images, _ = load_images(paths, height, width, progress=progress)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, item_ids=ids, images=images)
        os.replace(tmp, cache_path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("posters: %d decoded, cached at %s", len(ids), cache_path)
    return ids, images


def write_grid(path, rows, row_labels=(), col_labels=(), title=""):
    """Write rows of images as one labelled PNG grid, atomically.

    Args:
        path: output `.png` path (parent folders are created).
        rows: sequence of rows; each row a sequence of `(H, W, 3)` uint8
            images or `None` (a grey tile). All images share one size.
        row_labels: optional text left of each row (one per row).
        col_labels: optional text above each column.
        title: optional first line of the picture.

    Returns:
        The written `pathlib.Path`.

    Raises:
        ValueError: no image, mixed sizes, or label counts that do not match.
    """
    tiles = [t for row in rows for t in row if t is not None]
    if not tiles:
        raise ValueError("`rows` holds no image to draw.")
    shapes = {np.shape(t) for t in tiles}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(
            "All grid images must share one (H, W, 3) shape. Received: "
            f"{sorted(shapes)}"
        )
    if row_labels and len(row_labels) != len(rows):
        raise ValueError(
            f"`row_labels` has {len(row_labels)} entries for {len(rows)} rows."
        )
    ncols = max(len(row) for row in rows)
    if col_labels and len(col_labels) != ncols:
        raise ValueError(
            f"`col_labels` has {len(col_labels)} entries for {ncols} columns."
        )
    h, w, _ = next(iter(shapes))
    pad = 4
    left = 6 * max((len(s) for s in row_labels), default=0) + pad
    top = _LABEL_HEIGHT * (bool(title) + bool(col_labels)) + pad
    canvas = Image.new(
        "RGB",
        (left + ncols * (w + pad), top + len(rows) * (h + pad)),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 1), title, fill=(0, 0, 0))
    for c, label in enumerate(col_labels):
        draw.text(
            (left + c * (w + pad), top - _LABEL_HEIGHT), label, fill=(0, 0, 0)
        )
    for r, row in enumerate(rows):
        y = top + r * (h + pad)
        if row_labels:
            draw.text((2, y + h // 2 - 5), row_labels[r], fill=(0, 0, 0))
        for c, tile in enumerate(row):
            if tile is None:
                tile = np.full((h, w, 3), _MISSING_TILE, np.uint8)
            canvas.paste(
                Image.fromarray(np.asarray(tile, np.uint8)),
                (left + c * (w + pad), y),
            )
    path = pathlib.Path(path)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    runs.atomic_write_bytes(path, buffer.getvalue())
    return path


def _check_size(height, width):
    if height < 8 or width < 8:
        raise ValueError(
            "Image `height` and `width` must be >= 8. Received: "
            f"height={height}, width={width}"
        )
