"""Smaller, faster models after (or during) training: int8 quantisation and magnitude pruning.

* ``quantize_int8(model, backend)``: post-training dynamic int8 quantisation of the ``nn.Linear``
  layers (weights int8 ahead of time, activations quantised per batch on the fly; no calibration
  data). ``backend="ao"`` is ``torch.ao.quantization.quantize_dynamic`` (fbgemm/qnnpack kernels),
  ``backend="torchao"`` is torchao's ``Int8DynamicActivationInt8WeightConfig``. On this project's
  CPU the ``ao`` kernels were the faster of the two (``experiments/benchmarks/compress.py`` measures
  both), so it is the default.
* ``ScheduledPruning``: Lightning's ``ModelPruning`` callback doing global L1 (magnitude) pruning
  of the Linear/Conv weights (not ``MultiheadAttention.out_proj``, which is never called) on a
  gradual schedule (Zhu & Gupta 2017: sparsity rises as a cubic
  from 0 to ``final_sparsity`` between ``start_epoch`` and ``end_epoch``), made permanent at the
  end of training and in every checkpoint (no ``*_orig``/``*_mask`` tensors are saved).
* ``parameter_count``, ``sparsity``, ``size_on_disk``: the figures a compression table reports.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelPruning
from torch import nn

from datamodules.checks import check_choice, check_int, check_real

BACKENDS = ("ao", "torchao")
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def quantize_int8(model: nn.Module, backend: str = "ao") -> nn.Module:
    """A copy of ``model`` (in eval mode, on CPU) with dynamic int8 Linear layers."""
    check_choice("backend", backend, BACKENDS, prefix="")
    model = copy.deepcopy(model).cpu().eval()
    if backend == "ao":
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def parameter_count(model: nn.Module, nonzero: bool = False) -> int:
    """Parameters (``nonzero``: only the non-zero ones, what pruning leaves)."""
    return sum(int((p != 0).sum()) if nonzero else p.numel() for p in model.parameters())


def _not_called(model: nn.Module) -> set[int]:
    """Linear layers whose weight is read without calling them (``MultiheadAttention.out_proj``): a
    pruning mask is applied in a forward pre-hook, so these cannot be pruned."""
    return {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    skip = _not_called(model)
    return [(m, "weight") for m in model.modules()
            if isinstance(m, PRUNABLE) and getattr(m, "weight", None) is not None and id(m) not in skip]


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the Linear/Conv weights (the pruned tensors)."""
    weights = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def size_on_disk(model: nn.Module, sparse: bool = False) -> int:
    """Bytes of ``torch.save(state_dict)``. ``sparse``: pruned weights stored as sparse COO tensors
    (only the non-zeros and their indices), which is where pruning saves disk space."""
    state = model.state_dict()
    if sparse:
        state = {k: (v.to_sparse() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 1
                     and float((v == 0).float().mean()) > 0.5 else v) for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def cubic_sparsity(epoch: int, final_sparsity: float, start_epoch: int, end_epoch: int) -> float:
    """Zhu & Gupta's gradual schedule: ``s_f (1 - (1 - progress)^3)``, reaching ``s_f`` at ``end_epoch``."""
    if epoch < start_epoch:
        return 0.0
    if epoch >= end_epoch:
        return final_sparsity
    progress = (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


class ScheduledPruning(ModelPruning):
    """Global magnitude pruning of Linear/Conv weights on a gradual schedule (see module doc).

    At the end of each training epoch ``e`` the sparsity of the pruned weights is brought to
    ``cubic_sparsity(e, ...)``: Lightning's ``ModelPruning`` takes the fraction of the *remaining*
    weights to remove, which is ``(s_e - s_{e-1}) / (1 - s_{e-1})``.

    Args:
        final_sparsity: fraction of the Linear/Conv weights that are zero at the end, in [0, 1).
        start_epoch / end_epoch: the schedule's first and last pruning epochs (``end_epoch`` is
            clipped to the run's last epoch, so short runs still reach ``final_sparsity``).
        verbose: 0 silent, 1 print the sparsity after each pruning step.
    """

    def __init__(self, final_sparsity: float = 0.5, start_epoch: int = 0, end_epoch: int = 5,
                 verbose: int = 0) -> None:
        check_real("final_sparsity", final_sparsity, 0.0, 1.0, high_open=True, prefix="trainer.callbacks.")
        check_int("start_epoch", start_epoch, 0, prefix="trainer.callbacks.")
        check_int("end_epoch", end_epoch, start_epoch, prefix="trainer.callbacks.")
        self.final_sparsity, self.start_epoch, self.end_epoch = final_sparsity, start_epoch, end_epoch
        self.reached = 0.0
        super().__init__("l1_unstructured", amount=self._amount, use_global_unstructured=True,
                         make_pruning_permanent=True, apply_pruning=True, prune_on_train_epoch_end=True,
                         verbose=verbose)

    def target(self, epoch: int, last_epoch: int | None = None) -> float:
        end = self.end_epoch if last_epoch is None else max(self.start_epoch, min(self.end_epoch, last_epoch))
        return cubic_sparsity(epoch, self.final_sparsity, self.start_epoch, end)

    def _amount(self, epoch: int) -> float:
        trainer = getattr(self, "_trainer", None)
        last = trainer.max_epochs - 1 if trainer is not None and trainer.max_epochs and trainer.max_epochs > 0 else None
        goal = self.target(epoch, last)
        if goal <= self.reached:
            return 0.0
        amount = (goal - self.reached) / (1.0 - self.reached)
        self.reached = goal
        return amount

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        self._allowed = {id(m) for m, _ in prunable_weights(pl_module)}
        super().setup(trainer, pl_module, stage)

    def filter_parameters_to_prune(self, parameters_to_prune: Any = ()) -> Any:
        """Only Linear/Conv weights (``prunable_weights``): norms, embeddings and biases stay dense."""
        return [(m, name) for m, name in parameters_to_prune if id(m) in self._allowed and name == "weight"]

    def state_dict(self) -> dict[str, Any]:
        return {"reached": self.reached}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reached = float(state_dict.get("reached", 0.0))
