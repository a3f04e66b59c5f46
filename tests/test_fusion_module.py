"""FusionClassifier / UnimodalClassifier: learning through the CLI, bad-input errors, the
confusion-matrix picture, and lifting a trained encoder out into another task."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file

from datamodules import SyntheticMultimodalDataModule, collate
from experiments.cli import FusegenCLI
from fusion import (
    AttentionFusion,
    ConcatFusion,
    FusionClassifier,
    LeNetImageEncoder,
    MelCNNAudioEncoder,
    SmallCNNImageEncoder,
    UnimodalClassifier,
)

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def synthetic_batch(n: int = 4) -> dict:
    dm = SyntheticMultimodalDataModule(num_train=n, num_val=n, num_test=n, batch_size=n)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def small_model(head=ConcatFusion, **kwargs) -> FusionClassifier:
    encoders = {"image": SmallCNNImageEncoder(width=8, out_dim=16),
                "audio": MelCNNAudioEncoder(n_mels=20, width=8, out_dim=16)}
    return FusionClassifier(encoders, head, num_classes=10, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[FusegenCLI, Path]:
    """Image + audio + text concat fusion on synthetic data, through the CLI and the shipped config."""
    root = tmp_path_factory.mktemp("runs")
    cli = FusegenCLI(args=[
        "fit", "--config", str(REPO / "experiments/fusion/synthetic-concat.yaml"), *QUIET,
        "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "3",
        "--data.init_args.num_train", "1000", "--data.init_args.num_val", "200", "--data.init_args.num_test", "300",
        "--model.init_args.encoders.image.init_args.width", "8",
        "--model.init_args.encoders.audio.init_args.width", "8",
    ])
    return cli, root


def test_fusion_learns_on_synthetic_data_and_draws_a_confusion_matrix(trained):
    cli, root = trained
    acc = float(cli.trainer.callback_metrics["val/acc"])
    assert acc > 0.35, f"val accuracy {acc:.2f} (chance 0.10)"
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["test/acc"] > 0.35 and 0 < metrics["test/f1"] <= 1
    png = root / "synthetic-concat" / "pictures" / "confusion_matrix.png"
    assert cli.model.confusion_png == png and png.stat().st_size > 1000
    assert list((root / "synthetic-concat" / "tensorboard").rglob("events.out.tfevents*"))
    # Robustness switch: removing modalities at test time still works (and costs accuracy).
    cli.model.drop_at_test = ["image", "text"]
    no_image = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert no_image["test/acc"] < metrics["test/acc"]
    assert (root / "synthetic-concat" / "pictures" / "confusion_matrix_no-image_no-text.png").is_file()
    cli.model.drop_at_test = []


def test_encoder_lifted_out_of_checkpoint_serves_another_task(trained, tmp_path):
    cli, root = trained
    ckpt = root / "synthetic-concat" / "checkpoints" / "last.ckpt"
    model = FusionClassifier.load_from_checkpoint(ckpt)  # rebuilt from the config stored by the CLI
    image_encoder = model.encoders["image"]
    # Save the encoder alone with safetensors and load it into a fresh one of the same class.
    save_file(image_encoder.state_dict(), tmp_path / "image_encoder.safetensors")
    fresh = SmallCNNImageEncoder(width=8, out_dim=64)
    fresh.load_state_dict(load_file(tmp_path / "image_encoder.safetensors"))
    fresh.freeze()
    # A different task: is the digit-like class >= 5? A linear probe on the frozen encoder.
    dm = SyntheticMultimodalDataModule(num_train=600, num_val=300, num_test=300, batch_size=100, seed=7)
    dm.setup()

    def features_and_labels(split: str):
        loader = torch.utils.data.DataLoader(dm.splits[split], batch_size=len(dm.splits[split]), collate_fn=collate)
        batch = next(iter(loader))
        with torch.no_grad():
            return fresh(batch["image"]).mean(1), (batch["label"] >= 5).long()

    x, y = features_and_labels("train")
    xt, yt = features_and_labels("test")
    with torch.no_grad():
        torch.testing.assert_close(fresh(dm.splits["test"][0]["image"][None]),
                                   image_encoder.eval()(dm.splits["test"][0]["image"][None]))
    probe = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        opt.step()
    acc = (probe(xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.6, f"probe accuracy {acc:.2f} (chance 0.5)"
    # And as the encoder of a unimodal model in a new LightningModule.
    uni = UnimodalClassifier("image", fresh, num_classes=2)
    assert uni(synthetic_batch()).shape == (4, 2)
    assert not any(p.requires_grad for p in uni.encoders["image"].parameters())


def test_missing_modality_error_names_it_and_the_expected_shape():
    model = small_model()
    batch = synthetic_batch()
    del batch["audio"]
    with pytest.raises(KeyError, match=r"'audio'.*expected \[B, \*\] or \[B, 1, \*\] or \[B, 1, \*, \*\]"):
        model(batch)
    # ...but a modality the mask marks absent for the whole batch may be left out.
    batch["present"]["audio"] = torch.zeros(4, dtype=torch.bool)
    assert torch.isfinite(model(batch)).all()


def test_wrong_shape_error_names_modality_expected_and_actual():
    model = FusionClassifier({"image": LeNetImageEncoder()}, ConcatFusion, num_classes=10)
    batch = synthetic_batch()
    batch["image"] = torch.randn(4, 3, 28, 28)
    with pytest.raises(ValueError, match=r"'image' input has shape \[4, 3, 28, 28\].*expects \[B, 1, \*, \*\]"):
        model(batch)


@pytest.mark.parametrize("head", [ConcatFusion, AttentionFusion])
def test_modality_dropout_and_missing_samples_give_finite_loss(head):
    pl.seed_everything(0)
    model = small_model(head, modality_dropout=0.5)
    batch = synthetic_batch(8)
    batch["present"]["image"][:3] = False
    model.train()
    present = model.presence(batch)
    assert torch.stack(list(present.values())).any(0).all()  # every sample keeps a modality
    loss = torch.nn.functional.cross_entropy(model(batch), batch["label"])
    loss.backward()
    assert torch.isfinite(loss)


def test_optimizer_and_scheduler_come_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = FusegenCLI(args=[
        "--config", str(REPO / "experiments/trainer.yaml"),
        "--config", str(REPO / "experiments/fusion/avmnist-multibench-lf.yaml"),
        "--lr_scheduler", "null",
        "--model.init_args.lr_scheduler",
        '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5}}',
    ], run=False)
    conf = cli.model.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.SGD)
    assert conf["optimizer"].defaults["lr"] == 0.1 and conf["optimizer"].defaults["weight_decay"] == 1e-4
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_cosine_schedule_follows_the_trainers_length(tmp_path):
    """Warm-up then cosine decay to 0, sized from whatever max_epochs the Trainer was given."""
    lrs: list[float] = []

    class RecordLR(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    dm = SyntheticMultimodalDataModule(num_train=80, num_val=16, num_test=16, batch_size=16)  # 5 batches/epoch
    model = small_model(optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), cosine_schedule=True, warmup_fraction=0.2)
    trainer = pl.Trainer(max_epochs=4, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordLR()])
    trainer.fit(model, datamodule=dm)
    assert len(lrs) == 20
    peak = lrs.index(max(lrs))
    assert peak == 4 and max(lrs) == pytest.approx(1e-2)          # 20% of 20 steps of warm-up
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rising, then
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # falling to ~0 at the end
    assert lrs[-1] < 0.02 * max(lrs)
    with pytest.raises(ValueError, match="either lr_scheduler or cosine_schedule"):
        small_model(cosine_schedule=True, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))


def test_unimodal_losses_teach_each_encoder_to_classify_alone(tmp_path):
    """With unimodal_loss_weight the per-modality heads learn (above chance on their modality
    alone) and add to the training loss; a batch without a modality still gives every head a grad."""
    pl.seed_everything(0)
    dm = SyntheticMultimodalDataModule(num_train=600, num_val=200, num_test=16, batch_size=32)
    model = small_model(unimodal_loss_weight=1.0, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    trainer = pl.Trainer(max_epochs=6, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert {"train/loss_image", "train/loss_audio"} <= set(trainer.callback_metrics)
    model.eval()
    correct, total = {"image": 0, "audio": 0}, 0
    from fusion.heads import pooled_features
    with torch.no_grad():
        for batch in dm.val_dataloader():
            present = model.presence(batch)
            feats, masks = model.encode(batch, present)
            pooled = pooled_features(feats, ["image", "audio"], present, masks)
            for (m, head), z in zip(model.unimodal_heads.items(), pooled):
                correct[m] += int((head(z).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    for m, c in correct.items():
        assert c / total > {"image": 0.18, "audio": 0.3}[m], f"{m} head alone: {c / total:.2f} (chance 0.10)"
    model = small_model(unimodal_loss_weight=1.0).train()  # (outside a Trainer: self.log only warns)
    batch = synthetic_batch(8)
    batch["present"]["audio"][:] = False
    model.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in model.unimodal_heads.parameters())
    with pytest.raises(ValueError, match=r"model.init_args.unimodal_loss_weight = -1 is not allowed: >= 0"):
        small_model(unimodal_loss_weight=-1)


# ---------------------------------------------------------------- hyperparameters and saving
def test_python_built_model_keeps_plain_hyperparameters_and_reloads(tmp_path):
    """Built modules, classes and callables are not pickled into hparams; what remains is config."""
    model = small_model(hidden_dims=[8], dropout=0.2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    assert set(model.hparams) == {"num_classes", "hidden_dims", "dropout", "modality_dropout", "drop_at_test",
                                  "lr_scheduler", "cosine_schedule", "warmup_fraction", "unimodal_loss_weight",
                                  "strict_modalities", "init_encoders_from", "freeze_encoders"}
    assert model.hparams.hidden_dims == [8] and model.hparams.dropout == 0.2
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert "encoders" not in torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    again = FusionClassifier.load_from_checkpoint(
        tmp_path / "m.ckpt", encoders={"image": SmallCNNImageEncoder(width=8, out_dim=16),
                                       "audio": MelCNNAudioEncoder(n_mels=20, width=8, out_dim=16)},
        fusion=ConcatFusion).eval()
    batch = synthetic_batch()
    torch.testing.assert_close(again(batch), model.eval()(batch))


def test_cli_trained_model_round_trips_through_save_pretrained(trained, tmp_path):
    cli, root = trained
    ckpt = root / "synthetic-concat" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]  # the CLI's config: plain data
    assert saved["_class_path"] == "fusion.FusionClassifier" and "class_path" in saved["encoders"]["image"]
    model = FusionClassifier.load_from_checkpoint(ckpt).eval()
    assert model.hparams["encoders"] == saved["encoders"]  # kept, so this model's checkpoints reload alike
    model.save_pretrained(tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"config.json", "model.safetensors"}
    again = FusionClassifier.from_pretrained(tmp_path / "model")
    batch = next(iter(cli.datamodule.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))
    assert not again.training


def test_unimodal_model_round_trips_through_save_pretrained(tmp_path):
    model = UnimodalClassifier("image", SmallCNNImageEncoder(width=8, out_dim=16), num_classes=10,
                               hidden_dims=[12]).eval()
    model.save_pretrained(tmp_path / "uni")
    again = UnimodalClassifier.from_pretrained(tmp_path / "uni")
    batch = synthetic_batch()
    torch.testing.assert_close(again(batch), model(batch))
    assert again.modality == "image" and again.classifier[1].out_features == 12


# ---------------------------------------------------------------- loss terms
def test_fusion_loss_hand_computed_with_unimodal_terms_on_present_samples_only():
    from fusion.module import fusion_loss

    label = torch.tensor([0, 1, 0])
    ln2, ln43 = math.log(2.0), math.log(4.0 / 3.0)
    audio = torch.tensor([[5.0, 0.0], [0.0, 5.0], [1.0, 2.0]], requires_grad=True)
    unimodal = {
        "image": torch.tensor([[math.log(3.0), 0.0], [100.0, -100.0], [0.0, 0.0]]),  # sample 1 absent
        "audio": audio,  # absent everywhere: no loss term, a zero gradient
        "text": torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [9.0, 9.0]]),
    }
    present = {"image": torch.tensor([True, False, True]), "audio": torch.zeros(3, dtype=torch.bool),
               "text": torch.tensor([False, True, False])}
    loss, terms = fusion_loss(torch.zeros(3, 2), label, unimodal, present, unimodal_loss_weight=0.5)
    assert set(terms) == {"image", "text"}
    assert terms["image"].item() == pytest.approx((ln43 + ln2) / 2)  # mean over the 2 present samples
    assert terms["text"].item() == pytest.approx(ln43)
    assert loss.item() == pytest.approx(ln2 + 0.5 * ((ln43 + ln2) / 2 + ln43))
    loss.backward()
    assert audio.grad is not None and (audio.grad == 0).all()
    plain, none = fusion_loss(torch.zeros(3, 2), label, unimodal, present, unimodal_loss_weight=0.0)
    assert plain.item() == pytest.approx(ln2) and set(none) == {"image", "text"}


def test_training_step_is_fused_loss_plus_weighted_unimodal_losses():
    torch.manual_seed(0)
    model = small_model(unimodal_loss_weight=0.5, dropout=0.0).train()
    batch = synthetic_batch(8)
    batch["present"]["audio"][:3] = False
    loss = model.training_step(batch, 0)
    present = model.presence(batch)
    feats, masks = model.encode(batch, present)
    label = batch["label"]
    expected = torch.nn.functional.cross_entropy(model.classifier(model.fusion(feats, present=present)), label)
    for m in ("image", "audio"):
        z = feats[m].mean(1)
        keep = present[m]
        expected = expected + 0.5 * torch.nn.functional.cross_entropy(model.unimodal_heads[m](z[keep]), label[keep])
    torch.testing.assert_close(loss, expected)
    assert not small_model().unimodal_heads  # weight 0: no auxiliary heads at all


def test_classifier_mlp_widths():
    model = small_model(hidden_dims=[8, 6])
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 8), (8, 6), (6, 10)]
    assert [type(m).__name__ for m in small_model(dropout=0.3).classifier] == ["Dropout", "Linear"]
    assert small_model(dropout=0.3).classifier[0].p == 0.3
    layers = small_model(hidden_dims=[8], dropout=0.3).classifier
    assert [type(m).__name__ for m in layers] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(m.p == 0.3 for m in layers if isinstance(m, torch.nn.Dropout))


# ---------------------------------------------------------------- train-vs-eval switches
def test_drop_at_test_only_outside_training():
    model = small_model(drop_at_test=["audio"])
    batch = synthetic_batch(6)
    batch["present"]["image"][0] = False
    model.train()
    present = model.presence(batch)
    assert present["audio"].all() and present["image"].tolist() == [False] + [True] * 5
    model.eval()
    present = model.presence(batch)
    assert not present["audio"].any() and present["image"].tolist() == [False] + [True] * 5
    out = model.predict_step(batch, 0)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(6))
    assert out["label"].tolist() == batch["label"].tolist()


def test_modality_dropout_only_in_training_and_keeps_one_modality():
    torch.manual_seed(0)
    model = small_model(modality_dropout=0.9)
    batch = synthetic_batch(64)
    batch["present"]["image"][:16] = False  # these samples have audio only: it must survive
    model.eval()
    assert all(torch.equal(p, batch["present"][m]) for m, p in model.presence(batch).items())
    model.train()
    present = model.presence(batch)
    stacked = torch.stack([present["image"], present["audio"]])
    assert stacked.any(0).all()                      # every sample keeps a modality
    assert present["audio"][:16].all()               # ...its only one, where it has one
    assert not present["image"][:16].any()           # an absent modality never comes back
    # Samples with both: one hidden w.p. 2 * 0.9 * 0.1 (both hidden -> both come back), ~9 of 48.
    hidden = int((~stacked[:, 16:]).sum())
    assert 2 <= hidden <= 20, hidden


def test_presence_without_mask_follows_the_batch_keys():
    model = small_model()
    batch = synthetic_batch(4)
    del batch["present"]
    present = model.presence(batch)
    assert present["image"].all() and present["audio"].all()
    del batch["audio"]
    assert not model.presence(batch)["audio"].any()


def test_cosine_schedule_values_at_given_steps():
    model = small_model(optimizer=lambda p: torch.optim.SGD(p, lr=1.0), cosine_schedule=True, warmup_fraction=0.2)
    optimizer, schedule = model.optimizer_and_cosine_schedule(total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # 2 warm-up steps (20% of 10): 0, 0.5; then 0.5 * (1 + cos(pi * (s - 2) / 8)) for s = 2..9
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 10)]
    assert lrs == pytest.approx(expected)


# ---------------------------------------------------------------- checks before work starts
@pytest.mark.parametrize("key,value", [("num_classes", 1), ("dropout", 1.0), ("dropout", -0.1),
                                       ("modality_dropout", 1.0), ("hidden_dims", [16, 0]), ("warmup_fraction", 1.0),
                                       ("unimodal_loss_weight", -1.0), ("drop_at_test", ["video"])])
def test_bad_option_is_refused_at_construction_naming_the_key(key, value):
    kwargs = {"num_classes": value} if key == "num_classes" else {key: value}
    encoders = {"image": SmallCNNImageEncoder(width=8, out_dim=16)}
    with pytest.raises(ValueError, match=rf"model\.init_args\.{key} = {re.escape(repr(value))}"):
        FusionClassifier(encoders, ConcatFusion, **{"num_classes": 10, **kwargs})


class _Bare(pl.LightningDataModule):
    """Synthetic loaders without num_classes/modalities: the model must look at a batch instead."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()


def _fit(model, datamodule, tmp_path):
    trainer = pl.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_train_batches=1,
                         limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.filterwarnings("ignore:.*no encoder")
@pytest.mark.parametrize("with_attributes", [True, False], ids=["datamodule-attributes", "first-batch"])
def test_num_classes_below_the_labels_fails_before_the_first_step(with_attributes, tmp_path):
    model = FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=5)
    before = [p.detach().clone() for p in model.parameters()]
    dm = (SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16) if with_attributes
          else _Bare())
    expected = r"model\.init_args\.num_classes = 5 .*(num_classes = 10|label [5-9])"
    with pytest.raises(ValueError, match=expected):
        _fit(model, dm, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no optimizer step was taken


@pytest.mark.parametrize("with_attributes", [True, False], ids=["datamodule-attributes", "first-batch"])
def test_unused_modality_warns_or_fails_when_strict(with_attributes, tmp_path):
    def dm():
        return (SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16)
                if with_attributes else _Bare())

    with pytest.warns(UserWarning, match=r"provides \['audio', 'text'\].*no encoder"):
        _fit(FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=10),
             dm(), tmp_path)
    strict = FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=10,
                              strict_modalities=True)
    with pytest.raises(ValueError, match=r"provides \['audio', 'text'\].*strict_modalities is true"):
        _fit(strict, dm(), tmp_path)
    uni = UnimodalClassifier("image", SmallCNNImageEncoder(width=8, out_dim=16), num_classes=10)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no encoder.*")
        _fit(uni, dm(), tmp_path)  # a baseline ignores the other modalities on purpose


def test_label_check_boundaries():
    """Labels must be < num_classes: 9 classes cannot hold label 9, 10 can."""
    model = FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=9)
    model._pending_batch_checks = {"labels"}
    with pytest.raises(ValueError, match=r"num_classes = 9 but the data has label 9.*at least 10"):
        model._check_batch({"label": torch.tensor([0, 9, 3])})
    model = FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=10)
    model._pending_batch_checks = {"labels"}
    model._check_batch({"label": torch.tensor([0, 9, 3])})
    assert not model._pending_batch_checks  # checked once, then never again


@pytest.mark.filterwarnings("ignore:.*no encoder")
def test_num_classes_one_below_the_datamodules_fails(tmp_path):
    model = FusionClassifier({"image": SmallCNNImageEncoder(width=8, out_dim=16)}, ConcatFusion, num_classes=9)
    dm = SyntheticMultimodalDataModule(num_train=32, num_val=16, num_test=16, batch_size=16)
    with pytest.raises(ValueError, match=r"model\.init_args\.num_classes = 9 is smaller than the datamodule's "
                                         r"num_classes = 10"):
        _fit(model, dm, tmp_path)
