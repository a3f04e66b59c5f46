"""fusion.export: ONNX / torch.export of a fusion model (missing modalities via present_<m>), a policy and a
generator, each checked against PyTorch; untraceable models are named."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny_encoders import Flat

from fusion import AttentionFusion, FusionClassifier
from fusion import export as fe
from generative import Generator
from rl import ActorCritic


class Branchy(Flat):
    """Python control flow on a tensor's value: not traceable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.lin(x).unsqueeze(1)
        return -self.lin(x).unsqueeze(1)


def test_fusion_model_onnx_matches_pytorch_with_a_missing_modality(tmp_path):
    torch.manual_seed(0)
    model = FusionClassifier({"image": Flat(5, 8), "audio": Flat(3, 8)},
                             lambda d: AttentionFusion(d, d_model=8, num_heads=2), num_classes=4).eval()
    batch = {"image": torch.randn(6, 5), "audio": torch.randn(6, 3),
             "present": {"image": torch.tensor([1, 1, 0, 1, 1, 1]).bool(),
                         "audio": torch.tensor([1, 0, 1, 1, 0, 1]).bool()}}
    ex = fe.fusion_exportable(model, batch)
    assert ex.input_names == ["image", "audio", "present_image", "present_audio"]
    path, diff = fe.export_and_check(ex, tmp_path / "model.onnx")
    assert diff <= fe.TOLERANCE
    session = fe.onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ex.input_names

    def run(image, audio, present_audio):
        return session.run(None, {"image": image.numpy(), "audio": audio.numpy(),
                                  "present_image": np.ones(len(image), bool), "present_audio": present_audio})[0]

    # another batch size (dynamic axis), audio marked absent: its input no longer matters ...
    image = torch.randn(3, 5)
    absent = np.zeros(3, bool)
    a, b = run(image, torch.randn(3, 3), absent), run(image, torch.zeros(3, 3), absent)
    assert np.abs(a - b).max() < 1e-6
    # ... and the graph agrees with PyTorch's "audio missing"
    with torch.no_grad():
        ref = model({"image": image, "audio": torch.zeros(3, 3), "present": {"audio": torch.zeros(3, dtype=bool)}})
    assert np.abs(a - ref.numpy()).max() <= fe.TOLERANCE


def test_policy_exports_to_onnx(tmp_path):
    torch.manual_seed(0)
    policy = ActorCritic(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Box(-2, 2, (2,), np.float32))
    ex = fe.policy_exportable(policy, torch.randn(5, 4))
    path, diff = fe.export_and_check(ex, tmp_path / "policy.onnx")
    assert diff <= fe.TOLERANCE
    out = fe.onnx_session(path).run(None, {"obs": np.random.randn(2, 4).astype(np.float32)})[0]
    assert out.shape == (2, 2)


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_conditional_generator_exports(tmp_path, fmt):
    torch.manual_seed(0)
    gen = Generator(nz=8, ngf=4, image_size=16, cond_dim=3, cond_embed=4)
    ex = fe.generator_exportable(gen, torch.randn(4, 8), torch.eye(3)[[0, 1, 2, 0]])
    assert ex.input_names == ["z", "condition"]
    path, diff = fe.export_and_check(ex, tmp_path / ("g.onnx" if fmt == "onnx" else "g.pt2"), fmt)
    assert diff <= fe.TOLERANCE and path.stat().st_size > 0


def test_an_untraceable_encoder_is_named_with_the_fix(tmp_path):
    model = FusionClassifier({"image": Flat(5, 8), "audio": Branchy(3, 8)},
                             lambda d: AttentionFusion(d, d_model=8, num_heads=2), num_classes=2).eval()
    ex = fe.fusion_exportable(model, {"image": torch.randn(2, 5), "audio": torch.randn(2, 3)})
    with pytest.raises(fe.ExportError, match=r"module model\.encoders\.audio \(Branchy\).*Fix:"):
        fe.export_and_check(ex, tmp_path / "m.pt2", "torch-export")
