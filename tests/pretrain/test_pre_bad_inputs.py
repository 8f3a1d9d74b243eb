"""Bad inputs of the pre-training stage: a label folder whose manifest does not describe its files, a resume
from another label set, a torn log line. Each is a one-line error naming the file or key, before training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from auxseg.checkpoint_io import CheckpointError
from auxseg.contracts.label_folder import LabelFolderError, read_label_folder
from pretrain.train import run


def _copy(folder, tmp_path, **manifest_changes):
    """A copy of the label folder with some manifest keys changed."""
    out = tmp_path / "labels"
    shutil.copytree(folder, out)
    m = json.loads((out / "manifest.json").read_text())
    m.update(manifest_changes)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_labels": 3}, r"labels/.*\.png: label value [345] is outside 0\.\.2 and is not the ignore value 255"),
    ({"ignore_index": 0}, r"manifest\.json: ignore_index 0 and num_labels 6 do not fit dtype uint8"),
    ({"num_labels": "seventeen"}, r"manifest\.json: num_labels must be an integer >= 1, got 'seventeen'"),
    ({"num_labels": True}, r"manifest\.json: num_labels must be an integer >= 1, got True"),
    ({"dtype": "float32"}, r"manifest\.json: dtype 'float32' is not 'uint8' or 'uint16'"),
    ({"scope": "local"}, r"manifest\.json: scope 'local' is not 'global' or 'image'"),
    ({"images": "a.png"}, r"manifest\.json: images must be a list of relative paths"),
    ({"complete": False}, r"manifest\.json: the label folder is incomplete"),
    ({"format": "auxseg.auxlabels/9"}, r"manifest\.json: format 'auxseg.auxlabels/9'"),
])
def test_a_manifest_that_does_not_describe_its_labels_is_refused(gt_label_folder, tmp_path, changes, message):
    folder = _copy(gt_label_folder, tmp_path, **changes)
    with pytest.raises(LabelFolderError, match=message) as err:
        read_label_folder(folder)
    assert "\n" not in str(err.value)


def test_centroids_must_have_one_row_per_label(gt_label_folder, tmp_path):
    folder = _copy(gt_label_folder, tmp_path)
    np.save(folder / "centroids.npy", np.zeros((4, 8), np.float32))
    with pytest.raises(LabelFolderError, match=r"centroids\.npy: 4 centroids, but the manifest says num_labels=6"):
        read_label_folder(folder)


def test_training_stops_before_any_step_on_a_bad_folder(gt_label_folder, tmp_path, tiny_config):
    folder = _copy(gt_label_folder, tmp_path, num_labels=3)
    with pytest.raises(LabelFolderError, match="outside 0..2"):
        run(tiny_config(tmp_path / "run", folder))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "log.jsonl").exists()


def test_resume_from_another_label_folder_is_refused(gt_label_folder, tmp_path, tiny_config):
    run(tiny_config(tmp_path / "run", gt_label_folder, "train.max_iters=4", "train.stop_at=2"))
    other = _copy(gt_label_folder, tmp_path)
    first = sorted((other / "labels").rglob("*.png"))[0]
    from auxseg.images import read_label, write_label_png

    lab = read_label(first).copy()
    lab[0, 0] = (int(lab[0, 0]) + 1) % 6
    write_label_png(first, lab)
    from auxseg.contracts.label_folder import compute_labels_sha256

    m = json.loads((other / "manifest.json").read_text())
    m["labels_sha256"] = compute_labels_sha256(other / "labels", m["images"])
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=r"iter_0000002\.pth: it was trained on another label set"):
        run(tiny_config(tmp_path / "run", other, "train.max_iters=4"))


def test_a_torn_last_log_line_does_not_block_the_resume(gt_label_folder, tmp_path, tiny_config):
    common = ["train.max_iters=4", "train.checkpoint_every=2", "train.log_every=1"]
    run(tiny_config(tmp_path / "run", gt_label_folder, *common, "train.stop_at=2"))
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"iter": 3, "loss": 4.')  # what kill -9 in the middle of a write leaves
    with pytest.warns(UserWarning, match="torn last line"):
        run(tiny_config(tmp_path / "run", gt_label_folder, *common))
    assert [json.loads(line)["iter"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
