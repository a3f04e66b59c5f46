"""Why did a fusion model decide: per-modality contributions, attention maps, input attributions.

* **Modality contributions** (no retraining): the model is re-run with every subset ``S`` of its
  modalities marked present through the batch's ``present`` mask (the others absent, as a
  missing input is), giving the accuracy ``v(S)``. From these

  - leave-one-out drop: ``v(M) - v(M \\ {m})``;
  - exact Shapley value (Shapley 1953), the average marginal gain of ``m`` over all orders::

        phi_m = sum_{S ⊆ M \\ {m}} |S|! (|M| - |S| - 1)! / |M|!  (v(S ∪ {m}) - v(S))

    which sums to ``v(M) - v(∅)`` (efficiency). ``2^|M|`` evaluations, so at most 4 modalities.

  overall and per class (``v`` restricted to the samples of that class).
* **Attention maps** of ``AttentionFusion``: the fusion token's attention to each modality,
  averaged per class, and its attention over every token for a few samples.
* **Input attributions** with Captum: Integrated Gradients (Sundararajan et al. 2017) against an
  all-zeros baseline (a blank image / silent spectrogram, which is also what the datamodules feed
  for a missing modality), Grad-CAM (``LayerGradCam``) on a CNN encoder's last convolution, and
  token attributions on a text encoder's embeddings (``LayerIntegratedGradients`` against a
  baseline of padding tokens, keeping ``[CLS]``/``[SEP]``), overlaid on the inputs.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from datamodules.files import atomic_path, atomic_write_text

EXPLANATIONS = "explanations"
MAX_SHAPLEY_MODALITIES = 4
# IG's completeness gap |sum(attributions) - (F(x) - F(baseline))| relative to |F(x) - F(baseline)|
# that the tests accept at the default number of steps (Gauss-Legendre, 64 steps).
IG_STEPS = 64
IG_COMPLETENESS_TOLERANCE = 0.05


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------
def _batch_size(batch: dict) -> int:
    if "label" in batch:
        return len(batch["label"])
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.shape[0]
        if isinstance(value, dict):
            return _batch_size(value)
    raise ValueError("cannot tell the batch size of a batch without tensors")


def to_device(batch: Any, device: torch.device | str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def with_presence(batch: dict, modalities: list[str], keep: Iterable[str]) -> dict:
    """``batch`` with only the modalities in ``keep`` marked present (an absent one stays absent)."""
    keep = set(keep)
    n = _batch_size(batch)
    given = batch.get("present") or {}
    present = {}
    for m in modalities:
        base = given.get(m)
        base = base.bool() if base is not None else torch.full((n,), m in batch, dtype=torch.bool)
        present[m] = base & (m in keep)
    return {**batch, "present": {**given, **present}}


def check_data_modalities(model: nn.Module, datamodule: Any = None, batch: dict | None = None) -> None:
    """Raise naming the modalities the model uses that the data does not provide."""
    used = sorted(getattr(model, "encoders", {}))
    provided = getattr(datamodule, "modalities", None)
    source = f"{type(datamodule).__name__}.modalities"
    if provided is None and batch is not None:
        provided = set(batch) - {"label", "present", "id", "index"} | set(batch.get("present") or {})
        source = "the keys of its first test batch"
    if provided is None:
        return
    missing = sorted(set(used) - set(provided))
    if missing:
        raise ValueError(f"cannot explain this model on this data: the model uses {missing}, which the datamodule "
                         f"does not provide ({source}: {sorted(provided)}); explain it with the datamodule it was "
                         f"trained on (its config's data:), one that provides {missing}")


# ----------------------------------------------------------------------------------------------
# Modality contributions
# ----------------------------------------------------------------------------------------------
def shapley_values(value: dict[frozenset, float], players: list[str]) -> dict[str, float]:
    """Exact Shapley values of the game ``value`` (a number for every subset of ``players``)."""
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0.0
        for k in range(n):
            weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                total += weight * (value[s | {p}] - value[s])
        out[p] = total
    return out


def leave_one_out(value: dict[frozenset, float], players: list[str]) -> dict[str, float]:
    """``v(all) - v(all but m)``: how much is lost when only ``m`` goes missing."""
    everyone = frozenset(players)
    return {p: value[everyone] - value[everyone - {p}] for p in players}


@torch.no_grad()
def subset_predictions(model: nn.Module, batches: Iterable[dict], modalities: list[str] | None = None,
                       limit: int | None = None) -> tuple[dict[frozenset, torch.Tensor], torch.Tensor]:
    """Predicted classes for every subset of present modalities: ``({S: [N]}, labels [N])``."""
    modalities = list(modalities or model.encoders)
    if len(modalities) > MAX_SHAPLEY_MODALITIES:
        raise ValueError(f"exact Shapley values enumerate 2^M subsets; the model has {len(modalities)} modalities "
                         f"({modalities}), more than {MAX_SHAPLEY_MODALITIES}")
    subsets = [frozenset(c) for k in range(len(modalities) + 1) for c in itertools.combinations(modalities, k)]
    preds: dict[frozenset, list[torch.Tensor]] = {s: [] for s in subsets}
    labels, seen = [], 0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            if limit is not None and seen >= limit:
                break
            batch = to_device(batch, device)
            labels.append(batch["label"].cpu())
            seen += len(batch["label"])
            for s in subsets:
                preds[s].append(model(with_presence(batch, modalities, s)).argmax(-1).cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("no batches to explain: the test dataloader is empty")
    label = torch.cat(labels)
    return {s: torch.cat(p) for s, p in preds.items()}, label


@dataclass
class Contributions:
    """Accuracies of every modality subset and what follows from them, overall and per class."""

    modalities: list[str]
    rows: list[str]  # "all", then the class names
    count: dict[str, int]
    accuracy: dict[str, dict[frozenset, float]]
    shapley: dict[str, dict[str, float]] = field(default_factory=dict)
    loo: dict[str, dict[str, float]] = field(default_factory=dict)

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        full, empty = frozenset(self.modalities), frozenset()
        writer.writerow(["class", "n", "accuracy", "accuracy_none", *self.modalities,
                         *(f"loo_{m}" for m in self.modalities)])
        for r in self.rows:
            writer.writerow([r, self.count[r], f"{self.accuracy[r][full]:.6f}", f"{self.accuracy[r][empty]:.6f}",
                             *(f"{self.shapley[r][m]:.6f}" for m in self.modalities),
                             *(f"{self.loo[r][m]:.6f}" for m in self.modalities)])
        return buf.getvalue()

    def figure(self, title: str = "modality contributions to test accuracy (exact Shapley values)"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(self.rows) * len(self.modalities)), 3.6))
        width = 0.8 / len(self.modalities)
        for i, m in enumerate(self.modalities):
            xs = [j + (i - (len(self.modalities) - 1) / 2) * width for j in range(len(self.rows))]
            ax.bar(xs, [100 * self.shapley[r][m] for r in self.rows], width, label=m)
        ax.set_xticks(range(len(self.rows)), self.rows)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("accuracy points")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def modality_contributions(preds: dict[frozenset, torch.Tensor], label: torch.Tensor, modalities: list[str],
                           class_names: list[str] | None = None) -> Contributions:
    """Shapley values and leave-one-out drops of accuracy, overall (row ``all``) and per class."""
    classes = sorted(int(c) for c in label.unique())
    names = {c: (str(class_names[c]) if class_names and c < len(class_names) else str(c)) for c in classes}
    groups = {"all": torch.ones_like(label, dtype=torch.bool), **{names[c]: label == c for c in classes}}
    out = Contributions(modalities, list(groups), {}, {})
    for r, keep in groups.items():
        out.count[r] = int(keep.sum())
        out.accuracy[r] = {s: float((p[keep] == label[keep]).float().mean()) for s, p in preds.items()}
        out.shapley[r] = shapley_values(out.accuracy[r], modalities)
        out.loo[r] = leave_one_out(out.accuracy[r], modalities)
    return out


# ----------------------------------------------------------------------------------------------
# AttentionFusion maps
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_by_class(model: nn.Module, batches: Iterable[dict], limit: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The fusion token's attention share per modality (last layer, head-averaged): ``([N, M], labels [N], names)``."""
    head = getattr(model, "fusion", None)
    if not hasattr(head, "modality_attention"):
        raise TypeError(f"attention maps need an AttentionFusion head; this model's head is {type(head).__name__}")
    model.eval()
    device = next(model.parameters()).device
    shares, labels, seen = [], [], 0
    for batch in batches:
        if limit is not None and seen >= limit:
            break
        batch = to_device(batch, device)
        model(batch)
        att = head.modality_attention()
        shares.append(torch.stack([att[m] for m in head.modalities], dim=1).cpu())
        labels.append(batch["label"].cpu())
        seen += len(batch["label"])
    return torch.cat(shares), torch.cat(labels), list(head.modalities)


def attention_figures(model: nn.Module, batches: list[dict], class_names: list[str] | None = None,
                      num_samples: int = 6):
    """Two figures: attention share per class (heat map) and per-sample token attention rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares, label, mods = attention_by_class(model, batches)
    classes = sorted(int(c) for c in label.unique())
    table = torch.stack([shares[label == c].mean(0) for c in classes])  # [C, M]
    fig1, ax = plt.subplots(figsize=(1.2 + 0.9 * len(mods), 0.35 * len(classes) + 1.2))
    im = ax.imshow(table.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(mods)), mods)
    ax.set_yticks(range(len(classes)), [str(class_names[c]) if class_names else str(c) for c in classes])
    for i in range(len(classes)):
        for j in range(len(mods)):
            ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", color="white", fontsize=7)
    ax.set_title("fusion token's attention\nper modality, class mean", fontsize=9)
    fig1.colorbar(im, ax=ax, fraction=0.05)
    fig1.tight_layout()

    head = model.fusion
    batch = to_device(batches[0], next(model.parameters()).device)
    with torch.no_grad():
        logits = model(batch)
    rows = head.last_attention[-1][:, :, 0, :].mean(dim=1).cpu()  # [B, T]
    k = min(num_samples, rows.shape[0])
    fig2, axes = plt.subplots(k, 1, figsize=(7, 1.1 * k + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(k):
        a = axes[i, 0]
        a.bar([0], [rows[i, 0]], color="grey")
        for j, (m, s) in enumerate(head.last_segments.items()):
            xs = list(range(s.start, s.stop))
            a.bar(xs, rows[i, s].numpy(), color=colors[j % len(colors)], label=m if i == 0 else None)
        y, p = int(batch["label"][i]), int(logits[i].argmax())
        a.set_ylabel(f"y={y}\npred={p}", fontsize=7, rotation=0, labelpad=18)
        a.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=7, ncol=len(head.last_segments) + 1, loc="upper right")
    axes[0, 0].set_title("fusion token's attention over tokens (grey: itself), per test sample", fontsize=9)
    fig2.tight_layout()
    return fig1, fig2


# ----------------------------------------------------------------------------------------------
# Input attributions (Captum)
# ----------------------------------------------------------------------------------------------
def _expand_like(value: Any, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.expand(n, *value.shape[1:]) if value.shape[0] == 1 else value
    if isinstance(value, dict):
        return {k: _expand_like(v, n) for k, v in value.items()}
    return value


def forward_on(model: nn.Module, sample: dict, key: str, subkey: str | None = None) -> Callable[[torch.Tensor], Any]:
    """``f(x) -> logits``: the model on one sample (batch of 1) with ``sample[key]`` replaced by ``x``.

    Captum evaluates ``f`` on a batch of scaled inputs; the sample's other inputs are expanded to it."""
    def f(x: torch.Tensor) -> torch.Tensor:
        batch = _expand_like(sample, x.shape[0])
        if subkey is None:
            batch = {**batch, key: x}
        else:
            batch = {**batch, key: {**batch[key], subkey: x}}
        return model(batch)

    return f


def integrated_gradients(model: nn.Module, sample: dict, modality: str, target: int, n_steps: int = IG_STEPS,
                         baseline: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """IG of the ``target`` logit w.r.t. ``sample[modality]`` against ``baseline`` (zeros by default):
    ``(attributions like the input, completeness gap)``."""
    from captum.attr import IntegratedGradients

    x = sample[modality]
    baseline = torch.zeros_like(x) if baseline is None else baseline
    ig = IntegratedGradients(forward_on(model, sample, modality))
    attr, delta = ig.attribute(x, baselines=baseline, target=target, n_steps=n_steps, return_convergence_delta=True)
    return attr.detach(), float(delta.abs().sum())


def last_conv(module: nn.Module) -> nn.Conv2d | None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def grad_cam(model: nn.Module, sample: dict, modality: str, target: int) -> torch.Tensor:
    """Grad-CAM of the ``target`` logit on the last Conv2d of the modality's encoder, upsampled to the input."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = last_conv(model.encoders[modality])
    if layer is None:
        raise TypeError(f"Grad-CAM needs a CNN encoder; encoders.{modality} "
                        f"({type(model.encoders[modality]).__name__}) has no Conv2d")
    x = sample[modality]
    cam = LayerGradCam(forward_on(model, sample, modality), layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")


def token_attributions(model: nn.Module, sample: dict, modality: str, target: int, pad_id: int = 0,
                       n_steps: int = 32) -> torch.Tensor:
    """Per-token attributions ``[T]`` of a text input: LayerIntegratedGradients on the encoder's
    input embeddings against padding tokens (first and last real token kept)."""
    from captum.attr import LayerIntegratedGradients

    encoder = model.encoders[modality]
    hf = getattr(encoder, "model", None)
    if hf is None or not hasattr(hf, "get_input_embeddings"):
        raise TypeError(f"token attributions need a transformers text encoder; encoders.{modality} is "
                        f"{type(encoder).__name__}")
    ids, mask = sample[modality]["input_ids"], sample[modality]["attention_mask"]
    baseline = torch.full_like(ids, pad_id)
    length = int(mask[0].sum())
    baseline[:, 0], baseline[:, length - 1] = ids[:, 0], ids[:, length - 1]
    lig = LayerIntegratedGradients(forward_on(model, sample, modality, "input_ids"), hf.get_input_embeddings())
    attr = lig.attribute(ids, baselines=baseline, target=target, n_steps=n_steps)
    return attr.detach().sum(-1)[0] * mask[0]


def pick_samples(model: nn.Module, batch: dict, num_correct: int = 2, num_wrong: int = 2) -> list[tuple[int, int, int]]:
    """``(index, label, prediction)`` of a few correctly and wrongly classified samples of ``batch``."""
    with torch.no_grad():
        pred = model(batch).argmax(-1)
    label = batch["label"]
    right = [int(i) for i in torch.nonzero(pred == label).flatten()[:num_correct]]
    wrong = [int(i) for i in torch.nonzero(pred != label).flatten()[:num_wrong]]
    return [(i, int(label[i]), int(pred[i])) for i in right + wrong]


def select(batch: Any, i: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[i:i + 1]
    if isinstance(batch, dict):
        return {k: select(v, i) for k, v in batch.items()}
    return batch


def select_first(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a batch."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: select_first(v, n) for k, v in batch.items()}
    return batch[:n] if isinstance(batch, list) else batch


def token_strings(datamodule: Any, ids: torch.Tensor) -> list[str]:
    tok = getattr(getattr(datamodule, "tokenizer", None), "tok", None)
    if tok is not None:
        return tok.convert_ids_to_tokens(ids.tolist())
    return [str(int(i)) for i in ids]


def attribution_figure(model: nn.Module, batch: dict, datamodule: Any = None, class_names: list[str] | None = None,
                       num_correct: int = 2, num_wrong: int = 2):
    """One row per chosen sample, one panel per attribution: IG and Grad-CAM overlaid on image /
    spectrogram inputs, token attributions as coloured text. Returns ``(figure, completeness gaps)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    chosen = pick_samples(model, batch, num_correct, num_wrong)
    panels: list[tuple[str, str]] = []
    for m, enc in model.encoders.items():
        x = batch.get(m)
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            panels.append((m, "ig"))
            if last_conv(enc) is not None:
                panels.append((m, "gradcam"))
        elif isinstance(x, dict) and "input_ids" in x:
            panels.append((m, "tokens"))
    if not panels or not chosen:
        raise ValueError("nothing to attribute: no image/spectrogram/text input, or an empty batch")
    def name(c: int) -> str:
        return str(class_names[c]) if class_names and c < len(class_names) else str(c)

    fig, axes = plt.subplots(len(chosen), len(panels), figsize=(2.6 * len(panels) + 0.4 * sum(
        k == "tokens" for _, k in panels) * 4, 2.4 * len(chosen)), squeeze=False)
    gaps = []
    for r, (i, y, p) in enumerate(chosen):
        sample = select(batch, i)
        for c, (m, kind) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if kind == "tokens":
                attr = token_attributions(model, sample, m, p)
                length = int(sample[m]["attention_mask"][0].sum())
                words = token_strings(datamodule, sample[m]["input_ids"][0, :length])
                _draw_tokens(ax, words, attr[:length])
            else:
                img = sample[m][0].mean(0).cpu()
                if kind == "ig":
                    attr, gap = integrated_gradients(model, sample, m, p)
                    heat = attr[0].sum(0).cpu()
                    gaps.append(gap)
                    lim = float(heat.abs().max()) or 1.0
                    ax.imshow(img, cmap="gray")
                    ax.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.6)
                else:
                    heat = grad_cam(model, sample, m, p)[0, 0].cpu()
                    ax.imshow(img, cmap="gray")
                    ax.imshow(heat, cmap="jet", alpha=0.45)
                if m != "image":
                    ax.invert_yaxis()  # spectrogram: low frequencies at the bottom
            if r == 0:
                ax.set_title({"ig": f"{m}: IG (zero baseline)", "gradcam": f"{m}: Grad-CAM",
                              "tokens": f"{m}: token IG (pad baseline)"}[kind], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{'right' if y == p else 'WRONG'}\ny={name(y)} pred={name(p)}", fontsize=7)
    fig.tight_layout()
    return fig, gaps


def _draw_tokens(ax: Any, words: list[str], attr: torch.Tensor) -> None:
    """Tokens as text, background red (for the prediction) or blue (against), by attribution."""
    import matplotlib.pyplot as plt

    lim = float(attr.abs().max()) or 1.0
    cmap = plt.get_cmap("bwr")
    x, y = 0.01, 0.85
    for w, a in zip(words, attr.tolist()):
        t = ax.text(x, y, w, fontsize=7, transform=ax.transAxes,
                    bbox={"facecolor": cmap(0.5 + 0.5 * a / lim), "edgecolor": "none", "pad": 1})
        x += 0.012 * (len(w) + 1) + 0.01
        if x > 0.92:
            x, y = 0.01, y - 0.16
        del t
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def save_png(figure: Any, path: Path) -> Path:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def write_contributions(contrib: Contributions, out_dir: Path) -> tuple[Path, Path]:
    """``modality_contributions.csv`` and ``modality_contributions.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "modality_contributions.csv"
    atomic_write_text(csv_path, contrib.csv_text())
    return csv_path, save_png(contrib.figure(), out_dir / "modality_contributions.png")
