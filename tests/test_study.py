"""``auxseg study``: the statistics against scipy on fixed inputs, the tiny preset end to end, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from auxseg.config import ConfigError
from loop.study import load_study
from loop.study_stats import instability, loss_not_falling, paired_difference, summarise, variance_components

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "study" / "tiny.yaml"


# ----------------------------------------------------------------------------- statistics, against scipy


def test_summary_is_scipys_t_interval():
    x = [24.52, 25.02, 26.91, 27.55, 23.11]
    s = summarise(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (s.n, s.mean, s.sd) == (5, pytest.approx(np.mean(x)), pytest.approx(np.std(x, ddof=1)))
    assert (s.low, s.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert summarise([3.0]).as_dict() == {"n": 1, "mean": 3.0, "sd": None, "ci95": None}


def test_paired_difference_is_scipys_ttest_rel():
    arm, ref = [26.41, 26.95, 27.1, 26.9], [25.02, 24.70, 25.3, 25.5]
    d = paired_difference(arm, ref, "fine-tune seed")
    test = stats.ttest_rel(arm, ref)
    low, high = test.confidence_interval(0.95)
    d_np = np.subtract(arm, ref)
    assert d.mean == pytest.approx(d_np.mean()) and d.p_value == pytest.approx(test.pvalue)
    assert (d.low, d.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    # the interval by hand: mean +- t(0.975, n-1) * sd / sqrt(n)
    half = stats.t.ppf(0.975, 3) * d_np.std(ddof=1) / 2
    assert d.low == pytest.approx(d_np.mean() - half) and d.distinguishable
    assert "arm is above the reference" in d.verdict("arm", "ref")


def test_interval_containing_zero_is_not_distinguishable():
    d = paired_difference([25.0, 26.0, 24.0], [25.5, 24.5, 25.0], "pre-training seed")
    assert d.low < 0 < d.high and not d.distinguishable
    assert d.verdict("infonce", "none").endswith("not distinguishable from the reference (the interval contains 0).")
    single = paired_difference([26.0], [25.0], "fine-tune seed")
    assert single.low is None and "single pair" in single.verdict("a", "b") and not single.distinguishable
    with pytest.raises(ValueError, match="pairs need equal"):
        paired_difference([1.0, 2.0], [1.0], "x")


def test_variance_components_recover_a_known_design():
    """Additive grid without residual: row effects (pre-training) +-2, column effects (fine-tune) +-1."""
    rows, cols = np.array([-2.0, 0.0, 2.0]), np.array([-1.0, 1.0])
    grid = 25.0 + rows[:, None] + cols[None, :]
    c = variance_components(grid.tolist())
    assert c["variance"]["residual"] == pytest.approx(0.0, abs=1e-12)
    assert c["variance"]["pretrain_seed"] == pytest.approx(np.var(rows, ddof=1))  # 4
    assert c["variance"]["finetune_seed"] == pytest.approx(np.var(cols, ddof=1))  # 2
    assert c["share"]["pretrain_seed"] == pytest.approx(4 / 6) and c["shape"] == [3, 2]
    assert variance_components([[1.0, 2.0]]) is None  # one pre-training seed: nothing to split


def test_flags():
    curve = [{"iter": 100, "mIoU": 30.0}, {"iter": 200, "mIoU": 25.0}, {"iter": 300, "mIoU": 29.0},
             {"iter": 400, "mIoU": 24.0}]
    flags = instability(curve, 400)
    assert flags[0].startswith("best early (iteration 100: 30.00, final 24.00)") and flags[1].startswith("oscillates")
    assert instability([{"iter": 200, "mIoU": 20.0}, {"iter": 400, "mIoU": 21.0}], 400) == []
    assert loss_not_falling([5.0, 4.0, 3.0, 2.0]) is None
    assert loss_not_falling([5.0, 5.1, 5.2, 5.3]) == "loss not falling (5.000 -> 5.300)"


def test_label_quality_order_is_scipys_spearman():
    from loop.study_report import _pmiou_order

    arms = {"none": {"mean": 24.0}, "a": {"pmiou": 30.0, "mean": 26.0}, "b": {"pmiou": 20.0, "mean": 27.0},
            "c": {"pmiou": 10.0, "mean": 25.0}}
    rho = stats.spearmanr([30.0, 20.0, 10.0], [26.0, 27.0, 25.0]).statistic
    assert _pmiou_order(arms) == ["", "Order by PmIoU of the labels: a > b > c. Order by mean mIoU: b > a > c. "
                                      f"Spearman rank correlation over 3 arms: {rho:.2f}."]
    assert _pmiou_order({"a": arms["a"], "b": arms["b"]}) == []  # two arms: no correlation worth stating


def test_pseudo_label_curve_is_the_mean_over_runs():
    from loop.study_report import _consistency_table, _pseudo_label_curve

    def run(mask, acc):
        return {"consistency": {"method": "unimatch", "history": [
            {"iter": 50, "mask_ratio": 0.0, "pseudo_acc_all": 0.5},
            {"iter": 100, "mask_ratio": mask, "pseudo_acc": acc, "pseudo_acc_all": 0.7}]}}

    curve = _pseudo_label_curve([run(0.1, 0.9), run(0.3, 1.0)])
    assert curve == [{"iter": 50, "mask_ratio": 0.0, "pseudo_acc_all": 0.5},
                     {"iter": 100, "mask_ratio": pytest.approx(0.2), "pseudo_acc": pytest.approx(0.95),
                      "pseudo_acc_all": pytest.approx(0.7)}]
    table = _consistency_table({"none": {}, "unimatch": {"consistency": curve}})
    assert table[-2:] == ["| unimatch | 50 | 0.0% | - | 50.0% |", "| unimatch | 100 | 20.0% | 95.0% | 70.0% |"]


def test_study_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="reference: 'nope' is not one of the arms"):
        load_study(TINY, ["reference=nope"])
    with pytest.raises(ConfigError, match="may not change the data"):
        load_study(TINY, ["arms=[{name: none, pretrain: false}, {name: x, overrides: [labelled.num_images=2]}]"])
    with pytest.raises(ConfigError, match=r"pretrain_seeds\[0\]: must be >= 0"):
        load_study(TINY, ["pretrain_seeds=[-1]"])


# ----------------------------------------------------------------------------- the tiny preset, end to end


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    from loop.cli import main

    work = tmp_path_factory.mktemp("study") / "a"
    assert main(["study", str(TINY), f"work_dir={work}"]) == 0
    return work


def test_plan_lists_shared_steps(finished_study, capsys):
    from loop.cli import main

    assert main(["study", str(TINY), f"work_dir={finished_study}", "--plan"]) == 0
    out = capsys.readouterr().out
    # 2 segmenters (also the 'none' arm's runs), 1 label folder, 2 pre-trainings, 4 fine-tunes
    assert out.startswith("9 steps, 9 finished, 0 to run; 6 runs in the report (2 arms)")
    assert len(list((finished_study / "cells").glob("*/step.json"))) == 9


def test_report_numbers_are_scipys_on_the_runs_files(finished_study):
    data = json.loads((finished_study / "study.json").read_text())
    runs = data["runs"]
    assert len(runs) == 6 and {r["arm"] for r in runs} == {"none", "infonce"}
    for r in runs:  # every number comes from the run's own results.json
        results = json.loads((finished_study / r["config"]).parent.joinpath("results.json").read_text())
        assert r["mIoU"] == results["mIoU"] and (finished_study / r["checkpoint"]).is_file()
    score = {(r["arm"], r["pretrain_seed"], r["finetune_seed"]): r["mIoU"] for r in runs}
    arm = [score[("infonce", p, f)] for p in (0, 1) for f in (0, 1)]
    low, high = stats.t.interval(0.95, 3, loc=np.mean(arm), scale=stats.sem(arm))
    assert data["arms"]["default"]["infonce"]["ci95"] == pytest.approx([low, high])
    # the paired difference: one pair per pre-training seed (its mean over fine-tune seeds) against the reference
    per_seed = [np.mean([score[("infonce", p, f)] - score[("none", None, f)] for f in (0, 1)]) for p in (0, 1)]
    diff = data["differences"]["default"]["infonce"]
    expected = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    assert diff["unit"] == "pre-training seed" and diff["ci95"] == pytest.approx(list(expected))
    runs_only = stats.ttest_rel(arm, [score[("none", None, f)] for _ in (0, 1) for f in (0, 1)])
    assert diff["per_run"]["ci95"] == pytest.approx(list(runs_only.confidence_interval(0.95)))
    text = (finished_study / "study.md").read_text()
    assert diff["verdict"] in text and "| infonce | 4 |" in text
    assert (finished_study / "study_figures" / "runs.png").is_file() and "](study_figures/runs.png)" in text


def test_report_carries_per_class_iou_and_label_quality(finished_study):
    """Per-class IoU is the mean of the runs' results.json values; PmIoU is the auxiliary-label step's own."""
    data = json.loads((finished_study / "study.json").read_text())
    arm = data["arms"]["default"]["infonce"]
    runs = [json.loads((finished_study / r["config"]).parent.joinpath("results.json").read_text())
            for r in data["runs"] if r["arm"] == "infonce"]
    for name, value in arm["per_class_iou"].items():
        values = [r["per_class_iou"][name] for r in runs]
        assert value == (None if None in values else pytest.approx(np.mean(values)))
    aux = {json.loads((finished_study / "cells" / r["pretrain"]["cell"] / "cell.json").read_text())["deps"][0]
           for r in data["runs"] if r["arm"] == "infonce"}
    assert len(aux) == 1  # one label folder serves both pre-training seeds
    assert arm["pmiou"] == json.loads((finished_study / "cells" / aux.pop() / "pmiou.json").read_text())["pmiou"]
    assert "pmiou" not in data["arms"]["default"]["none"] and "mIoU_r" not in arm
    text = (finished_study / "study.md").read_text()
    assert "| arm | runs | mIoU mean ± sd [95% CI] | PmIoU of its labels | overrides |" in text
    assert f"| infonce | 4 | {arm['mean']:.2f}" in text and f"{arm['pmiou']:.2f} |" in text
    assert "IoU per class (%, mean over the arm's runs):" in text


def test_a_killed_study_resumes_to_the_same_report(finished_study, tmp_path):
    """kill -9 mid-study, rerun: finished steps are reused, the half-written one is redone from scratch, and
    study.json is the same as the uninterrupted study's."""
    from loop.cli import main

    work = tmp_path / "b"
    env = dict(os.environ, OMP_NUM_THREADS=str(__import__("torch").get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "loop", "study", str(TINY), f"work_dir={work}"], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list((work / "cells").glob("*/step.json"))) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((work / "cells").glob("*/step.json")))
    assert 4 <= done < 9, done
    assert main(["study", str(TINY), f"work_dir={work}"]) == 0
    assert json.loads((work / "study.json").read_text()) == json.loads((finished_study / "study.json").read_text())


def test_a_study_without_pre_training_says_so(finished_study, tmp_path):
    """An arms list with no pre-training arm: the header names no pre-training seeds (the fine-tunes are reused)."""
    import shutil

    from loop.cli import main

    work = shutil.copytree(finished_study, tmp_path / "c", symlinks=True)
    assert main(["study", str(TINY), f"work_dir={work}", "arms=[{name: none, pretrain: false}]"]) == 0
    header = (work / "study.md").read_text().splitlines()[2]
    assert "no arm pre-trains, fine-tune seeds [0, 1]" in header and "pre-training seeds" not in header
