"""content/images.py: the one image reader (decode, resize, stack, mask
what cannot be read), poster folders, the poster cache and picture grids."""

import numpy as np
import pytest
from PIL import Image

from content import images as images_lib
from tests.content.test_items import content_cfg
from tests.content.test_items import load
from tests.content.test_items import write_content
from tests.diffusion.test_poster_autoencoder import write_posters


def test_load_images_resizes_and_masks_unreadable(tmp_path):
    content = load(content_cfg(write_content(tmp_path)))
    images, present = images_lib.load_images(
        content.image_paths,
        8,
        8,
        progress=False,
        resample="bilinear",
        skip_unreadable=True,
    )
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(present, [1, 0, 1, 0, 1, 0])
    assert images[present].std() > 0 and not images[~present].any()


def test_read_image_resizes_with_either_filter(tmp_path):
    folder = write_posters(tmp_path / "p", n=1)
    for resample in ("bicubic", "bilinear"):
        image = images_lib.read_image(folder / "1.jpg", 12, 8, resample)
        assert image.shape == (12, 8, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="resample"):
        images_lib.load_images([folder / "1.jpg"], 8, 8, resample="nearest")


def test_find_posters_and_clear_errors(tmp_path):
    folder = write_posters(tmp_path / "p", n=3)
    (folder / "notes.txt").write_text("x")
    (folder / "_placeholder.png").write_bytes(b"")
    ids, paths = images_lib.find_posters(folder)
    np.testing.assert_array_equal(ids, [1, 2, 3])
    assert [p.name for p in paths] == ["1.jpg", "2.jpg", "3.jpg"]
    with pytest.raises(FileNotFoundError, match="decode.posters_dir"):
        images_lib.find_posters(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No poster"):
        images_lib.find_posters(tmp_path / "empty")
    (folder / "4.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="4.jpg: not a readable image"):
        images_lib.load_images([folder / "4.jpg"], 8, 8, progress=False)
    with pytest.raises(ValueError, match=">= 8"):
        images_lib.load_images(paths, 4, 8, progress=False)


def test_cached_posters_reads_once_and_sees_changes(tmp_path, monkeypatch):
    folder = write_posters(tmp_path / "p", n=4)
    ids, imgs = images_lib.cached_posters(
        folder, 12, 8, tmp_path / "c", progress=False
    )
    assert imgs.shape == (4, 12, 8, 3) and imgs.dtype == np.uint8
    calls = []
    real = images_lib.load_images
    monkeypatch.setattr(
        images_lib,
        "load_images",
        lambda *a, **k: calls.append(1) or real(*a, **k),
    )
    ids2, imgs2 = images_lib.cached_posters(
        folder, 12, 8, tmp_path / "c", progress=False
    )
    assert not calls
    np.testing.assert_array_equal(imgs2, imgs)
    write_posters(folder, n=5, seed=1)
    ids3, imgs3 = images_lib.cached_posters(
        folder, 12, 8, tmp_path / "c", progress=False
    )
    assert calls and len(ids3) == 5


def test_write_grid_lays_out_rows_and_labels(tmp_path):
    tile = np.full((10, 6, 3), 255, np.uint8)
    path = images_lib.write_grid(
        tmp_path / "g" / "grid.png",
        [[tile, None], [tile]],
        row_labels=["a", "b"],
        col_labels=["x", "y"],
        title="t",
    )
    with Image.open(path) as img:
        assert img.size[0] > 2 * 6 and img.size[1] > 2 * 10
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
