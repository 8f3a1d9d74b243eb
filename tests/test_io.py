"""File and image helpers: atomic writes (auxseg.files), image decoding, label PNGs (auxseg.images)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from auxseg.files import atomic_path
from auxseg.images import ImageReadError, list_images, read_label, read_rgb, write_label_png


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("dtype, value", [(np.uint8, 255), (np.uint16, 65535)])
def test_label_png_round_trip(tmp_path, dtype, value):
    label = np.arange(12 * 9, dtype=dtype).reshape(12, 9)
    label[0, 0] = value
    write_label_png(tmp_path / "a" / "l.png", label)
    back = read_label(tmp_path / "a" / "l.png")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, label)


def test_read_rgb_converts_modes(tmp_path):
    gray = Image.fromarray(np.full((4, 5), 100, np.uint8), mode="L")
    gray.save(tmp_path / "g.png")
    rgba = Image.fromarray(np.dstack([np.full((4, 5), 200, np.uint8)] * 3 + [np.full((4, 5), 255, np.uint8)]), "RGBA")
    rgba.save(tmp_path / "a.png")
    pal = gray.convert("P")
    pal.save(tmp_path / "p.png")
    for name, expected in (("g.png", 100), ("a.png", 200), ("p.png", 100)):
        rgb = read_rgb(tmp_path / name)
        assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
        assert (rgb == expected).all(), name


def test_read_rgb_honours_exif_orientation(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)  # 2 rows x 3 cols as stored
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_rgb(tmp_path / "r.jpg").shape == (3, 2, 3)


def test_truncated_and_missing_images_name_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_rgb(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")


def test_list_images_sorted_relative(tmp_path):
    for rel in ("b/2.png", "a.jpg", "b/1.PNG", "notes.txt", ".hidden.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [str(p) for p in list_images(tmp_path)] == ["a.jpg", "b/1.PNG", "b/2.png"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
