"""Fusion heads: shapes, the presence mask (no NaN, absent modality ignored), attention weights."""

from __future__ import annotations

import pytest
import torch

from fusion import AttentionFusion, ConcatFusion, GatedFusion, LowRankTensorFusion, MeanFusion, TensorFusion

HEADS = [ConcatFusion, MeanFusion, AttentionFusion, GatedFusion, TensorFusion, LowRankTensorFusion]
DIMS = {"image": 12, "audio": 8, "text": 6}


def features(batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 4, 12, generator=g).requires_grad_(),
            "audio": torch.randn(batch, 3, 8, generator=g).requires_grad_(),
            "text": torch.randn(batch, 7, 6, generator=g).requires_grad_()}


@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_head_shape_and_gradients(head_cls):
    head = head_cls(DIMS)
    f = features()
    out = head(f)
    assert out.shape == (5, head.out_dim)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in f.values())  # every modality is used


@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_head_missing_modalities_no_nan_and_ignored(head_cls):
    torch.manual_seed(0)
    head = head_cls(DIMS).eval()
    f = features()
    present = {"image": torch.tensor([1, 0, 1, 0, 0]).bool(), "audio": torch.tensor([1, 1, 0, 0, 0]).bool(),
               "text": torch.tensor([1, 1, 1, 1, 0]).bool()}  # last sample: nothing at all
    text_mask = torch.ones(5, 7, dtype=torch.bool)
    text_mask[:, 4:] = False
    text_mask[3] = False  # a sample whose text is all padding
    out = head(f, present=present, token_mask={"text": text_mask})
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    assert torch.isfinite(f["image"].grad).all() and (f["image"].grad[~present["image"]] == 0).all()
    # An absent modality must not influence the output: scramble it, the fused vector stays put.
    scrambled = dict(f, image=torch.randn_like(f["image"]) * 100)
    out = out.detach()
    again = head(scrambled, present=present, token_mask={"text": text_mask})
    absent = ~present["image"]
    torch.testing.assert_close(again[absent], out[absent])
    assert not torch.allclose(again[~absent], out[~absent])  # ...while a present one does
    # Padding tokens are ignored too.
    padded = dict(f, text=f["text"].detach().clone())
    padded["text"][:, 4:] = 1e3
    torch.testing.assert_close(head(padded, present=present, token_mask={"text": text_mask}), out)


@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_head_whole_batch_missing_one_modality(head_cls):
    head = head_cls(DIMS)
    present = {"audio": torch.zeros(5, dtype=torch.bool)}
    out = head(features(), present=present)
    assert torch.isfinite(out).all()


def test_attention_weights_are_retrievable_and_respect_the_mask():
    head = AttentionFusion(DIMS, num_layers=2).eval()
    present = {"audio": torch.tensor([1, 0, 1, 1, 1]).bool()}
    head(features(), present=present)
    assert len(head.last_attention) == 2
    weights = head.last_attention[-1]  # [B, heads, T, T], T = 1 + 4 + 3 + 7
    assert weights.shape == (5, 4, 15, 15)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 4, 15))
    share = head.modality_attention()
    assert set(share) == {"image", "audio", "text"}
    assert share["audio"][1] == 0  # the missing audio of sample 1 gets no attention
    assert (share["audio"][[0, 2, 3, 4]] > 0).all()
    total = sum(share.values())
    assert (total <= 1 + 1e-5).all()  # the rest went to the fusion token itself


def test_gated_weights_sum_to_one_over_present_modalities():
    head = GatedFusion(DIMS)
    present = {"image": torch.tensor([1, 0, 1, 0, 0]).bool(), "audio": torch.tensor([1, 1, 0, 0, 0]).bool(),
               "text": torch.tensor([1, 1, 1, 1, 0]).bool()}
    out = head(features(), present=present)
    w = head.last_weights
    torch.testing.assert_close(w[:4].sum(-1), torch.ones(4))
    assert w[4].sum() == 0 and (out[4] == 0).all()  # nothing present -> zeros, not NaN
    assert w[1, 0] == 0 and w[3, 1] == 0





@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_head_output_does_not_depend_on_the_order_of_the_features_dict(head_cls):
    """Heads are built with in_dims in one order; a batch dict in another order gives the same vector."""
    torch.manual_seed(0)
    head = head_cls(DIMS).eval()
    f = features()
    present = {"image": torch.tensor([1, 0, 1, 1, 1]).bool(), "audio": torch.tensor([1, 1, 0, 1, 1]).bool(),
               "text": torch.tensor([1, 1, 1, 0, 1]).bool()}
    text_mask = torch.ones(5, 7, dtype=torch.bool)
    text_mask[:, 5:] = False
    out = head(f, present=present, token_mask={"text": text_mask})
    reordered = dict(reversed(list(f.items())))
    assert list(reordered) != list(DIMS)
    again = head(reordered, present=dict(reversed(list(present.items()))), token_mask={"text": text_mask})
    torch.testing.assert_close(again, out)


def test_mean_fusion_is_the_average_of_projected_vectors_over_present_modalities():
    head = MeanFusion({"a": 2, "b": 3}, out_dim=2)
    with torch.no_grad():
        head.proj["a"].weight.copy_(torch.eye(2))
        head.proj["a"].bias.zero_()
        head.proj["b"].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        head.proj["b"].bias.copy_(torch.tensor([1.0, -1.0]))
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],   # sample 0: mean (2, 3)
                      [[5.0, 1.0], [9.0, 9.0]]])  # sample 1: second token is padding -> (5, 1)
    b = torch.tensor([[[1.0, 2.0, 3.0]], [[7.0, 7.0, 7.0]]])
    out = head({"a": a, "b": b}, present={"b": torch.tensor([True, False])},
               token_mask={"a": torch.tensor([[True, True], [True, False]])})
    # sample 0: ((2, 3) + (1+2+3+1, -1)) / 2 = (4.5, 1); sample 1: b absent -> a alone = (5, 1)
    torch.testing.assert_close(out, torch.tensor([[4.5, 1.0], [5.0, 1.0]]))
    none_present = {"a": torch.zeros(2, dtype=torch.bool), "b": torch.zeros(2, dtype=torch.bool)}
    nothing = head({"a": a, "b": b}, present=none_present)
    assert (nothing == 0).all()
    assert head.out_dim == 2


@pytest.mark.parametrize("head_cls", HEADS, ids=lambda c: c.__name__)
def test_other_modalities_still_count_when_one_is_absent(head_cls):
    """Fusion without ``image`` must still read audio and text (e.g. tensor fusion's appended 1)."""
    torch.manual_seed(0)
    head = head_cls(DIMS).eval()
    f = {k: v.detach() for k, v in features().items()}
    present = {"image": torch.zeros(5, dtype=torch.bool)}
    out = head(f, present=present)
    for m in ("audio", "text"):
        changed = head(dict(f, **{m: torch.randn_like(f[m]) * 3}), present=present)
        assert not torch.allclose(changed, out, atol=1e-4), f"{m} ignored when image is absent"
