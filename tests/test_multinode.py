"""Multi-node by config: two torchrun "nodes" on this machine train one model.

This mirrors the cluster recipe in docs/scale.md: one `torchrun` per node with a c10d rendezvous,
`--trainer.num_nodes 2` and the DDP preset; here each node has one CPU process (gloo).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import CONFIG_DIR, main
from experiments.scale import is_transformer_layer, transformer_layer_policy

SYNTHETIC = CONFIG_DIR / "fusion" / "synthetic-concat.yaml"
PRESETS = CONFIG_DIR / "presets"

PROBE = '''
import torch
import pytorch_lightning as pl


class SaveWeights(pl.Callback):
    """Each rank writes its own copy of the weights after fit, so the test can compare them."""

    def on_fit_end(self, trainer, pl_module):
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
                   f"weights-rank{trainer.global_rank}-node{trainer.node_rank}.pt")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
@pytest.mark.slow  # ~30 s: two torchrun launchers; the default suite runs 2-process DDP via tests/test_cli.py
def test_two_torchrun_nodes_train_one_model(in_tmp: Path) -> None:
    (in_tmp / "probe.py").write_text(PROBE)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(in_tmp)}
    fit = ["-m", "experiments.cli", "fit", "--config", str(SYNTHETIC), "--config", str(PRESETS / "ddp-cpu.yaml"),
           "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.max_epochs", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--data.init_args.num_train", "256", "--data.init_args.num_val", "64", "--data.init_args.num_test", "64",
           "--trainer.callbacks+=probe.SaveWeights", "--experiment", "two-nodes"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
                               "--rdzv-id", "fusegen-test", *fit],
                              cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=540)[0] for n in nodes]
    for node, out in zip(nodes, outs):
        assert node.returncode == 0, out[-4000:]
    files = sorted(in_tmp.glob("weights-rank*.pt"))
    assert [f.name for f in files] == ["weights-rank0-node0.pt", "weights-rank1-node1.pt"]
    a, b = (torch.load(f, weights_only=True) for f in files)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (in_tmp / "runs" / "two-nodes" / "checkpoints" / "last.ckpt").is_file()


def test_presets_parse_with_their_timeout() -> None:
    for name in ("ddp.yaml", "ddp-cpu.yaml", "fsdp.yaml"):
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(SYNTHETIC), "--config", str(PRESETS / name), "--print_config"])
        assert exit_info.value.code in (0, None), name
        strategy = yaml.safe_load(out.getvalue())["trainer"]["strategy"]
        assert strategy["init_args"]["timeout"] in ("0:05:00", "5:00", 300, "00:05:00"), (name, strategy)


def test_fsdp_policy_wraps_each_transformer_block_only() -> None:
    from fusion import TransformerTextEncoder

    encoder = TransformerTextEncoder(config={"num_hidden_layers": 3})
    wrapped = [name for name, m in encoder.named_modules() if transformer_layer_policy(m, False, 0)]
    assert wrapped == ["model.encoder.layer.0", "model.encoder.layer.1", "model.encoder.layer.2"]
    assert transformer_layer_policy(encoder, True, 0)  # descend into everything
    assert is_transformer_layer(torch.nn.TransformerEncoderLayer(8, 2))
    assert not is_transformer_layer(torch.nn.Linear(2, 2))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="FSDP needs 2 GPUs")
def test_fsdp_preset_fast_dev_run_on_gpus(in_tmp: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "fit", "--config", str(SYNTHETIC),
                           "--config", str(PRESETS / "fsdp.yaml"), "--trainer.fast_dev_run", "2",
                           "--trainer.devices", "2"], cwd=in_tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
