"""Outputs stay inside their output folder: links under it that lead out, and output folders overlapping inputs.

Every stage names its output folder to ``auxseg.paths.check_separate`` before its first write; that check
refuses an input folder overlapping it and any symbolic link under it that resolves outside it
(``check_contained``), whatever the link is called. Each stage case runs the real command in-process, checks
the exit code, that stderr holds one line naming the link, and that nothing landed at the link's target.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_runs import TINY_PIPELINE

from auxseg.paths import UnsafePathError, check_contained, check_separate
from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset
from loop.cli import main

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_LP = REPO / "configs/pretrain/local_prediction.yaml"
FINETUNE_TINY = REPO / "configs/finetune/tiny.yaml"
PIPELINE_DEMO = REPO / "configs/pipeline/demo.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"),
                                  SyntheticSpec(num_train=2, num_val=2, height=32, width=40, seed=3))


def _link(link: Path, target: Path) -> Path:
    """``link`` -> ``target`` (a folder, made if missing); returns the target."""
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return target


def _one_error_line(capsys, code: int, expected_code: int = 1) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == expected_code and len(err) == 1, err
    return err[0]


def _pretrain_images(data: Path, out: Path, *more: str) -> list[str]:
    """The label-free objective on a plain image folder (data.source=images): the linear model, one step."""
    return ["pretrain", str(PRETRAIN_LP), f"data.images={data / 'train'}", f"out_dir={out}", "data.batch_size=2",
            "data.num_workers=0", "augment.crop=[24,24]", "augment.out_size=24", "train.max_iters=1",
            "train.progress=false", "train.tensorboard=false", "loss.local_prediction.locations=16", *more]


# ----------------------------------------------------------------------------- links that lead out of the folder


def test_pretrain_does_not_write_labels_through_a_linked_subfolder(data, tmp_path, capsys):
    """The reported case: out_dir/unlabelled/labels -> ../../elsewhere received 0000.png."""
    out = tmp_path / "out"
    elsewhere = _link(out / "unlabelled" / "labels", tmp_path / "elsewhere")
    line = _one_error_line(capsys, main(_pretrain_images(data, out)))
    assert f"out_dir: {out / 'unlabelled' / 'labels'} is a symbolic link to {elsewhere}, outside {out}" in line
    assert list(elsewhere.iterdir()) == []


def test_pretrain_does_not_write_its_console_log_through_a_link(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "console.log").symlink_to(tmp_path / "elsewhere" / "log.txt")
    line = _one_error_line(capsys, main(_pretrain_images(data, out)))
    assert f"{out / 'console.log'} is a symbolic link; refusing to write through it" in line
    assert not (tmp_path / "elsewhere" / "log.txt").exists()


def test_finetune_does_not_write_through_a_linked_subfolder(data, tmp_path, capsys):
    work = tmp_path / "work"
    elsewhere = _link(work / "vis_data", tmp_path / "elsewhere")
    line = _one_error_line(capsys, main(["finetune", str(FINETUNE_TINY), f"data_root={data}", f"work_dir={work}"]))
    assert f"work_dir: {work / 'vis_data'} is a symbolic link to {elsewhere}" in line
    assert list(elsewhere.iterdir()) == []
    assert {p.name for p in work.iterdir()} <= {"vis_data", "console.log"}  # the failed step's line, nothing else


@pytest.mark.parametrize("sub", ["figures", "data"])
def test_pipeline_does_not_write_through_a_linked_subfolder(tmp_path, capsys, sub):
    work = tmp_path / "work"
    elsewhere = _link(work / sub, tmp_path / "elsewhere")
    line = _one_error_line(capsys, main(["pipeline", str(PIPELINE_DEMO), f"work_dir={work}", *TINY_PIPELINE]))
    assert f"work_dir: {work / sub} is a symbolic link to {elsewhere}" in line
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in work.iterdir()) == [sub]


def test_study_does_not_write_through_a_linked_subfolder(tmp_path, capsys):
    # the study's own report and figures go to its work_dir, beside the cells it runs
    work = tmp_path / "work"
    elsewhere = _link(work / "study_figures", tmp_path / "elsewhere")
    line = _one_error_line(capsys, main(["study", str(REPO / "configs/study/tiny.yaml"), f"work_dir={work}"]))
    assert f"work_dir: {work / 'study_figures'} is a symbolic link to {elsewhere}" in line
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in work.iterdir()) == ["study_figures"]


def test_pretrain_export_does_not_write_through_a_linked_subfolder(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_pretrain_images(data, out)) == 0
    capsys.readouterr()
    export = tmp_path / "export"
    elsewhere = _link(export / "old", tmp_path / "elsewhere")
    line = _one_error_line(capsys, main(["pretrain", "--export", str(out / "checkpoints" / "iter_0000001.pth"),
                                         "--out", str(export)]))
    assert f"--out: {export / 'old'} is a symbolic link to {elsewhere}" in line
    assert list(elsewhere.iterdir()) == [] and [p.name for p in export.iterdir()] == ["old"]


def test_check_contained_covers_any_name_and_allows_links_that_stay_inside(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    (out / "inside").symlink_to(out / "a", target_is_directory=True)  # stays inside: fine
    (out / "a" / "again").symlink_to(out / "a" / "b", target_is_directory=True)
    (tmp_path / "alias").symlink_to(out, target_is_directory=True)  # the folder itself may be a link
    check_contained(out, "out_dir")
    check_contained(tmp_path / "alias", "out_dir")
    check_contained(tmp_path / "not_yet", "out_dir")  # nothing written yet
    (out / "a" / "b" / "loop").symlink_to(out / "a" / "b" / "loop")  # a link loop: nothing can be written through
    check_contained(out, "out_dir")
    (out / "a" / "b" / "w.pth").symlink_to(tmp_path / "victim.pth")  # a dangling file link, deep down
    with pytest.raises(UnsafePathError, match=rf"^out_dir: {out / 'a' / 'b' / 'w.pth'} is a symbolic link to "
                                              rf"{tmp_path / 'victim.pth'}, outside {out}; "):
        check_contained(out, "out_dir")
    with pytest.raises(UnsafePathError, match=r"is a symbolic link to .*victim\.pth"):
        check_separate(tmp_path / "alias", "out_dir", {})  # every stage's check includes it


@pytest.mark.parametrize("writer", ["groundtruth", "unlabelled", "priors"])
def test_label_folder_writers_do_not_follow_a_linked_subfolder(data, tmp_path, writer):
    """The writers themselves refuse too, for callers that are not a stage (tools, tests)."""
    from auxseg.contracts.label_folder import write_groundtruth_label_folder
    from auxseg.contracts.priors import write_label_priors
    from pretrain.data import write_unlabelled_label_folder

    out = tmp_path / "folder"
    if writer == "priors":
        write_groundtruth_label_folder(data, out, num_classes=6)
    sub = "priors" if writer == "priors" else "labels"
    elsewhere = _link(out / sub, tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="would be written outside"):
        if writer == "groundtruth":
            write_groundtruth_label_folder(data, out, num_classes=6)
        elif writer == "unlabelled":
            write_unlabelled_label_folder(data / "train", out)
        else:
            write_label_priors(out)
    assert list(elsewhere.iterdir()) == []


# ----------------------------------------------------------------------------- output folders overlapping inputs


def test_pretrain_out_dir_inside_the_image_folder_is_refused(data, tmp_path, capsys):
    out = data / "train" / "pretrain_out"
    line = _one_error_line(capsys, main(_pretrain_images(data, out)))
    assert f"out_dir: {out} lies inside the input folder data.images={data / 'train'}" in line
    assert not out.exists()


def test_finetune_work_dir_inside_data_root_is_refused(data, capsys):
    work = data / "work"
    line = _one_error_line(capsys, main(["finetune", str(FINETUNE_TINY), f"data_root={data}", f"work_dir={work}"]))
    assert f"work_dir: {work} lies inside the input folder data_root={data}" in line
    assert not work.exists()


def test_pipeline_work_dir_containing_data_root_is_refused(data, capsys):
    work = data.parent
    line = _one_error_line(capsys, main(["pipeline", str(PIPELINE_DEMO), f"work_dir={work}", *TINY_PIPELINE,
                                         "data.synthetic=null", f"data.root={data}"]))
    assert f"work_dir: {work} contains the input folder data.root={data}" in line
    assert not (work / "config.yaml").exists()
