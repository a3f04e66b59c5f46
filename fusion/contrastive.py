"""Contrastive pretraining across modalities: encoders that learn from the pairing itself.

Two views of one thing in two modalities (an image and the spoken digit paired with it) should
embed close together, and apart from the other pairs of the batch (CLIP, Radford et al. 2021;
CLAP; ImageBind, Girdhar et al. 2023). ``ContrastivePretrainer`` trains fusegen's encoders so:

    z_m = normalize(proj_m(mean_t(encoder_m(x_m))))            one embedding per modality
    L   = mean over pairs (anchor, m) of loss(z_anchor, z_m)

- ``loss="infonce"``: symmetric InfoNCE over in-batch negatives, logits ``exp(s) z_a z_b^T`` with a
  learnable logit scale ``s`` initialised to ``ln(1/temperature)`` (0.07: ``ln 14.3``) and clamped to
  ``[0, ln 100]`` after every step (open_clip, TorchMultimodal);
- ``loss="siglip"``: pairwise sigmoid loss (Zhai et al. 2023), logits ``exp(s) z_a z_b^T + b`` with
  ``s = ln 10``, ``b = -10`` at the start, every pair a binary "same pair or not".

With three or more modalities one ``anchor`` modality is aligned with every other one (ImageBind);
the non-anchor pairs align through it ("emergent" alignment). Labels are never read in training:
a datamodule without a label column trains. Under DDP the embeddings of every process are
gathered *with gradients* (open_clip's ``gather_with_grad``) and every process computes the loss of
the global batch, so the gradient equals that of the global batch on one process.

Validation / test: cross-modal retrieval over the whole split, both directions: instance R@1/5/10
(the query's own pair is the target), median rank, and, where the split has labels (read for
evaluation only), class-consistent R@1 (the top hit has the query's class) with its chance level;
zero-shot classification through class prompts where a ``text`` encoder exists; an embedding
picture (PCA, coloured by class) in ``<run_dir>/pictures/``. ``init_encoders_from`` in
``FusionClassifier``/``UnimodalClassifier`` takes the encoders over into a labelled task.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.nn import functional as F

from datamodules.checks import check_choice, check_int, check_real, check_value
from fusion.artifacts import save_figure
from fusion.heads import masked_mean
from fusion.module import NON_MODALITY_KEYS, FusionClassifier, encoder_states_from, token_mask_of
from fusion.pretrained import from_pretrained, save_pretrained

LOSSES = ("infonce", "siglip")
MAX_LOGIT_SCALE = math.log(100.0)
DEFAULT_TEMPERATURE = {"infonce": 0.07, "siglip": 0.1}
SIGLIP_BIAS_INIT = -10.0


# ----------------------------------------------------------------------------------------------
# Pure loss functions
# ----------------------------------------------------------------------------------------------
def infonce_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): ``(CE(S, I) + CE(S^T, I)) / 2`` with ``S = exp(logit_scale) a b^T``.

    ``a``, ``b``: ``[N, E]`` L2-normalised embeddings, row ``i`` of each is a pair; every other row
    of the batch is a negative."""
    logits = logit_scale.exp() * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: ``-1/N sum_ij log sigmoid(y_ij (exp(s) a_i.b_j + bias))``, ``y_ij = +1`` on the
    diagonal (pairs) and ``-1`` elsewhere; symmetric by construction."""
    logits = logit_scale.exp() * a @ b.T + logit_bias
    sign = 2 * torch.eye(len(a), device=a.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(sign * logits).sum() / len(a)


def anchor_pairs(modalities: list[str], anchor: str) -> list[tuple[str, str]]:
    """ImageBind's pairs: the anchor with every other modality (one pair for two modalities)."""
    return [(anchor, m) for m in modalities if m != anchor]


def contrastive_loss(embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                     pairs: list[tuple[str, str]], logit_scale: torch.Tensor, loss: str = "infonce",
                     logit_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over ``pairs`` of the pair loss on the rows where both modalities are present.

    A pair with fewer than two such rows has no negatives: it adds ``0 * (sum of embeddings)``,
    no loss but a (zero) gradient, so DDP still sees every parameter used. Returns the total and
    each pair's term (``"image-audio"``) for logging."""
    terms: dict[str, torch.Tensor] = {}
    total = logit_scale * 0.0
    for a, b in pairs:
        keep = present[a] & present[b]
        za, zb = embeddings[a][keep], embeddings[b][keep]
        if len(za) < 2:
            total = total + 0.0 * (embeddings[a].sum() + embeddings[b].sum())
            continue
        term = infonce_loss(za, zb, logit_scale) if loss == "infonce" else siglip_loss(za, zb, logit_scale, logit_bias)
        terms[f"{a}-{b}"] = term
        total = total + term / len(pairs)
    return total, terms


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every process concatenated along the batch axis, gradients flowing back to each
    process's own part (``torch.distributed.nn.functional.all_gather``, as open_clip's
    ``gather_with_grad``); ``x`` itself outside a multi-process run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every process concatenated along the batch axis (no gradient; bool masks too)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.to(torch.uint8) if x.dtype == torch.bool else x.contiguous()
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


# ----------------------------------------------------------------------------------------------
# Retrieval and zero-shot metrics (pure)
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def retrieval_metrics(query: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor | None = None,
                      ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024) -> dict[str, float]:
    """Cross-modal retrieval of ``gallery[i]`` from ``query[i]`` over the whole set.

    Rank of the true item = number of gallery items scoring strictly higher (ties, such as the
    same recording paired with several images, do not count against it). Returns ``R@k`` (share
    of queries whose item is in the top k), ``median_rank`` (1 = first) and, with ``labels``,
    ``class_R@1`` (the top hit has the query's label) and ``class_chance`` (its expected value
    for a random top hit: the mean share of the gallery with the query's label)."""
    n = len(query)
    ranks = torch.empty(n, dtype=torch.long)
    top1 = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk):
        sims = query[start:start + chunk].float() @ gallery.float().T
        rows = torch.arange(len(sims))
        positive = sims[rows, rows + start].unsqueeze(1)
        ranks[start:start + chunk] = (sims > positive).sum(dim=1).cpu()
        top1[start:start + chunk] = sims.argmax(dim=1).cpu()
    out = {f"R@{k}": (ranks < k).float().mean().item() for k in ks}
    out["median_rank"] = torch.quantile(ranks.float() + 1, 0.5).item()  # the mean of the middle two for even n
    if labels is not None:
        labels = labels.cpu()
        out["class_R@1"] = (labels[top1] == labels).float().mean().item()
        share = torch.bincount(labels).float() / n
        out["class_chance"] = share[labels].mean().item()
    return out


@torch.no_grad()
def zero_shot_accuracy(embeddings: torch.Tensor, prompt_embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose nearest class prompt (cosine) is their class."""
    return (embeddings @ prompt_embeddings.T).argmax(dim=1).cpu().eq(labels.cpu()).float().mean().item()


def _pca_2d(x: torch.Tensor) -> torch.Tensor:
    x = x.float() - x.float().mean(dim=0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


# ----------------------------------------------------------------------------------------------
# LightningModule
# ----------------------------------------------------------------------------------------------
def projection_head(in_dim: int, embed_dim: int, hidden_dim: int | None) -> nn.Module:
    """CLIP's linear projection, or a two-layer MLP (SimCLR) when ``hidden_dim`` is given."""
    if hidden_dim is None:
        return nn.Linear(in_dim, embed_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))


class ContrastivePretrainer(pl.LightningModule):
    """Cross-modal contrastive pretraining of one encoder per modality (see the module doc).

    Args:
        encoders: modality name -> encoder (``[B, T, D]`` with ``out_dim``), two or more.
        embed_dim: width of the shared embedding space.
        temperature: initial softmax temperature ``1/exp(s)`` (default 0.07 for InfoNCE, 0.1
            for SigLIP, as in their papers).
        anchor: the modality every other one is aligned with (default: the first encoder).
        loss: ``"infonce"`` (CLIP) or ``"siglip"`` (pairwise sigmoid).
        learn_temperature: learn the logit scale (clamped to ``[0, ln 100]``) or keep it fixed.
        proj_hidden_dim: hidden width of an MLP projection head (``None``: linear, as CLIP).
        optimizer / cosine_schedule / warmup_fraction: as ``FusionClassifier``; the logit scale
            and bias are kept out of weight decay (open_clip).
        class_words / prompt_template: zero-shot classification where a ``text`` encoder exists:
            class ``c`` is the prompt ``prompt_template.format(class_words[c])`` (default words:
            the datamodule's ``class_names``), tokenised by the datamodule's tokenizer.
        picture_points: at most this many points in the embedding picture.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        embed_dim: int = 128,
        temperature: float | None = None,
        anchor: str | None = None,
        loss: str = "infonce",
        learn_temperature: bool = True,
        proj_hidden_dim: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        cosine_schedule: bool = False,
        warmup_fraction: float = 0.0,
        class_words: list[str] | None = None,
        prompt_template: str = "{}",
        picture_points: int = 2000,
    ) -> None:
        super().__init__()
        check_choice("loss", loss, LOSSES)
        check_int("embed_dim", embed_dim)
        check_int("proj_hidden_dim", proj_hidden_dim, optional=True, none_means="a linear projection")
        check_real("temperature", temperature, 0.01, 1.0, optional=True, none_means="the loss's usual start")
        check_real("warmup_fraction", warmup_fraction, 0.0, 1.0, high_open=True)
        check_int("picture_points", picture_points, minimum=0)
        if len(encoders) < 2:
            raise ValueError(f"model.init_args.encoders has {sorted(encoders)}: contrastive pretraining needs "
                             "two or more modalities (pairs of views of the same sample)")
        anchor = anchor if anchor is not None else next(iter(encoders))
        check_value("anchor", anchor, anchor in encoders, f"one of the encoders' modalities {sorted(encoders)}")
        check_value("prompt_template", prompt_template, "{}" in prompt_template, "a string with {} for the class word")
        FusionClassifier._save_config_hyperparameters(self, inspect.currentframe())
        self.encoders = nn.ModuleDict(encoders)
        for m, enc in self.encoders.items():
            if not hasattr(enc, "out_dim"):
                raise TypeError(f"encoder {m!r} ({type(enc).__name__}) has no `out_dim`; fusegen encoders "
                                "return [B, T, D] and set out_dim = D (see fusion/encoders.py)")
        self.projections = nn.ModuleDict({m: projection_head(enc.out_dim, embed_dim, proj_hidden_dim)
                                          for m, enc in self.encoders.items()})
        self.loss_name, self.anchor = loss, anchor
        self.pairs = anchor_pairs(list(self.encoders), anchor)
        init = math.log(1.0 / (temperature or DEFAULT_TEMPERATURE[loss]))
        self.logit_scale = nn.Parameter(torch.tensor(init), requires_grad=learn_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_BIAS_INIT)) if loss == "siglip" else None
        self.optimizer, self.cosine_schedule, self.warmup_fraction = optimizer, cosine_schedule, warmup_fraction
        self.class_words, self.prompt_template, self.picture_points = class_words, prompt_template, picture_points
        self._store: dict[str, list] = {}
        self.last_metrics: dict[str, float] = {}
        self.embedding_png: Path | None = None

    on_load_checkpoint = FusionClassifier.on_load_checkpoint

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``model.safetensors`` (see ``fusion.pretrained``); a classifier's
        ``init_encoders_from`` accepts the folder."""
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "ContrastivePretrainer":
        return from_pretrained(directory, expected=cls, **overrides)

    # ------------------------------------------------------------------ forward
    def present_of(self, batch: dict, m: str, n: int) -> torch.Tensor:
        given = (batch.get("present") or {}).get(m)
        if given is not None:
            return given.to(self.device, torch.bool)
        return torch.full((n,), m in batch, dtype=torch.bool, device=self.device)

    def embed_modality(self, m: str, x: Any) -> torch.Tensor:
        """L2-normalised embedding ``[B, embed_dim]`` of one modality's input."""
        tokens = self.encoders[m](x)
        return F.normalize(self.projections[m](masked_mean(tokens, token_mask_of(x, tokens))), dim=-1)

    def forward(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Embeddings and presence per modality; never reads ``batch["label"]``."""
        missing = [m for m in self.encoders if m not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} input but the model has encoders for them; batch keys: "
                           f"{sorted(set(batch) - NON_MODALITY_KEYS)}")
        embeddings = {m: self.embed_modality(m, batch[m]) for m in self.encoders}
        n = len(next(iter(embeddings.values())))
        return embeddings, {m: self.present_of(batch, m, n) for m in self.encoders}

    def _loss(self, embeddings: dict, present: dict) -> tuple[torch.Tensor, dict]:
        return contrastive_loss(embeddings, present, self.pairs, self.logit_scale, self.loss_name, self.logit_bias)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        embeddings, present = self(batch)
        n = len(next(iter(embeddings.values())))
        # Negatives from every process: the loss of the global batch, gradients to each process's part.
        embeddings = {m: gather_with_grad(z) for m, z in embeddings.items()}
        present = {m: gather_no_grad(p) for m, p in present.items()}
        loss, terms = self._loss(embeddings, present)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for name, term in terms.items():
            self.log(f"train/loss_{name}", term, batch_size=n)
        self.log("train/logit_scale", self.logit_scale.exp().detach(), batch_size=n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # open_clip clamps after each step: temperature never below 0.01
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict, stage: str) -> None:
        embeddings, present = self(batch)
        n = len(next(iter(embeddings.values())))
        loss, _ = self._loss(embeddings, present)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True)
        for m, z in embeddings.items():
            self._store.setdefault(m, []).append(z.detach())
            self._store.setdefault(f"present/{m}", []).append(present[m])
        if "label" in batch:  # evaluation only: class-consistent retrieval, zero-shot, the picture
            self._store.setdefault("label", []).append(batch["label"].to(self.device))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def _collected(self) -> dict[str, torch.Tensor]:
        out = {k: torch.cat(v) for k, v in self._store.items() if v}
        self._store = {}
        if self.trainer.world_size > 1:  # the whole split on every process
            out = {k: gather_no_grad(v) for k, v in out.items()}
        return out

    def _evaluate(self, stage: str) -> None:
        data = self._collected()
        if not data:
            return
        labels = data.get("label")
        metrics: dict[str, float] = {}
        for a, b in self.pairs:
            keep = data[f"present/{a}"] & data[f"present/{b}"]
            if keep.sum() < 2:
                continue
            y = labels[keep] if labels is not None else None
            for q, g in ((a, b), (b, a)):
                r = retrieval_metrics(data[q][keep], data[g][keep], y)
                metrics.update({f"{stage}/retrieval/{q}2{g}/{k}": v for k, v in r.items() if k != "class_chance"})
                metrics[f"{stage}/retrieval/{q}2{g}/chance@1"] = 1.0 / int(keep.sum())
                if "class_chance" in r:
                    metrics[f"{stage}/retrieval/{q}2{g}/class_chance"] = r["class_chance"]
        r1 = [v for k, v in metrics.items() if k.endswith("/R@1")]
        if r1:
            metrics[f"{stage}/R@1"] = sum(r1) / len(r1)
        if labels is not None:
            metrics.update(self._zero_shot(data, labels, stage))
        self.last_metrics = metrics
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == f"{stage}/R@1", sync_dist=False, rank_zero_only=False)
        if not self.trainer.sanity_checking and self.picture_points:
            self.embedding_png = self._save_embedding_picture(data, labels, stage)

    # ------------------------------------------------------------------ zero-shot
    def class_prompts(self) -> list[str] | None:
        words = self.class_words or getattr(self.trainer.datamodule, "class_names", None)
        return [self.prompt_template.format(w) for w in words] if words else None

    def _tokenize(self, prompts: list[str]) -> dict[str, torch.Tensor] | None:
        """The datamodule's own tokenizer (``tokenizer(texts, max_length)``), as its texts were made."""
        dm = self.trainer.datamodule
        hp = getattr(dm, "hparams", {})
        tokenizer = getattr(dm, "tokenizer", None)
        if not callable(tokenizer) and isinstance(hp.get("tokenizer"), str):
            from datamodules.text import load_tokenizer

            tokenizer = load_tokenizer(hp["tokenizer"])
        if not callable(tokenizer):
            return None
        out = tokenizer(prompts, int(hp.get("max_length") or 32))
        return {k: v.to(self.device) for k, v in out.items()}

    @torch.no_grad()
    def prompt_embeddings(self, prompts: list[str]) -> torch.Tensor | None:
        tokens = self._tokenize(prompts)
        return None if tokens is None else self.embed_modality("text", tokens)

    def _zero_shot(self, data: dict, labels: torch.Tensor, stage: str) -> dict[str, float]:
        if "text" not in self.encoders or self.trainer.datamodule is None:
            return {}
        prompts = self.class_prompts()
        if not prompts or int(labels.max()) >= len(prompts):
            return {}
        text = self.prompt_embeddings(prompts)
        if text is None:
            return {}
        out = {}
        for m in self.encoders:
            if m != "text":
                keep = data[f"present/{m}"]
                out[f"{stage}/zero_shot/{m}/acc"] = zero_shot_accuracy(data[m][keep], text, labels[keep])
        out[f"{stage}/zero_shot/chance"] = (torch.bincount(labels).float().max() / len(labels)).item()
        return out

    # ------------------------------------------------------------------ picture
    def _save_embedding_picture(self, data: dict, labels: torch.Tensor | None, stage: str) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mods = list(self.encoders)
        fig, axes = plt.subplots(1, len(mods), figsize=(4 * len(mods), 4), squeeze=False)
        g = torch.Generator().manual_seed(0)
        for ax, m in zip(axes[0], mods):
            idx = torch.nonzero(data[f"present/{m}"]).squeeze(1).cpu()
            idx = idx[torch.randperm(len(idx), generator=g)[: self.picture_points]]
            xy = _pca_2d(data[m][idx.to(data[m].device)]).cpu()
            colour = labels[idx.to(labels.device)].cpu() if labels is not None else None
            points = ax.scatter(xy[:, 0], xy[:, 1], c=colour, s=4, cmap="tab10")
            ax.set_title(f"{m} embeddings (PCA)")
            ax.set_xticks([])
            ax.set_yticks([])
        if labels is not None:
            fig.colorbar(points, ax=axes[0].tolist(), label="class")
        fig.suptitle(f"{stage}: epoch {self.current_epoch}")
        return save_figure(self.trainer, f"embeddings_{stage}", fig)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        scalars = [p for n, p in self.named_parameters() if n in ("logit_scale", "logit_bias") and p.requires_grad]
        rest = [p for n, p in self.named_parameters() if n not in ("logit_scale", "logit_bias") and p.requires_grad]
        optimizer = self.optimizer([{"params": rest}] + ([{"params": scalars, "weight_decay": 0.0}] if scalars else []))
        if not self.cosine_schedule:
            return optimizer
        from transformers import get_cosine_schedule_with_warmup

        total = int(self.trainer.estimated_stepping_batches)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(self.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


__all__ = ["ContrastivePretrainer", "anchor_pairs", "contrastive_loss", "encoder_states_from", "gather_no_grad",
           "gather_with_grad",
           "infonce_loss", "retrieval_metrics", "siglip_loss", "zero_shot_accuracy"]
