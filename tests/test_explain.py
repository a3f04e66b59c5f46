"""fusion.explain: Shapley/leave-one-out modality contributions, Captum attributions, bad input."""

from __future__ import annotations

import pytest
import torch
from tiny_encoders import Flat
from torch import nn

from fusion import ConcatFusion, FusionClassifier, LeNetImageEncoder, MeanFusion, TransformerTextEncoder
from fusion import explain as ex


def batches_of(data: dict, size: int = 64) -> list[dict]:
    n = len(data["label"])
    return [{k: v[i:i + size] for k, v in data.items()} for i in range(0, n, size)]


def test_shapley_of_a_hand_computed_game():
    v = {frozenset(): 0.0, frozenset("a"): 1.0, frozenset("b"): 2.0, frozenset("ab"): 4.0}
    phi = ex.shapley_values(v, ["a", "b"])
    # a: half the orders add it first (gain 1), half after b (gain 4 - 2 = 2)
    assert phi == pytest.approx({"a": 1.5, "b": 2.5})
    assert ex.leave_one_out(v, ["a", "b"]) == pytest.approx({"a": 2.0, "b": 3.0})


def test_shapley_efficiency_overall_and_per_class():
    torch.manual_seed(0)
    mods = ["image", "audio", "text"]
    model = FusionClassifier({m: Flat(6, 8) for m in mods}, ConcatFusion, num_classes=3, dropout=0.0)
    data = {m: torch.randn(150, 6) for m in mods}
    data["label"] = torch.randint(0, 3, (150,))
    preds, label = ex.subset_predictions(model, batches_of(data), mods)
    assert len(preds) == 8  # every subset, the empty one included
    contrib = ex.modality_contributions(preds, label, mods, ["neg", "neu", "pos"])
    assert contrib.rows[0] == "all" and set(contrib.rows[1:]) <= {"neg", "neu", "pos"}
    for r in contrib.rows:
        acc = contrib.accuracy[r]
        assert sum(contrib.shapley[r].values()) == pytest.approx(acc[frozenset(mods)] - acc[frozenset()], abs=1e-9)
    # the subsets really are different inputs: some subset changes some prediction
    assert any(not torch.equal(preds[frozenset(mods)], p) for p in preds.values())


def test_symmetric_modalities_get_equal_shares():
    """Modalities a and b go through one shared encoder and identical projections and carry the same
    input; c differs. Shapley's symmetry axiom: a and b get equal values."""
    torch.manual_seed(1)
    shared = Flat(5, 8)
    model = FusionClassifier({"a": shared, "b": shared, "c": Flat(5, 8)}, lambda d: MeanFusion(d, out_dim=8),
                             num_classes=4, dropout=0.0)
    with torch.no_grad():
        model.fusion.proj["b"].load_state_dict(model.fusion.proj["a"].state_dict())
    x = torch.randn(200, 5)
    label = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    data = {"a": x, "b": x.clone(), "c": torch.randn(200, 5), "label": label}
    preds, label = ex.subset_predictions(model, batches_of(data), ["a", "b", "c"])
    contrib = ex.modality_contributions(preds, label, ["a", "b", "c"])
    for r in contrib.rows:
        assert contrib.shapley[r]["a"] == pytest.approx(contrib.shapley[r]["b"], abs=1e-12)
    assert contrib.shapley["all"]["a"] != pytest.approx(contrib.shapley["all"]["c"], abs=1e-6)


def test_the_modality_that_holds_the_label_gets_most_of_the_contribution():
    torch.manual_seed(0)
    n, classes = 600, 4
    label = torch.randint(0, classes, (n,))
    image = torch.nn.functional.one_hot(label, 8).float() * 2.0 + 0.3 * torch.randn(n, 8)  # the label is here
    audio = torch.randn(n, 8)  # pure noise
    model = FusionClassifier({"image": Flat(8, 16), "audio": Flat(8, 16)}, ConcatFusion, num_classes=classes,
                             dropout=0.0, modality_dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    train = batches_of({"image": image[:400], "audio": audio[:400], "label": label[:400]})
    model.train()
    for _ in range(15):
        for b in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(b), b["label"]).backward()
            opt.step()
    test = batches_of({"image": image[400:], "audio": audio[400:], "label": label[400:]})
    preds, y = ex.subset_predictions(model, test)
    contrib = ex.modality_contributions(preds, y, ["image", "audio"])
    phi = contrib.shapley["all"]
    assert contrib.accuracy["all"][frozenset({"image", "audio"})] > 0.9
    assert phi["image"] / (abs(phi["image"]) + abs(phi["audio"])) >= 0.8
    assert contrib.loo["all"]["image"] > 0.5 and abs(contrib.loo["all"]["audio"]) < 0.1


def test_integrated_gradients_completeness_and_gradcam_on_a_cnn():
    torch.manual_seed(0)
    model = FusionClassifier({"image": LeNetImageEncoder(channels=4, additional_layers=1, out_dim=8),
                              "audio": Flat(4, 8)}, ConcatFusion, num_classes=3).eval()
    sample = {"image": torch.rand(1, 1, 28, 28), "audio": torch.randn(1, 4), "label": torch.tensor([1])}
    attr, gap = ex.integrated_gradients(model, sample, "image", target=2)
    assert attr.shape == sample["image"].shape
    with torch.no_grad():
        change = float(model(sample)[0, 2] - model({**sample, "image": torch.zeros_like(sample["image"])})[0, 2])
    # completeness: the attributions add up to F(x) - F(baseline), up to the path integral's error
    assert abs(float(attr.sum()) - change) == pytest.approx(gap, abs=1e-6)
    assert gap <= ex.IG_COMPLETENESS_TOLERANCE * abs(change) + 1e-6
    cam = ex.grad_cam(model, sample, "image", target=2)
    assert cam.shape[-2:] == (28, 28) and bool((cam >= 0).all())


def test_token_attributions_cover_real_tokens_only():
    torch.manual_seed(0)
    text = TransformerTextEncoder(config={"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 32})
    model = FusionClassifier({"text": text}, ConcatFusion, num_classes=2).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]])
    sample = {"text": {"input_ids": ids, "attention_mask": (ids != 0).long()}, "label": torch.tensor([0])}
    attr = ex.token_attributions(model, sample, "text", target=1, n_steps=8)
    assert attr.shape == (7,) and bool((attr[5:] == 0).all()) and bool((attr[:5] != 0).any())


def test_explaining_on_data_without_a_modality_names_it():
    class ImageOnly:
        modalities = ("image",)

    model = FusionClassifier({"image": Flat(3, 4), "audio": Flat(3, 4)}, ConcatFusion, num_classes=2)
    with pytest.raises(ValueError, match=r"the model uses \['audio'\].*ImageOnly.modalities"):
        ex.check_data_modalities(model, ImageOnly())
    with pytest.raises(ValueError, match=r"\['audio'\].*first test batch"):
        ex.check_data_modalities(model, None, {"image": torch.zeros(2, 3), "label": torch.zeros(2)})


def test_more_than_four_modalities_is_refused():
    mods = [f"m{i}" for i in range(5)]
    model = FusionClassifier({m: Flat(2, 2) for m in mods}, ConcatFusion, num_classes=2)
    with pytest.raises(ValueError, match="5 modalities"):
        ex.subset_predictions(model, [], mods)
