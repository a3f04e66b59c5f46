"""Checkpoints are data, not code: every checkpoint fusegen loads for resume/test/predict goes
through ``torch.load(weights_only=True)``; one whose pickle would run code is refused, naming the
file, and the code does not run; fusegen's own checkpoints of every family still resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.callbacks import SafeCheckpointIO, UnsafeCheckpointError
from experiments.cli import CONFIG_DIR

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
QUICK = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
SMALL_DATA = ["--data.init_args.num_train", "128", "--data.init_args.num_val", "32", "--data.init_args.num_test", "32"]

GAN_YAML = """
experiment: gan-tiny
trainer: {limit_val_batches: 0}
model:
  class_path: generative.GAN
  init_args:
    generator: {class_path: generative.Generator, init_args: {ngf: 8}}
    discriminator: {class_path: generative.Discriminator, init_args: {ndf: 8}}
    metrics: null
    grid_every_n_epochs: 0
data:
  class_path: datamodules.SyntheticMultimodalDataModule
  init_args: {num_train: 64, num_val: 16, num_test: 16, batch_size: 32}
"""

RL_YAML = """
experiment: rl-tiny
model:
  class_path: rl.REINFORCE
  init_args:
    env_id: CartPole-v1
    policy: {class_path: rl.ActorCritic, init_args: {hidden: [8]}}
    num_envs: 2
    n_steps: 32
    total_timesteps: 100000
    eval_every_steps: 64
    n_eval_episodes: 1
    normalize_obs: true
"""


class Payload:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "global_step": 0,
                "hyper_parameters": {"lr": Payload(marker)}}, path)
    return path, marker


def test_checkpoint_io_refuses_code(evil_ckpt: tuple[Path, Path]):
    path, marker = evil_ckpt
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load checkpoint {path}.*weights_only=True.*open"):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_allowlisted_types_load(tmp_path: Path):
    path = tmp_path / "paths.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"root": tmp_path / "data"}}, path)
    assert SafeCheckpointIO().load_checkpoint(path)["hyper_parameters"]["root"] == tmp_path / "data"


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_cli_refuses_a_checkpoint_that_runs_code(subcommand: str, evil_ckpt: tuple[Path, Path], in_tmp: Path,
                                                 cli_exit):
    path, marker = evil_ckpt
    code, _, err = cli_exit(subcommand, "--config", str(SYNTHETIC), *QUICK, "--ckpt_path", str(path))
    assert code != 0
    assert f"refusing to load checkpoint {path}" in err and "weights_only" in err and "Traceback" not in err
    assert not marker.exists()


def test_resume_last_skips_a_checkpoint_that_runs_code(evil_ckpt: tuple[Path, Path], in_tmp: Path,
                                                       cli_exit):
    path, marker = evil_ckpt
    folder = in_tmp / "runs" / "synthetic-concat" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(path.read_bytes())
    with pytest.warns(UserWarning):  # nothing readable: Lightning's own "no checkpoint" warning is not reached
        code, _, err = cli_exit("fit", "--config", str(SYNTHETIC), *QUICK, "--ckpt_path", "last")
    assert code != 0 and "no readable checkpoint" in err and "last.ckpt (not loadable as data)" in err
    assert not marker.exists()


@pytest.mark.parametrize("family", ["fusion", "gan", "rl"])
def test_own_checkpoints_of_every_family_resume_as_data(family: str, in_tmp: Path, cli_exit):
    if family == "fusion":
        args, experiment = ["--config", str(SYNTHETIC), *SMALL_DATA], "synthetic-concat"
    else:
        (in_tmp / f"{family}.yaml").write_text(GAN_YAML if family == "gan" else RL_YAML)
        args, experiment = ["--config", f"{family}.yaml"], f"{family}-tiny"
    code, _, err = cli_exit("fit", *args, *QUICK, "--trainer.max_epochs", "1")
    assert code == 0, err[-2000:]
    last = in_tmp / "runs" / experiment / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)  # no allowlist needed for the CLI's checkpoints
    code, _, err = cli_exit("fit", *args, *QUICK, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    second = torch.load(last, weights_only=True)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"] > 0


# ----------------------------------------------------------------------------------------------
# A saved model folder (config.json + model.safetensors) is data: the classes it names are checked
# ----------------------------------------------------------------------------------------------

POPEN = {"class_path": "subprocess.Popen", "init_args": {"args": "touch PWNED", "shell": True}}


def shared_folder(folder: Path, config: dict) -> Path:
    """A folder as someone might share it: any config.json beside a valid model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


def legit_config(tmp_path: Path) -> dict:
    from fusion import ConcatFusion, FusionClassifier, LeNetImageEncoder
    from fusion.pretrained import save_pretrained

    model = FusionClassifier(encoders={"image": LeNetImageEncoder(out_dim=8)}, fusion=ConcatFusion, num_classes=3)
    return json.loads((save_pretrained(model, tmp_path / "legit") / "config.json").read_text())


def test_from_pretrained_refuses_a_config_that_names_popen(in_tmp: Path):
    import fusion
    from fusion.pretrained import UntrustedConfigError

    folder = shared_folder(in_tmp / "shared", POPEN)
    with pytest.raises(UntrustedConfigError, match=r"config.json: refusing to load: class_path names "
                                                   r"'subprocess.Popen'.*was not imported and nothing ran"):
        fusion.from_pretrained(folder)
    with pytest.raises(UntrustedConfigError, match="subprocess.Popen"):
        fusion.FusionClassifier.from_pretrained(folder)
    assert not (in_tmp / "PWNED").exists()


@pytest.mark.parametrize("place", ["fusion", "encoder", "list", "callable-string", "own-package-alias"])
def test_from_pretrained_refuses_a_payload_nested_in_init_args(place: str, in_tmp: Path):
    import fusion
    from fusion.pretrained import UntrustedConfigError

    config = legit_config(in_tmp)
    args = config["init_args"]
    if place == "fusion":
        args["fusion"] = POPEN
        named, key = "subprocess.Popen", "init_args.fusion.class_path"
    elif place == "encoder":
        args["encoders"]["image"]["init_args"]["extra"] = POPEN
        named, key = "subprocess.Popen", "init_args.encoders.image.init_args.extra.class_path"
    elif place == "list":
        args["hidden_dims"] = [8, POPEN]
        named, key = "subprocess.Popen", r"init_args.hidden_dims\[1\].class_path"
    elif place == "callable-string":  # what jsonargparse resolves for a callable-typed argument
        args["optimizer"] = "subprocess.getoutput"
        named, key = "subprocess.getoutput", "init_args.optimizer"
    else:  # an allowed prefix reaching a module imported inside fusegen
        args["optimizer"] = {"class_path": "fusion.pretrained.os.system", "init_args": {"command": "touch PWNED"}}
        named, key = r"fusion.pretrained.os.system \(defined in (posix|os)\)", "init_args.optimizer.class_path"
    folder = shared_folder(in_tmp / "shared", config)
    with pytest.raises(UntrustedConfigError, match=rf"refusing to load: {key} names '{named}"):
        fusion.from_pretrained(folder)
    assert not (in_tmp / "PWNED").exists()


def test_a_named_module_is_never_imported(in_tmp: Path, monkeypatch: pytest.MonkeyPatch):
    import sys

    import fusion
    from fusion.pretrained import UntrustedConfigError

    marker = in_tmp / "module-code-ran"
    (in_tmp / "evil_fusegen_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    config = legit_config(in_tmp)
    config["init_args"]["encoders"]["image"] = {"class_path": "evil_fusegen_payload.Thing"}
    with pytest.raises(UntrustedConfigError, match="evil_fusegen_payload.Thing"):
        fusion.from_pretrained(shared_folder(in_tmp / "shared", config))
    assert not marker.exists() and "evil_fusegen_payload" not in sys.modules


def test_a_saved_folder_still_loads_and_a_wrong_class_points_at_the_safe_call(tmp_path: Path):
    import fusion
    from fusion import AudioEncoder, ConcatFusion, FusionClassifier, LeNetImageEncoder

    torch.manual_seed(0)
    model = FusionClassifier(encoders={"image": LeNetImageEncoder(out_dim=8)}, fusion=ConcatFusion,
                             num_classes=3, optimizer=torch.optim.SGD).eval()
    folder = model.save_pretrained(tmp_path / "model")
    again = fusion.from_pretrained(folder)
    batch = {"image": torch.randn(2, 1, 28, 28)}
    torch.testing.assert_close(again(batch), model(batch))
    with pytest.raises(TypeError, match=r"holds a fusion.module.FusionClassifier.*FusionClassifier.from_pretrained"):
        AudioEncoder.from_pretrained(folder)

def test_a_teacher_checkpoint_naming_a_foreign_class_is_refused_before_import(in_tmp: Path,
                                                                                monkeypatch: pytest.MonkeyPatch):
    import sys

    from fusion.distill import load_teacher
    from fusion.pretrained import UntrustedConfigError

    marker = in_tmp / "teacher-code-ran"
    (in_tmp / "evil_teacher_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(in_tmp))
    ckpt = in_tmp / "teacher.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "evil_teacher_payload.Model"}}, ckpt)
    with pytest.raises(UntrustedConfigError, match="evil_teacher_payload.Model"):
        load_teacher(ckpt)
    assert not marker.exists() and "evil_teacher_payload" not in sys.modules
