"""The AV-MNIST results launcher (configs x seeds through `fusegen fit`/`test`) and its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments.benchmarks import fusion_avmnist_report as report
from experiments.benchmarks import fusion_avmnist_results as results


def write_eval(out: Path, run: str, evaluation: str, acc: float, f1: float | None = None) -> None:
    folder = out / "runs" / run / evaluation / "csv" / "version_0"
    folder.mkdir(parents=True)
    f1 = acc if f1 is None else f1
    (folder / "metrics.csv").write_text(f"epoch,step,test/acc,test/f1\n0,0,{acc},{f1}\n")


def args(**kw) -> argparse.Namespace:
    defaults = dict(epochs="3", val_fraction=0.2, train_limit=8000, audio_noise=0.0, sst2_train_limit=4000,
                    validate_only=False, best_val=False, override="", out="unused", threads=1)
    return argparse.Namespace(**{**defaults, **kw})


def test_report_means_and_targets_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture):
    for run, acc in {"avmnist-image-only-s0": 0.66, "avmnist-image-only-s1": 0.67, "avmnist-audio-only-s0": 0.50,
                     "avmnist-multibench-lf-s0": 0.80, "avmnist-multibench-lf-s1": 0.81,
                     "avmnist-concat-s0": 0.84, "avmnist-concat-s1": 0.86, "avmnist-attention-s0": 0.85}.items():
        write_eval(tmp_path, run, "test", acc)
    write_eval(tmp_path, "avmnist-concat-s0", "test-no-audio", 0.60)
    write_eval(tmp_path, "avmnist-concat-s1", "test-no-audio", 0.70)
    (tmp_path / "runs" / "not-a-run").mkdir()  # ignored: no <key>-s<seed> name
    report.main(["--out", str(tmp_path)])
    line = json.loads(capsys.readouterr().out)
    assert line["acc_mean"]["avmnist-concat"] == pytest.approx(85.0)
    assert line["acc_mean"]["avmnist-image-only"] == pytest.approx(66.5)
    assert line["acc_no_audio_mean"] == {"avmnist-concat": pytest.approx(65.0)}
    assert line["best_unimodal"] == pytest.approx(66.5) and line["multibench_lf"] == pytest.approx(80.5)
    # heads 85.0 / 85.0 vs best unimodal 66.5: +18.5 >= 5; best head 85.0 vs LF 80.5: +4.5 >= 3
    assert line["targets"] == {"every_fusion_beats_best_unimodal_by_5": True,
                               "best_fusion_beats_multibench_lf_by_3": True}
    assert line["seeds"]["avmnist-concat"] == [0, 1]
    markdown = (tmp_path / "results.md").read_text()
    assert "| avmnist-concat | `experiments/fusion/avmnist-concat.yaml` | 85.0 ± 1.4 (n=2); 84.0 / 86.0 |" in markdown


def test_report_without_runs_names_the_command(tmp_path: Path):
    with pytest.raises(SystemExit, match="fusion_avmnist_results --out"):
        report.main(["--out", str(tmp_path)])


def test_budget_flags_apply_where_the_data_takes_them():
    avmnist = results.budget("avmnist-concat", args(train_limit=0, audio_noise=3.0))
    assert avmnist == ["--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0.2",
                       "--data.init_args.train_limit", "null", "--data.init_args.audio_noise", "3.0"]
    assert results.budget("sst2-text", args(epochs="config")) == [
        "--trainer.limit_val_batches", "0.2", "--data.init_args.train_limit", "4000"]
    assert results.evaluations("avmnist-concat", args(best_val=True)) == {
        "test": [], "test-no-audio": ["--model.init_args.drop_at_test", "[audio]"],
        "test-no-image": ["--model.init_args.drop_at_test", "[image]"], "test-best-val": []}
    assert list(results.evaluations("avmnist-image-only", args(validate_only=True))) == ["validate"]


def test_a_finished_run_is_not_run_again(tmp_path: Path):
    for evaluation in ("test", "test-no-audio", "test-no-image"):
        write_eval(tmp_path, "avmnist-concat-s0", evaluation, 0.8)
    assert results.run_one("avmnist-concat", 0, args(out=str(tmp_path))) == "done already"


@pytest.mark.slow
def test_launcher_and_report_end_to_end_on_synthetic_data(tmp_path: Path, capsys: pytest.CaptureFixture):
    small = "--data.init_args.num_train 128 --data.init_args.num_val 64 --data.init_args.num_test 64"
    argv = ["--only", "synthetic-concat", "--seeds", "0", "--epochs", "1", "--val-fraction", "1.0", "--best-val",
            "--out", str(tmp_path), f"--override={small}"]
    results.main(argv)
    first = json.loads(capsys.readouterr().out)
    assert first["runs"] == {"synthetic-concat-s0": first["runs"]["synthetic-concat-s0"]} and not first["failed"]
    run = tmp_path / "runs" / "synthetic-concat-s0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and list(run.glob("checkpoints/best-val-*.ckpt"))
    assert (run / "test" / "pictures" / "confusion_matrix.png").is_file()
    results.main(argv)  # resumable: the same command finds the run finished
    assert json.loads(capsys.readouterr().out)["runs"] == {"synthetic-concat-s0": "done already"}
    report.main(["--out", str(tmp_path)])
    line = json.loads(capsys.readouterr().out)
    assert 0.0 <= line["acc_mean"]["synthetic-concat"] <= 100.0
    assert set(line["acc_best_val_mean"]) == set(line["acc_no_audio_mean"]) == {"synthetic-concat"}
