"""Hostile and mistaken input: paths that leave their folder, bombs, torn state files, unparsable configs.

Paths read from files cannot leave their folder, and outputs cannot land outside ``out_dir``.

One guard (:mod:`auxseg.paths`) serves every reader: image lists (auxlabels,
softsegments, featureview), split files, label-folder manifests, and every label
or prior path derived from an image path. Each case checks the one-line error
(naming the file and line, or the manifest key) and that the user's files are
unchanged afterwards (docs/reliability.md, "Paths read from files").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auxlabels.config import AuxLabelsConfig
from auxlabels.pipeline import run as run_auxlabels
from auxseg.config import load_config
from auxseg.contracts.label_folder import label_rel, read_label_folder, write_groundtruth_label_folder
from auxseg.files import sha256_file
from auxseg.paths import UnsafePathError, check_separate, output_file, read_path_list, relative_inside
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from finetune.splits import SplitError, read_split

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "auxlabels" / "tiny.yaml"


@pytest.mark.parametrize("entry, norm", [("a.png", "a.png"), ("a/./b.png", "a/b.png"), ("a/../b.png", "b.png"),
                                         (" x y.png", " x y.png")])
def test_relative_paths_inside_are_normalised(entry, norm):
    assert relative_inside(entry, "list.txt:1") == norm


@pytest.mark.parametrize("entry, why", [
    ("../x.png", "leaves its folder"), ("a/../../x.png", "leaves its folder"), ("..", "leaves its folder"),
    (".", "leaves its folder"), ("/etc/passwd", "absolute path"), ("C:\\x.png", "absolute path"),
    ("\\\\server\\share\\x.png", "absolute path"), ("", "empty path"), ("a\x00b", "NUL byte"),
])
def test_paths_that_leave_or_are_absolute_are_refused(entry, why):
    with pytest.raises(UnsafePathError, match=f"^list.txt:7: .*{why}"):
        relative_inside(entry, "list.txt:7")


def test_label_rel_refuses_climbing_image_paths():
    """Every label and prior path goes through label_rel / prior_rel: the last line of defence."""
    assert label_rel("sub/a.jpg") == "sub/a.png"
    with pytest.raises(UnsafePathError, match="leaves its folder"):
        label_rel("../../x.jpg")


def test_read_path_list_names_file_and_line(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\n\na.png\n  b.png  \n../c.png\n")
    with pytest.raises(UnsafePathError, match=rf"^{listing}:5: path '../c.png' leaves its folder$"):
        read_path_list(listing)
    listing.write_text("a.png\n  b.png  \n")
    assert read_path_list(listing) == ["a.png", "b.png"]
    # the literature's "<image> <label>" lines list their image; both paths are checked; a name with a space
    # that is not such a pair stays one path
    listing.write_text("leftImg8bit/train/a_leftImg8bit.png gtFine/train/a_gtFine_labelTrainIds.png\n"
                       "my photo.jpg\n")
    assert read_path_list(listing) == ["leftImg8bit/train/a_leftImg8bit.png", "my photo.jpg"]
    listing.write_text("a.png b.png\nc.png ../../labels/c.png\n")
    with pytest.raises(UnsafePathError, match=rf"^{listing}:2: path '../../labels/c.png' leaves its folder$"):
        read_path_list(listing)


def test_output_file_refuses_symlinked_folders_and_files(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "labels").mkdir(parents=True)
    elsewhere.mkdir()
    assert output_file(out / "labels", "a/b.png", "image a/b.jpg") == out / "labels" / "a" / "b.png"
    (out / "labels" / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="would be written outside"):
        output_file(out / "labels", "sub/x.png", "image sub/x.jpg")
    (out / "labels" / "link.png").symlink_to(elsewhere / "victim.png")
    with pytest.raises(UnsafePathError, match="is a symbolic link"):
        output_file(out / "labels", "link.png", "image link.jpg")


@pytest.mark.parametrize("out_rel, in_rel, relation", [
    ("data/images/out", "data/images", "lies inside"), ("data", "data/images", "contains"),
    ("data/images", "data/images", "is"),
])
def test_output_and_input_folders_must_not_overlap(tmp_path, out_rel, in_rel, relation):
    (tmp_path / in_rel).mkdir(parents=True, exist_ok=True)
    with pytest.raises(UnsafePathError, match=f"^out_dir: .* {relation} the input folder image_dir="):
        check_separate(tmp_path / out_rel, "out_dir", {"image_dir": tmp_path / in_rel})
    check_separate(tmp_path / "elsewhere", "out_dir", {"image_dir": tmp_path / in_rel, "gt_dir": None})


def test_overlap_hidden_behind_a_symlink_is_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "images", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="lies inside"):
        check_separate(tmp_path / "alias" / "out", "out_dir", {"image_dir": tmp_path / "images"})


# ----------------------------------------------------------------------------- the stages, end to end


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"),
                                  SyntheticSpec(num_train=4, num_val=4, height=32, width=48, seed=5))


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _auxlabels(image_dir: Path, out: Path, *overrides: str):
    return load_config(AuxLabelsConfig, TINY, [f"image_dir={image_dir}", "gt_dir=null", f"out_dir={out}",
                                               *overrides])


def test_image_list_cannot_overwrite_the_users_image(data, tmp_path):
    """The reported case: a list line of ``../`` and the image's own path made auxlabels write its label
    map over the original image with exit 0. Now the list is refused before anything is written."""
    image_dir = data / "val"
    victim = sorted(image_dir.glob("*.png"))[0]
    before = _digests(data)
    out = tmp_path / "out"
    depth = len(out.joinpath("labels").resolve().parts) - 1
    climb = "../" * depth + victim.resolve().relative_to("/").as_posix()
    for line in (climb, "../outside/x.png", str(victim.resolve())):
        listing = tmp_path / "list.txt"
        listing.write_text(f"{sorted(image_dir.iterdir())[1].name}\n{line}\n")
        with pytest.raises(UnsafePathError, match=rf"^{listing}:2: "):
            run_auxlabels(_auxlabels(image_dir, out, f"image_list={listing}"))
        assert not out.exists()
    assert _digests(data) == before


def test_labels_dir_symlinked_elsewhere_is_not_written_through(data, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg = _auxlabels(data / "val", out, "clusterer=superpixel", "superpixels.n_segments=20")
    out.mkdir()
    (out / "labels").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="would be written outside"):
        run_auxlabels(cfg)
    assert list(elsewhere.iterdir()) == []


def test_out_dir_inside_image_dir_is_refused_before_writing(data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((data / "val").glob("*.png")):
        (images / p.name).write_bytes(p.read_bytes())
    before = _digests(images)
    with pytest.raises(UnsafePathError, match=r"^out_dir: .* lies inside the input folder image_dir="):
        run_auxlabels(_auxlabels(images, images / "aux"))
    assert _digests(images) == before and not (images / "aux").exists()


def test_manifest_entries_cannot_leave_the_image_root(data, tmp_path):
    """The reported case: a hand-edited manifest entry ``../../elsewhere/x.jpg`` (digest recomputed) trained
    on files outside the label folder and ``image_root``. The reader refuses it, naming the key."""
    folder = write_groundtruth_label_folder(data, tmp_path / "labels")
    manifest_path = folder / "manifest.json"
    m = json.loads(manifest_path.read_text())
    for key, entry in (("images", "../../elsewhere/x.jpg"), ("images", "/abs/x.jpg"),
                       ("eval_images", "../x.jpg")):
        bad = dict(m)
        bad[key] = [*m.get(key, []), entry]
        manifest_path.write_text(json.dumps(bad))
        with pytest.raises(UnsafePathError, match=rf"^{manifest_path}: {key}\[\d+\]: "):
            read_label_folder(folder)
    manifest_path.write_text(json.dumps(m))
    assert read_label_folder(folder).images == tuple(m["images"])


def test_split_file_lines_cannot_leave_the_image_folder(tmp_path):
    split = tmp_path / "split.txt"
    split.write_text("a\n../../etc/b\n")
    with pytest.raises(UnsafePathError, match=rf"^{split}:2: "):
        read_split(split)
    split.write_text("a\nb\n")
    assert read_split(split, available=["a", "b", "c"]) == ["a", "b"]
    split.write_text("a\nz\n")
    with pytest.raises(SplitError, match="not among the training images"):
        read_split(split, available=["a"])


def test_softsegments_list_refused(data, tmp_path):
    from auxlabels.soft_segments_run import SoftSegmentsConfig, list_inputs

    listing = tmp_path / "list.txt"
    listing.write_text("../x.png\n")
    cfg = load_config(SoftSegmentsConfig, None, [f"image_dir={data / 'val'}", f"image_list={listing}",
                                                  f"out_dir={tmp_path / 'out'}", "features=colour"])
    with pytest.raises(UnsafePathError, match=rf"^{listing}:1: "):
        list_inputs(cfg)


def test_unsafe_path_error_is_one_line_on_the_cli(data, tmp_path, capsys):
    from loop.cli import main

    listing = tmp_path / "list.txt"
    listing.write_text("../../x.png\n")
    code = main(["auxlabels", str(TINY), f"image_dir={data / 'val'}", "gt_dir=null", f"image_list={listing}",
                 f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and f"{listing}:1:" in err[0], err
    assert not (tmp_path / "out").exists()


def test_image_values_unchanged_through_symlinked_input(data, tmp_path):
    """Symbolic links *inside the input* stay allowed (datasets are often linked in); only outputs are held."""
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((data / "val").glob("*.png"))[0]
    os.symlink(src, images / "linked.png")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(images / "plain.png")
    m = run_auxlabels(_auxlabels(images, tmp_path / "out", "clusterer=superpixel", "superpixels.n_segments=20"))
    assert sorted(m["images"]) == ["linked.png", "plain.png"]
    assert (tmp_path / "out" / "labels" / "linked.png").is_file() and not (tmp_path / "out" / "labels" /
                                                                          "linked.png").is_symlink()


# ----------------------------------------------------------------------------- torn state files


def test_corrupt_manifest_in_out_dir_is_one_line(data, tmp_path, capsys):
    """Was a 42-line traceback: the decoder's error now names the file, at the one JSON boundary (read_json)."""
    from loop.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "auxseg.auxlabels/1", "comp')
    code = main(["auxlabels", str(TINY), f"image_dir={data / 'val'}", "gt_dir=null", f"out_dir={out}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(err) == 1 and f"{out / 'manifest.json'}: not valid JSON" in err[0], err
    assert (out / "manifest.json").read_text() == '{"format": "auxseg.auxlabels/1", "comp'  # left as it was


def test_truncated_fit_state_names_the_file(tmp_path):
    """Was ``BadZipFile`` with 39 lines and no file named; read_npz is the one NPZ boundary."""
    from auxlabels.fit_state import FIT_STATE, FitState
    from auxseg.files import DataFileError

    fit = FitState(centroids=np.zeros((3, 4), np.float32), refs=np.zeros((5, 4), np.float32),
                   ref_labels=np.zeros(5, np.int64), thresholds=np.ones(3, np.float32), num_labels=3)
    fit.save(tmp_path)
    assert FitState.load(tmp_path).info == {"num_labels": 3}
    data = (tmp_path / FIT_STATE).read_bytes()
    (tmp_path / FIT_STATE).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=rf"^{tmp_path / FIT_STATE}: not a readable \.npz file \(BadZipFile"):
        FitState.load(tmp_path)
    # a whole file whose 'info' is not the object save() writes: one line naming the file, not an AttributeError
    for info in ("[1, 2]", '{"num_labels": "many"}', "[" * 100_000):
        np.savez(tmp_path / FIT_STATE, centroids=fit.centroids, refs=fit.refs, ref_labels=fit.ref_labels,
                 thresholds=fit.thresholds, info=info)
        with pytest.raises(DataFileError, match=rf"^{tmp_path / FIT_STATE}: no readable 'info' entry"):
            FitState.load(tmp_path)


# ----------------------------------------------------------------------------- inputs whose cost is not their size


def test_npz_whose_arrays_expand_beyond_the_bound_is_refused_unread(tmp_path):
    """A 200-byte compressed .npz declaring an 8 GiB array: refused from its header, nothing allocated."""
    import io
    import zipfile

    from auxseg.contracts.label_folder import LabelFolderError
    from auxseg.contracts.priors import read_prior_topk
    from auxseg.files import DataFileError, read_npz

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (1 << 30,)})
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ids.npy", header.getvalue() + bytes(1000))
    assert bomb.stat().st_size < 1000
    with pytest.raises(DataFileError, match=rf"^{bomb}: its arrays declare 8.0 GiB \(at most 4.0 GiB"):
        read_npz(bomb)
    with pytest.raises(LabelFolderError, match=rf"^{bomb}: its arrays declare 8.0 GiB"):
        read_prior_topk(bomb)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """PIL only warns between its limit and twice it; the project refuses there too (a 10k x 10k PNG is ~100 KB)."""
    from auxseg.images import ImageReadError, read_rgb

    big = tmp_path / "big.png"
    Image.new("L", (10_000, 10_000)).save(big)
    assert big.stat().st_size < 1_000_000
    with pytest.raises(ImageReadError, match=rf"^cannot read image {big}: Image size \(100000000 pixels\) exceeds"):
        read_rgb(big)


def test_mmseg_config_that_does_not_parse_is_one_line(tmp_path, capsys):
    """``finetune.mmseg_config`` is executed by mmengine (docs/reliability.md); a failure names the file."""
    from loop.cli import main

    bad = tmp_path / "broken.py"
    bad.write_text("model = dict(type='EncoderDecoder'\n")
    code = main(["finetune", str(REPO / "configs/finetune/tiny.yaml"), f"mmseg_config={bad}",
                 f"work_dir={tmp_path / 'work'}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert f"finetune.mmseg_config: {bad}: not a valid mmengine config (SyntaxError" in err[0]
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- state files valid but of the wrong shape


@pytest.mark.parametrize("content, found", [
    ("[]", "expected a JSON object, found an array"),
    ("null", "expected a JSON object, found null"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: arrays or objects nested too deeply"),
], ids=["array", "null", "nested-100k-deep"])
def test_manifest_that_is_not_an_object_is_one_line(data, tmp_path, capsys, content, found):
    """Was an AttributeError (``[]``, ``null``) or a RecursionError (``[[[[...``) traceback from auxlabels' resume
    check; read_json_object names the file and what it holds."""
    from loop.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    code = main(["auxlabels", str(TINY), f"image_dir={data / 'val'}", "gt_dir=null", f"out_dir={out}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(err) == 1 and f"{out / 'manifest.json'}: {found}" in err[0], err
    assert (out / "manifest.json").read_text() == content  # left as it was


def test_journal_corrupt_lines_are_named_and_their_images_redone(data, tmp_path, capsys):
    """The journal was parsed line by line with corrupt lines skipped silently; it is now read with read_jsonl:
    a corrupt line mid-file (earlier versions glued a kill's torn line to the next record) and a torn last line
    are each a warning naming file:line, and their images are labelled again."""
    from loop.cli import main

    out = tmp_path / "out"
    args = ["auxlabels", str(TINY), f"image_dir={data / 'val'}", "gt_dir=null", f"out_dir={out}"]
    assert main(args) == 0
    journal = out / "progress.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    journal.write_text(lines[0] + lines[1][:25] + "\n" + "".join(lines[2:]))
    with pytest.warns(UserWarning, match=rf"{journal}:2: not valid JSON .*; skipped: its image is labelled again"):
        assert main(args) == 0
    redone = [json.loads(line)["rel"] for line in journal.read_text().splitlines()[4:]]
    assert redone == [json.loads(lines[1])["rel"]]  # only the image of the bad line was labelled again
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    journal.write_text("".join(lines))

    journal.write_text("".join(lines[:3]) + lines[3][:25])  # torn last line: that image is redone
    with pytest.warns(UserWarning, match=rf"{journal}:4: ignoring a torn last line"):
        assert main(args) == 0
    again = journal.read_text().splitlines()  # the redone image's record replaced the torn line, not glued to it
    assert len(again) == 4 and [json.loads(line)["rel"] for line in again] == [json.loads(x)["rel"] for x in lines]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


# ----------------------------------------------------------------------------- files that are executed


def test_extractor_config_that_does_not_parse_is_one_line(data, tmp_path, capsys):
    """``extractor.config`` (extractor.name=mmseg) is executed by mmengine like ``finetune.mmseg_config``: the
    same wrapper (auxseg.mmseg_compat.read_mmengine_config) makes a failure one line naming the key and the file."""
    from loop.cli import main

    bad = tmp_path / "broken.py"
    bad.write_text("model = dict(type='EncoderDecoder'\n")
    code = main(["auxlabels", str(TINY), f"image_dir={data / 'val'}", "gt_dir=null", f"out_dir={tmp_path / 'out'}",
                 "extractor.name=mmseg", "extractor.layer=decoder", f"extractor.config={bad}"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert f"extractor.config: {bad}: not a valid mmengine config (SyntaxError" in err[0]


def test_study_report_that_is_not_an_object_names_the_file(tmp_path):
    """``auxseg study`` reads its report back for the closing lines with read_json_object, not json.loads."""
    from auxseg.files import DataFileError
    from loop.study_cli import verdicts

    report = tmp_path / "study.json"
    report.write_text("null")
    with pytest.raises(DataFileError, match=rf"^{report}: expected a JSON object, found null$"):
        verdicts(report)
    report.write_text(json.dumps({"differences": {"10%": {"infonce": {"verdict": "no difference"}}}}))
    assert verdicts(report) == ["", "10%: no difference"]
