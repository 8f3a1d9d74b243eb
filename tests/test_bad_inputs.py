"""Bad inputs, each with its exact outcome: a table of cases (docs/reliability.md).

Every case asserts the exception type and a regex on its one-line message
(which names the file or key at fault), or the documented value, and that
nothing already written is lost. Inputs are tiny and made in tmp_path; a case
that could kill the interpreter (fast-slic's SIGFPE) runs in a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import auxseg.files as afiles
import auxseg.images as aimages
from auxlabels.metrics import confusion, same_pixel_bound
from auxlabels.superpixels import compute_superpixels, superpixel_label_bound
from auxseg.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from auxseg.errors import AuxsegError
from auxseg.images import ImageReadError, read_rgb

REPO_ROOT = Path(__file__).resolve().parents[1]


def one_line(err: BaseException) -> str:
    """The error's message, asserting it is one line (what the CLI prints)."""
    msg = str(err)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ============================================================================ images: every mode and bit depth
# (id, write(tmp_path) -> path, expected uint8 RGB [H, W, 3] as nested lists)

U16 = np.array([[0, 257, 25700, 65535]], np.uint16)  # /257 -> 0, 1, 100, 255


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def _gray_rgb(values) -> list:
    return [[[v, v, v] for v in row] for row in values]


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 50])
    img.putpixel((1, 0), 1)
    if transparent:
        img.info["transparency"] = 1  # colour 1 fully transparent
    return img


IMAGE_CASES = [
    ("I;16-png", lambda d: _save(Image.fromarray(U16), d / "a.png"), _gray_rgb([[0, 1, 100, 255]])),
    ("I;16-tif", lambda d: _save(Image.fromarray(U16), d / "a.tif"), _gray_rgb([[0, 1, 100, 255]])),
    (
        "I;16B-tif",
        lambda d: _save(Image.frombytes("I;16B", (4, 1), U16.astype(">u2").tobytes()), d / "a.tif"),
        _gray_rgb([[0, 1, 100, 255]]),
    ),
    ("I-32bit-tif", lambda d: _save(Image.fromarray(U16.astype(np.int32)), d / "a.tif"), _gray_rgb([[0, 1, 100, 255]])),
    (
        "F-float-tif",
        lambda d: _save(Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)), d / "a.tif"),
        _gray_rgb([[0, 128, 255, 51]]),
    ),
    ("L-png", lambda d: _save(Image.fromarray(np.array([[0, 7, 255]], np.uint8)), d / "a.png"), _gray_rgb([[0, 7, 255]])),
    ("1-bilevel-png", lambda d: _save(Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1"), d / "a.png"),
     _gray_rgb([[0, 255, 0]])),
    ("P-png", lambda d: _save(_palette(False), d / "a.png"), [[[10, 20, 30], [200, 100, 50]]]),
    ("P-transparent-png", lambda d: _save(_palette(True), d / "a.png"), [[[10, 20, 30], [200, 100, 50]]]),
    (
        "LA-png",
        lambda d: _save(Image.fromarray(np.array([[[100, 0], [50, 255]]], np.uint8), "LA"), d / "a.png"),
        _gray_rgb([[100, 50]]),
    ),
    (
        "RGBA-png",
        lambda d: _save(Image.fromarray(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8), "RGBA"), d / "a.png"),
        [[[10, 20, 30], [40, 50, 60]]],
    ),
    ("CMYK-tif", lambda d: _save(Image.new("CMYK", (2, 1), (255, 0, 0, 0)), d / "a.tif"), [[[0, 255, 255]] * 2]),
    ("CMYK-jpg", lambda d: _save(Image.new("CMYK", (2, 1), (0, 0, 0, 0)), d / "a.jpg"), [[[255, 255, 255]] * 2]),
    ("RGB-png", lambda d: _save(Image.new("RGB", (2, 1), (1, 2, 3)), d / "a.png"), [[[1, 2, 3]] * 2]),
]


@pytest.mark.parametrize("write, expected", [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES])
def test_read_rgb_every_mode(tmp_path, write, expected):
    path = write(tmp_path)
    before = path.read_bytes()
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    np.testing.assert_array_equal(rgb, np.array(expected, np.uint8))
    assert path.read_bytes() == before  # reading never touches the file


def test_read_rgb_16bit_exif_orientation_kept(tmp_path):
    img = Image.fromarray(np.full((2, 3), 65535, np.uint16))  # 2 rows x 3 cols as stored
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.png", exif=exif)  # PNG: Pillow's TIFF decoder handles orientation its own way
    rgb = read_rgb(tmp_path / "r.png")
    assert rgb.shape == (3, 2, 3) and (rgb == 255).all()


def _write_bytes(name: str, data: bytes):
    def write(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name

    return write


def _truncated(name: str, fmt: str):
    def write(d: Path) -> Path:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "full", format=fmt)
        data = (d / "full").read_bytes()
        (d / "full").unlink()
        (d / name).write_bytes(data[: len(data) // 2])
        return d / name

    return write


def _directory(name: str):
    def write(d: Path) -> Path:
        (d / name).mkdir()
        return d / name

    return write


# (id, write(tmp_path) -> path, regex on the one-line ImageReadError message after the file name)
BAD_IMAGE_CASES = [
    ("zero-byte", _write_bytes("empty.png", b""), r"empty file \(0 bytes\)"),
    ("text-with-image-suffix", _write_bytes("notes.jpg", b"just some text\n"), r"not an image"),
    ("truncated-png", _truncated("cut.png", "PNG"), r"truncated|corrupt"),
    ("truncated-jpeg", _truncated("cut.jpg", "JPEG"), r"truncated|corrupt"),
    ("directory", _directory("folder.png"), r"is a directory"),
    ("missing", lambda d: d / "missing.png", r"file not found"),
    (
        "I-32bit-out-of-range",
        lambda d: _save(Image.fromarray(np.array([[-5, 70000]], np.int32)), d / "wide.tif"),
        r"32-bit integer values -5\.\.70000 are outside 0\.\.65535",
    ),
    (
        "F-float-out-of-range",
        lambda d: _save(Image.fromarray(np.array([[0.0, 3.5]], np.float32)), d / "depth.tif"),
        r"float values 0\.\.3\.5 are outside 0\.\.1",
    ),
    (
        "F-float-nan",
        lambda d: _save(Image.fromarray(np.array([[0.0, np.nan]], np.float32)), d / "nan.tif"),
        r"float values are not all finite",
    ),
]


@pytest.mark.parametrize("write, reason", [c[1:] for c in BAD_IMAGE_CASES], ids=[c[0] for c in BAD_IMAGE_CASES])
def test_read_rgb_rejects_with_file_and_reason(tmp_path, write, reason):
    path = write(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    msg = one_line(info.value)
    assert isinstance(info.value, AuxsegError) and isinstance(info.value, OSError)
    assert msg.startswith(f"cannot read image {path}: "), msg
    assert re.search(reason, msg), msg
    if before is not None:
        assert path.read_bytes() == before


# ============================================================================ superpixels: tiny images never crash

# One subprocess per method runs every case and prints one JSON line per finished case: before the
# clamp, fast-slic died of SIGFPE, which would take pytest down with it.
_SP_SCRIPT = """
import json, sys
import numpy as np
from auxlabels.superpixels import compute_superpixels
method, cases = sys.argv[1], json.loads(sys.argv[2])
for shape, n in cases:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8) if len(shape) == 3 else np.zeros(shape, np.uint8)
    try:
        seg = compute_superpixels(img, n, 10.0, method)
        out = {"shape": list(seg.shape), "dtype": str(seg.dtype), "min": int(seg.min()),
               "max": int(seg.max()), "unique": int(len(np.unique(seg)))}
    except ValueError as err:
        out = {"error": str(err)}
    print(json.dumps({"case": [shape, n], **out}), flush=True)
"""

TINY_SHAPES = [(1, 1), (2, 2), (3, 3), (8, 8), (20, 20), (1, 64), (64, 1), (2, 300)]
UNUSABLE = [  # (id, image shape, n_segments, regex on the ValueError)
    ("empty", (0, 5, 3), 500, r"image must be \[H, W, 3\] with H, W >= 1, got shape \(0, 5, 3\)"),
    ("gray-2d", (5, 5), 500, r"image must be \[H, W, 3\].*got shape \(5, 5\)"),
    ("n-zero", (5, 5, 3), 0, r"superpixels.n_segments must be >= 1, got 0"),
]
_SP_CASES = [[[h, w, 3], 500] for h, w in TINY_SHAPES] + [[list(shape), n] for _, shape, n, _ in UNUSABLE]
_sp_results: dict[str, dict] = {}


def superpixel_result(method: str, shape, n: int) -> dict:
    """The subprocess's outcome for one case (the subprocess runs once per method)."""
    if method not in _sp_results:
        proc = subprocess.run(
            [sys.executable, "-c", _SP_SCRIPT, method, json.dumps(_SP_CASES)],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
        )
        done = {json.dumps(r["case"]): r for r in map(json.loads, proc.stdout.splitlines())}
        _sp_results[method] = {"done": done, "rc": proc.returncode, "stderr": proc.stderr[-400:]}
    res = _sp_results[method]
    key = json.dumps([list(shape), n])
    assert key in res["done"], (
        f"compute_superpixels({tuple(shape)}, n_segments={n}, {method}) never returned: the process died "
        f"(rc={res['rc']}, -8 = SIGFPE) at this case or before it: {res['stderr']}"
    )
    return res["done"][key]


@pytest.mark.parametrize("method", ["fast_slic", "skimage"])
@pytest.mark.parametrize("h, w", TINY_SHAPES, ids=[f"{h}x{w}" for h, w in TINY_SHAPES])
def test_superpixels_tiny_images_do_not_crash(h, w, method):
    out = superpixel_result(method, [h, w, 3], 500)
    limit = max(1, (h * w) // 4)  # the documented clamp: at least 4 pixels per superpixel on average
    assert out["shape"] == [h, w] and out["dtype"] == "int32"
    assert out["min"] == 0 and out["unique"] == out["max"] + 1  # compact ids
    assert out["unique"] <= superpixel_label_bound(limit, method) <= superpixel_label_bound(500, method)
    if method == "fast_slic":
        assert out["unique"] <= limit


@pytest.mark.parametrize("shape, n, match", [c[1:] for c in UNUSABLE], ids=[c[0] for c in UNUSABLE])
def test_superpixels_reject_unusable_input(shape, n, match):
    out = superpixel_result("fast_slic", list(shape), n)  # fast-slic crashes on an empty image
    assert "error" in out, out
    assert "\n" not in out["error"] and re.search(match, out["error"]), out["error"]


def test_superpixels_1x1_is_one_segment_without_fast_slic(monkeypatch):
    import auxlabels.superpixels as sp

    def no_fast_slic():
        raise AssertionError("fast-slic must not be called for a 1x1 image")

    monkeypatch.setattr(sp, "_fast_slic_class", no_fast_slic)
    seg = compute_superpixels(np.zeros((1, 1, 3), np.uint8), 500, 10.0, "fast_slic")
    assert seg.dtype == np.int32 and seg.tolist() == [[0]]


def test_superpixels_clamp_rule():
    from auxlabels.superpixels import max_superpixels

    assert [max_superpixels(h, w) for h, w in [(1, 1), (1, 7), (2, 4), (20, 20), (480, 360)]] == [1, 1, 2, 100, 43200]


def test_superpixels_untouched_on_normal_images():
    # the clamp changes nothing where the image holds n_segments superpixels of >= 4 pixels
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    seg = compute_superpixels(img, 20, 10.0, "fast_slic")
    assert 5 <= seg.max() + 1 <= 20


# ============================================================================ checkpoints


def _ckpt_text(d: Path) -> Path:
    (d / "model.pth").write_text("this is not a checkpoint\nbut a text file\n")
    return d / "model.pth"


def _ckpt_empty(d: Path) -> Path:
    (d / "model.pth").write_bytes(b"")
    return d / "model.pth"


def _ckpt_truncated(d: Path) -> Path:
    torch.save({"w": torch.zeros(64)}, d / "full.pth")
    data = (d / "full.pth").read_bytes()
    (d / "model.pth").write_bytes(data[: len(data) // 2])
    return d / "model.pth"


def _ckpt_plain_pickle(d: Path) -> Path:
    (d / "model.pth").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    return d / "model.pth"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _ckpt_unsafe(d: Path) -> Path:
    torch.save({"w": torch.zeros(2), "x": _Evil()}, d / "model.pth")
    return d / "model.pth"


# (id, write(tmp_path) -> path, regex on the one-line CheckpointError message)
BAD_CHECKPOINT_CASES = [
    ("text-file", _ckpt_text, r"is not a torch checkpoint \(a text file starting 'this is not a checkpoint'\)"),
    ("zero-byte", _ckpt_empty, r"is not a torch checkpoint \(empty file, 0 bytes\)"),
    ("plain-pickle", _ckpt_plain_pickle, r"is not a torch checkpoint \(a plain pickle, not written by torch.save\)"),
    ("truncated", _ckpt_truncated, r"cannot read checkpoint .*model.pth: truncated or corrupt"),
    ("unsafe-pickle", _ckpt_unsafe, r"refusing to load .*model.pth: it contains objects outside the safe allow-list"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, on the plain pickle
@pytest.mark.parametrize("write, match", [c[1:] for c in BAD_CHECKPOINT_CASES], ids=[c[0] for c in BAD_CHECKPOINT_CASES])
def test_load_checkpoint_bad_files(tmp_path, write, match):
    path = write(tmp_path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = one_line(info.value)
    assert str(path) in msg
    assert re.search(match, msg), msg
    assert "weights_only" not in msg  # never suggest switching safe loading off
    assert path.read_bytes() == before


def test_load_checkpoint_still_loads_good_files(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "new.pth")
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("new.pth", "legacy.pth"):
        assert torch.equal(load_checkpoint(tmp_path / name)["w"], torch.ones(3))


# ============================================================================ disk full while writing


@pytest.fixture
def disk_full(monkeypatch, tmp_path):
    """Make every ``os.write`` / ``os.fsync`` to a file under tmp_path fail with ENOSPC (others pass through)."""
    real_write, real_fsync = os.write, os.fsync

    def under_tmp(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        except OSError:
            return False

    def write(fd, data):
        if under_tmp(fd):
            real_write(fd, bytes(data)[: max(1, len(data) // 2)])  # half of it lands, like a real full disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def fsync(fd):
        if under_tmp(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)


def _torch_save_enospc(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _torch_save_enforce_fail(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


# (id, target name, write(path), regex on the cause after "cannot write <path>: ")
DISK_FULL_CASES = [
    ("json", "manifest.json", lambda p: afiles.atomic_write_json(p, {"k": 17}), r"no space left on device"),
    ("text", "config.yaml", lambda p: afiles.atomic_write_text(p, "a: 1\n" * 100), r"no space left on device"),
    ("bytes", "blob.bin", lambda p: afiles.atomic_write_bytes(p, b"x" * 1000), r"no space left on device"),
    ("label-png", "label.png", lambda p: aimages.write_label_png(p, np.zeros((8, 8), np.uint8)), r"no space left on device"),
    ("rgb-png", "image.png", lambda p: aimages.write_rgb_png(p, np.zeros((8, 8, 3), np.uint8)), r"no space left on device"),
    ("jsonl-append", "log.jsonl", lambda p: afiles.append_jsonl(p, {"iter": 2}), r"no space left on device"),
]


@pytest.mark.parametrize("name, write, cause", [c[1:] for c in DISK_FULL_CASES], ids=[c[0] for c in DISK_FULL_CASES])
def test_disk_full_keeps_old_file_and_removes_temp(tmp_path, disk_full, name, write, cause):
    target = tmp_path / name
    old = b'{"iter": 1}\n' if name.endswith(".jsonl") else b"old contents"
    target.write_bytes(old)  # pathlib writes through FileIO, not os.write: not affected by the fixture
    with pytest.raises(OSError) as info:
        write(target)
    msg = one_line(info.value)
    assert isinstance(info.value, AuxsegError)
    assert info.value.errno == errno.ENOSPC
    assert re.fullmatch(f"cannot write {re.escape(str(target))}: {cause}", msg), msg
    assert target.read_bytes() == old
    assert files_in(tmp_path) == [name]  # no temporary file left behind


@pytest.mark.parametrize(
    "fake_save, cause",
    [(_torch_save_enospc, r"no space left on device"), (_torch_save_enforce_fail, r".*inline_container.*")],
    ids=["oserror-enospc", "torch-enforce-fail"],
)
def test_disk_full_checkpoint(tmp_path, monkeypatch, fake_save, cause):
    target = tmp_path / "iter_10.pth"
    torch.save({"w": torch.ones(2)}, target)
    old = target.read_bytes()
    monkeypatch.setattr(torch, "save", fake_save)
    with pytest.raises(OSError) as info:
        save_checkpoint({"w": torch.zeros(2)}, target)
    msg = one_line(info.value)
    assert isinstance(info.value, AuxsegError)
    assert msg.startswith(f"cannot write {target}: "), msg
    assert re.search(cause, msg), msg
    assert "weights_only" not in msg
    assert target.read_bytes() == old
    assert files_in(tmp_path) == ["iter_10.pth"]


# ============================================================================ JSON-lines logs


def test_jsonl_round_trip_and_missing(tmp_path):
    log = tmp_path / "sub" / "log.jsonl"
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        afiles.read_jsonl(log)
    afiles.append_jsonl(log, {"iter": 1, "loss": 2.5})
    afiles.append_jsonl(log, {"iter": 2, "loss": float("nan")})
    rows = afiles.read_jsonl(log)
    assert rows[0] == {"iter": 1, "loss": 2.5} and rows[1]["iter"] == 2 and np.isnan(rows[1]["loss"])
    assert log.read_text().count("\n") == 2


@pytest.mark.parametrize(
    "tail",
    [b'{"iter": 3, "lo', b'{"iter": 3, "loss": 1.', b"\x00\x00\x00\x00", b'{"it\xc3'],
    ids=["cut-key", "cut-number", "nul-bytes", "cut-utf8"],
)
def test_jsonl_torn_last_line_is_ignored_with_warning(tmp_path, tail):
    log = tmp_path / "log.jsonl"
    good = b'{"iter": 1}\n{"iter": 2}\n'
    log.write_bytes(good + tail)
    with pytest.warns(UserWarning, match=r"log.jsonl:3: ignoring a torn last line"):
        rows = afiles.read_jsonl(log)
    assert rows == [{"iter": 1}, {"iter": 2}]
    assert log.read_bytes() == good + tail  # reading never rewrites
    # the next append drops the torn fragment instead of gluing a record onto it
    with pytest.warns(UserWarning, match="torn last line"):
        afiles.append_jsonl(log, {"iter": 3})
    assert log.read_bytes() == good + b'{"iter": 3}\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert afiles.read_jsonl(log) == [{"iter": 1}, {"iter": 2}, {"iter": 3}]


def test_jsonl_unterminated_complete_last_line_is_kept(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"iter": 1}\n{"iter": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert afiles.read_jsonl(log) == [{"iter": 1}, {"iter": 2}]
    afiles.append_jsonl(log, {"iter": 3})
    assert log.read_bytes() == b'{"iter": 1}\n{"iter": 2}\n{"iter": 3}\n'


@pytest.mark.parametrize(
    "content, match",
    [
        (b'{"iter": 1}\n{"iter": 2, "lo\n{"iter": 3}\n', r"log.jsonl:2: not valid JSON"),
        (b'{"iter": 1}\n{"iter": 2\n', r"log.jsonl:2: not valid JSON"),  # ends in a newline: not torn
        (b'{"iter": 1}\n[1, 2]\n{"iter": 3}\n', r"log.jsonl:2: not a JSON object \(got list\)"),
        (b'{"iter": 1}\n\xff\xfe\n{"iter": 3}\n', r"log.jsonl:2: not valid UTF-8"),
        (b'{"iter": 1}\n' + b"[" * 100_000 + b"]" * 100_000 + b'\n{"iter": 3}\n',
         r"log.jsonl:2: not valid JSON \(arrays or objects nested too deeply\)"),
    ],
    ids=["mid-file-torn", "bad-last-line-with-newline", "not-an-object", "bad-utf8", "nested-100k-deep"],
)
def test_jsonl_corruption_in_the_middle_is_an_error(tmp_path, content, match):
    log = tmp_path / "log.jsonl"
    log.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        afiles.read_jsonl(log)
    one_line(info.value)
    assert isinstance(info.value, AuxsegError)
    assert str(log) in str(info.value)
    assert log.read_bytes() == content


# ============================================================================ JSON state files


@pytest.mark.parametrize("content, match", [
    ("[" * 100_000 + "]" * 100_000, r"not valid JSON: arrays or objects nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"not valid JSON: arrays or objects nested too deeply"),
    ('{"a": 1', r"not valid JSON: "),
], ids=["array-100k-deep", "object-100k-deep", "cut-short"])
def test_read_json_undecodable_names_the_file(tmp_path, content, match):
    """A RecursionError escaped read_json (a 200 KB file of nested brackets); every failure is one DataFileError."""
    path = tmp_path / "state.json"
    path.write_text(content)
    for read in (afiles.read_json, afiles.read_json_object):
        with pytest.raises(afiles.DataFileError, match=rf"^{path}: {match}") as info:
            read(path)
        one_line(info.value)


@pytest.mark.parametrize("content, found", [
    ("[]", "an array"), ("null", "null"), ("3.5", "a number"), ("false", "false"), ('"x"', "a string"),
])
def test_read_json_object_names_what_the_file_holds(tmp_path, content, found):
    """State files read back (manifests, step records, reports) must hold an object: ``[]`` or ``null`` gave an
    AttributeError deep in the reader."""
    path = tmp_path / "manifest.json"
    path.write_text(content)
    assert afiles.read_json(path) == json.loads(content)  # read_json itself takes any JSON value
    with pytest.raises(afiles.DataFileError, match=rf"^{path}: expected a JSON object, found {found}$"):
        afiles.read_json_object(path)
    path.write_text('{"a": [1]}')
    assert afiles.read_json_object(path) == {"a": [1]}


# ============================================================================ ground truth out of range


def test_gt_out_of_range_names_file_and_value(tmp_path):
    gt = np.zeros((4, 4), np.uint8)
    gt[2, 3] = 12
    gt[0, 0] = 255  # ignore
    aux = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError) as info:
        confusion(aux, gt, 3, 11, 255, [255], gt_path=tmp_path / "valannot" / "0001.png")
    msg = one_line(info.value)
    assert isinstance(info.value, AuxsegError)
    assert re.search(
        r"ground truth .*valannot/0001.png: value 12 at row 2, column 3 \(1 pixel\) is outside 0..10 "
        r"and not an ignore value \[255\]",
        msg,
    ), msg


def test_gt_out_of_range_in_same_pixel_bound_names_file(tmp_path):
    gt = np.zeros((3, 3), np.uint8)
    gt[1, 1] = 40
    aimages.write_label_png(tmp_path / "b.png", gt)
    aimages.write_label_png(tmp_path / "a.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"ground truth .*b\.png: value 40 at row 1, column 1") as info:
        same_pixel_bound(tmp_path, [255], 11)
    one_line(info.value)



# ============================================================================ errors cross process boundaries


def test_errors_survive_pickling_from_worker_processes():
    # label PNGs are written in worker processes: their errors are pickled back to the parent
    from auxlabels.metrics import GroundTruthError

    for err in (
        afiles.WriteError("/x/label.png", "no space left on device", errno.ENOSPC),
        ImageReadError("cannot read image /x/a.png: empty file (0 bytes)"),
        afiles.JsonLinesError("/x/log.jsonl:2: not valid JSON (Expecting value at column 1)"),
        GroundTruthError("ground truth /x/g.png: value 12 ..."),
        CheckpointError("/x/m.pth is not a torch checkpoint (empty file, 0 bytes)"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert getattr(back, "errno", None) == getattr(err, "errno", None)
    assert str(afiles.WriteError("/x/y.pth", "no space left on device")) == "cannot write /x/y.pth: no space left on device"
