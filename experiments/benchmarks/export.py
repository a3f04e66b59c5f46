"""PyTorch eager vs onnxruntime CPU latency for one exported model and batch.

    python -m experiments.benchmarks.export                                    # AV-MNIST attention fusion
    python -m experiments.benchmarks.export --config experiments/ship/sst2-minilm-finetune.yaml \
        --ckpt_path runs/sst2-minilm-finetune/checkpoints/last.ckpt --threads 1 --repeats 30

Exports the config's fusion model (trained weights with ``--ckpt_path``; latency does not depend on
them) to ONNX with ``fusion.export``, checks it (max abs difference <= 1e-4), then times eager
PyTorch and onnxruntime on the same real test batch of 32 and of 1, in alternation (medians over
``--repeats``; intra-op threads ``--threads`` for both). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from fusion import export as fe
from fusion.explain import select_first

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "experiments/fusion/avmnist-attention.yaml"))
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    from experiments.cli import FusegenCLI

    cli = FusegenCLI(args=["--config", args.config, *overrides, "--trainer.logger", "false"], run=False)
    model = cli.model.eval()
    if args.ckpt_path:
        from experiments.callbacks import load_checkpoint_as_data

        model.load_state_dict(load_checkpoint_as_data(args.ckpt_path, map_location="cpu")["state_dict"])
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("test")
    loader = iter(dm.test_dataloader())
    batch = next(loader)
    while len(batch["label"]) < 32:  # small test batches: take the next one
        nxt = next(loader)
        batch = {k: (torch.cat([batch[k], nxt[k]]) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    result = {"benchmark": "export", "config": os.path.relpath(args.config, REPO), "threads": args.threads,
              "repeats": args.repeats, "model": type(model).__name__}
    with tempfile.TemporaryDirectory() as folder:
        started = time.time()
        ex = fe.fusion_exportable(model, select_first(batch, 32))
        path, diff = fe.export_and_check(ex, Path(folder) / "model.onnx")
        result.update(export_seconds=round(time.time() - started, 1), max_abs_diff=diff)
        session = fe.onnx_session(path, threads=args.threads)
        for rows in (32, 1):
            small = fe.fusion_exportable(model, select_first(batch, rows))
            feeds = {n: x.numpy() for n, x in zip(small.input_names, small.inputs)}
            times: dict[str, list[float]] = {"eager": [], "onnxruntime": []}
            run = {"eager": lambda s=small: s.module(*s.inputs), "onnxruntime": lambda f=feeds: session.run(None, f)}
            with torch.no_grad():
                for fn in run.values():
                    fn()
                for _ in range(args.repeats):
                    for k, fn in run.items():
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            result[f"eager_ms_b{rows}"] = round(1000 * med["eager"], 3)
            result[f"onnxruntime_ms_b{rows}"] = round(1000 * med["onnxruntime"], 3)
            result[f"speedup_b{rows}"] = round(med["eager"] / med["onnxruntime"], 2)
    result["load_average"] = os.getloadavg()
    result["note"] = "shared machine: 2 cores for 8 engineers; eager and onnxruntime timed in alternation"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
