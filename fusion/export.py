"""Ship a trained model outside Python training code: ONNX (dynamo exporter) and ``torch.export``.

Every exported graph takes flat, named tensors with a dynamic batch axis:

==============================  ===============================================================
part                            inputs -> outputs
==============================  ===============================================================
fusion model                    ``image``, ``audio``, ``text_input_ids``, ``text_attention_mask``
                                (the batch keys, nested ones joined by ``_``) and
                                ``present_<modality>`` (bool ``[B]``) -> ``logits``
one encoder (``encoder:<m>``)   that modality's inputs -> ``tokens`` ``[B, T, D]``
an agent's policy               ``obs`` -> ``action`` (the greedy action, ``ActorCritic.forward``)
a GAN's generator               ``z`` (and ``condition`` when conditional) -> ``image``
==============================  ===============================================================

``present_<m>`` keeps missing modalities working in the exported graph: mark a modality absent
for a sample and feed any placeholder (zeros) for its input, exactly as in training.

Each export is checked against PyTorch on a real batch, as timm checks its exports: the ONNX
checker, then the largest absolute difference of the outputs under onnxruntime (``<= 1e-4``), or
of the ``torch.export`` program's outputs.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

TOLERANCE = 1e-4
FORMATS = ("onnx", "torch-export")


class ExportError(RuntimeError):
    """A model that could not be exported or whose export disagrees with PyTorch."""


# ----------------------------------------------------------------------------------------------
# Flat, named-input wrappers
# ----------------------------------------------------------------------------------------------
def flatten_inputs(batch: dict, modalities: list[str]) -> tuple[list[str], list[torch.Tensor]]:
    """The model inputs of ``batch`` as ``(names, tensors)``: one per tensor, then ``present_<m>``."""
    names, tensors = [], []
    n = _rows(batch)
    for m in modalities:
        x = batch[m]
        if isinstance(x, dict):
            for k in sorted(x):
                names.append(f"{m}_{k}")
                tensors.append(x[k])
        else:
            names.append(m)
            tensors.append(x)
    present = batch.get("present") or {}
    for m in modalities:
        names.append(f"present_{m}")
        p = present.get(m)
        tensors.append(p.bool() if p is not None else torch.ones(n, dtype=torch.bool))
    return names, tensors


def _rows(batch: dict) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
        if isinstance(v, dict):
            return _rows(v)
    raise ValueError("a batch without tensors")


def _unflatten(names: list[str], tensors: tuple[torch.Tensor, ...], modalities: list[str]) -> dict:
    batch: dict[str, Any] = {"present": {}}
    for name, x in zip(names, tensors):
        if name.startswith("present_"):
            batch["present"][name[len("present_"):]] = x
            continue
        m = next((m for m in modalities if name == m), None)
        if m is not None:
            batch[m] = x
            continue
        m = next(m for m in modalities if name.startswith(m + "_"))
        batch.setdefault(m, {})[name[len(m) + 1:]] = x
    return batch


class FusionGraph(nn.Module):
    """A fusion classifier called with flat named tensors (see the module doc) -> logits."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)
        self.modalities = list(model.encoders)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(_unflatten(self.names, tensors, self.modalities))


class EncoderGraph(nn.Module):
    """One encoder called with its modality's flat inputs -> tokens ``[B, T, D]``."""

    def __init__(self, encoder: nn.Module, modality: str, names: list[str]) -> None:
        super().__init__()
        self.encoder, self.modality, self.names = encoder, modality, list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) == 1 and self.names == [self.modality]:
            return self.encoder(tensors[0])
        return self.encoder({n[len(self.modality) + 1:]: t for n, t in zip(self.names, tensors)})


class GeneratorGraph(nn.Module):
    """A GAN generator: ``z`` (+ ``condition``) -> image."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z, condition)


@dataclass
class Exportable:
    """A module ready to export: the wrapper, its example inputs and names, what it is called."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    what: str


def fusion_exportable(model: nn.Module, batch: dict) -> Exportable:
    modalities = list(model.encoders)
    missing = [m for m in modalities if m not in batch]
    if missing:
        raise ValueError(f"the example batch lacks {missing}, which the model uses (batch keys: {sorted(batch)})")
    names, tensors = flatten_inputs(batch, modalities)
    return Exportable(FusionGraph(model, names).eval(), tuple(tensors), names, ["logits"], type(model).__name__)


def encoder_exportable(model: nn.Module, batch: dict, modality: str) -> Exportable:
    encoders = getattr(model, "encoders", {})
    if modality not in encoders:
        raise ValueError(f"--part encoder:{modality}: the model has no {modality!r} encoder; its encoders are "
                         f"{sorted(encoders)}")
    names, tensors = flatten_inputs({modality: batch[modality]}, [modality])
    names, tensors = names[:-1], tensors[:-1]  # an encoder has no presence input
    return Exportable(EncoderGraph(encoders[modality], modality, names).eval(), tuple(tensors), names, ["tokens"],
                      f"encoders.{modality} ({type(encoders[modality]).__name__})")


def policy_exportable(policy: nn.Module, obs: torch.Tensor) -> Exportable:
    return Exportable(policy.eval(), (obs,), ["obs"], ["action"], f"policy ({type(policy).__name__})")


def generator_exportable(generator: nn.Module, z: torch.Tensor, condition: torch.Tensor | None) -> Exportable:
    inputs = (z,) if condition is None else (z, condition)
    names = ["z"] if condition is None else ["z", "condition"]
    return Exportable(GeneratorGraph(generator).eval(), inputs, names, ["image"],
                      f"generator ({type(generator).__name__})")


# ----------------------------------------------------------------------------------------------
# Export + check
# ----------------------------------------------------------------------------------------------
def _dynamic_shapes(ex: Exportable) -> tuple[Any, ...]:
    """Axis 0 of every input is the batch axis (``*tensors`` wrappers take their inputs as one group)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in ex.inputs)
    varargs = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(ex.module.forward).parameters.values())
    return (shapes,) if varargs else shapes


def _culprit(err: BaseException, root: nn.Module) -> str:
    """The innermost submodule whose ``forward`` was running when tracing failed."""
    codes = {}
    for name, sub in root.named_modules():
        code = getattr(type(sub).forward, "__code__", None)
        if code is not None:
            codes.setdefault(code, f"{name or '<root>'} ({type(sub).__name__})")
    found = None
    e: BaseException | None = err
    while e is not None:
        for frame, _ in traceback.walk_tb(e.__traceback__):
            if frame.f_code in codes:
                found = codes[frame.f_code]
        e = e.__cause__ or e.__context__
    return found or type(root).__name__


def _trace_error(err: BaseException, ex: Exportable, fmt: str) -> ExportError:
    root = err
    while root.__cause__ is not None:  # the exporters wrap the tracer's own error
        root = root.__cause__
    first = next((line for line in str(root).strip().splitlines() if line.strip()), type(root).__name__)
    return ExportError(
        f"could not trace {ex.what} for {fmt}: the failure is in module {_culprit(err, ex.module)}: "
        f"{type(root).__name__}: {first[:300]}. Fix: its forward must be traceable -- no Python branches or loops on "
        f"tensor values (use torch.where / torch.cond), no .item()/.tolist()/numpy on inputs, tensors only as "
        f"inputs; or export a traceable part alone (--part encoder:<modality>), or try the other --format")


def export_onnx(ex: Exportable, path: Path, opset: int = 18) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` with a dynamic batch axis and the input names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(ex.module, ex.inputs, dynamo=True, input_names=ex.input_names,
                                        output_names=ex.output_names, dynamic_shapes=_dynamic_shapes(ex),
                                        opset_version=opset, external_data=False, verbose=False, optimize=False)
    except Exception as err:  # noqa: BLE001 - every tracing failure becomes one message
        raise _trace_error(err, ex, "ONNX") from err
    program.save(str(path), external_data=False)
    return path


def export_program(ex: Exportable, path: Path) -> Path:
    """``torch.export.export`` with a dynamic batch axis, saved as ``.pt2``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(ex.module, ex.inputs, dynamic_shapes=_dynamic_shapes(ex))
    except Exception as err:  # noqa: BLE001
        raise _trace_error(err, ex, "torch.export") from err
    torch.export.save(program, str(path))
    return path


def _numpy(x: torch.Tensor) -> Any:
    return x.detach().cpu().numpy()


def onnx_session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: constant-folding notes are no news to a user
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(ex: Exportable, path: Path, inputs: tuple[torch.Tensor, ...] | None = None) -> float:
    """ONNX checker, then the max abs difference of onnxruntime's outputs from PyTorch's."""
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))
    inputs = ex.inputs if inputs is None else inputs
    with torch.no_grad():
        expected = ex.module(*inputs)
    session = onnx_session(path)
    feed_names = [i.name for i in session.get_inputs()]
    feeds = {n: _numpy(x) for n, x in zip(ex.input_names, inputs) if n in feed_names}
    got = session.run(None, feeds)[0]
    return float((torch.as_tensor(got).double() - expected.double()).abs().max())


def check_program(ex: Exportable, path: Path, inputs: tuple[torch.Tensor, ...] | None = None) -> float:
    inputs = ex.inputs if inputs is None else inputs
    program = torch.export.load(str(path))
    with torch.no_grad():
        expected = ex.module(*inputs)
        got = program.module()(*inputs)
    return float((got.double() - expected.double()).abs().max())


def export_and_check(ex: Exportable, path: Path, fmt: str = "onnx", tolerance: float = TOLERANCE
                     ) -> tuple[Path, float]:
    """Export ``ex`` to ``path`` and check it on its example inputs; raise if the outputs differ by more
    than ``tolerance``. Returns ``(path, max abs difference)``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {FORMATS}")
    if fmt == "onnx":
        export_onnx(ex, path)
        diff = check_onnx(ex, path)
    else:
        export_program(ex, path)
        diff = check_program(ex, path)
    if not diff <= tolerance:
        raise ExportError(f"the {fmt} export of {ex.what} ({path}) differs from PyTorch by {diff:.3g} "
                          f"(max abs difference on the check batch; tolerance {tolerance:g})")
    return path, diff


def latency(fn: Any, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
