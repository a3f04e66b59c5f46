"""MultiTaskClassifier: every head learns its own label, fixed and learned (Kendall) weighting,
per-task metrics and confusion matrices, config errors that name the task."""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion import ConcatFusion, MultiTaskClassifier
from fusion.multitask import uncertainty_weighted_loss
from fusion.pretrained import Configurable

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, logger=False)
TASKS = [{"name": "digit", "num_classes": 5, "label_key": "label"},
         {"name": "speaker", "num_classes": 3, "label_key": "speaker", "weight": 1.0}]


class VectorEncoder(Configurable, nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Linear(32, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unsqueeze(1)


def two_label_rows(n: int, seed: int) -> list[dict]:
    """``label`` is in modality ``a`` only, ``speaker`` in modality ``b`` only: independent labels."""
    g = torch.Generator().manual_seed(seed)
    pa, pb = torch.randn(5, 10, generator=torch.Generator().manual_seed(1)), torch.randn(
        3, 10, generator=torch.Generator().manual_seed(2))
    y1, y2 = torch.randint(5, (n,), generator=g), torch.randint(3, (n,), generator=g)
    a = pa[y1] + 0.8 * torch.randn(n, 10, generator=g)
    b = pb[y2] + 0.8 * torch.randn(n, 10, generator=g)
    return [{"a": a[i], "b": b[i], "label": y1[i], "speaker": y2[i]} for i in range(n)]


def model(weighting: str = "fixed", tasks=TASKS) -> MultiTaskClassifier:
    torch.manual_seed(0)
    return MultiTaskClassifier({"a": VectorEncoder(10), "b": VectorEncoder(10)}, ConcatFusion, tasks,
                               weighting=weighting, dropout=0.0, optimizer=functools.partial(torch.optim.Adam, lr=1e-2))


def fit_and_test(m: MultiTaskClassifier, root) -> dict[str, float]:
    trainer = pl.Trainer(max_epochs=5, default_root_dir=root, **QUIET)
    trainer.fit(m, DataLoader(two_label_rows(600, 0), batch_size=50, shuffle=True),
                DataLoader(two_label_rows(200, 1), batch_size=200))
    return trainer.test(m, DataLoader(two_label_rows(400, 2), batch_size=400), verbose=False)[0]


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_each_head_learns_its_own_label(weighting: str, tmp_path) -> None:
    m = model(weighting)
    metrics = fit_and_test(m, tmp_path)
    assert metrics["test/digit/acc"] > 0.8 and metrics["test/speaker/acc"] > 0.8, metrics  # chance 0.2 / 0.33
    for task in ("digit", "speaker"):
        png = m.confusion_pngs[task]
        assert png.name == f"confusion_matrix_{task}.png" and png.stat().st_size > 1000
    if weighting == "uncertainty":
        assert not torch.allclose(m.log_vars.detach(), torch.zeros(2))  # the weights were learned
    # The checkpoint's hyperparameters keep the tasks as plain data.
    assert m.hparams["tasks"][1] == {**TASKS[1]}


def test_a_task_with_weight_zero_is_not_learned(tmp_path) -> None:
    """The other side of "each head learns": without its loss, a head stays near chance."""
    tasks = [TASKS[0], {**TASKS[1], "weight": 0.0}]
    metrics = fit_and_test(model("fixed", tasks), tmp_path)
    assert metrics["test/digit/acc"] > 0.8 and metrics["test/speaker/acc"] < 0.55, metrics


def test_uncertainty_weighting_matches_kendall_by_hand() -> None:
    losses, s = torch.tensor([2.0, 0.5]), torch.tensor([0.3, -1.0])
    expected = math.exp(-0.3) * 2.0 + 0.15 + math.exp(1.0) * 0.5 - 0.5
    assert uncertainty_weighted_loss(losses, s).item() == pytest.approx(expected)
    weighted = uncertainty_weighted_loss(losses, s, torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(math.exp(-0.3) * 2.0 + 0.15)


def test_bad_tasks_are_named() -> None:
    with pytest.raises(ValueError, match=r"model.init_args.tasks\[1\].num_classes = 1"):
        model(tasks=[TASKS[0], {"name": "x", "num_classes": 1}])
    with pytest.raises(ValueError, match=r"tasks\[1\].name = 'digit'.*unique"):
        model(tasks=[TASKS[0], {"name": "digit", "num_classes": 3}])
    with pytest.raises(ValueError, match=r"model.init_args.weighting = 'learned'"):
        model("learned")
    m = model(tasks=[TASKS[0], {"name": "age", "num_classes": 3, "label_key": "age"}])
    m._pending_batch_checks = {"labels"}
    batch = {k: torch.stack([r[k] for r in two_label_rows(4, 0)]) for k in ("a", "b", "label", "speaker")}
    with pytest.raises(KeyError, match=r"task 'age' reads batch\['age'\].*'speaker'"):
        m.training_step(batch, 0)
