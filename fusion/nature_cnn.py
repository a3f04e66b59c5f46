"""The Nature-DQN CNN (Mnih et al. 2015, "Human-level control through deep reinforcement
learning") as a fusion image encoder: the pixel torso of DQN and of CleanRL's ``ppo_atari``.

Three convolutions (32 8x8 stride 4, 64 4x4 stride 2, 64 3x3 stride 1, ReLU) and a 512-wide
linear layer over the flattened map. It follows the encoder contract (``forward(x) -> [B, T, D]``
with ``out_dim``; here one token, ``T = 1``), so an RL agent (``rl.ActorCritic(encoder=...)``)
and a ``FusionClassifier`` can both use it, and either can swap it for any other image encoder.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fusion.encoders import Encoder


class NatureCNNEncoder(Encoder):
    """Args:
        in_chans: input channels (4 stacked greyscale frames for Atari; 1 or 3 for images).
        image_size: input height and width (84 for Atari); fixes the linear layer's width.
        out_dim: width of the final linear layer (512 in the paper).
        ortho_init: orthogonal weights with gain sqrt(2) and zero biases (CleanRL's ``layer_init``).
        freeze: stop gradients (a fixed feature extractor).
    Input ``[B, in_chans, image_size, image_size]`` scaled to 0..1; output ``[B, 1, out_dim]``.
    """

    def __init__(self, in_chans: int = 4, image_size: int = 84, out_dim: int = 512, ortho_init: bool = True,
                 freeze: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.input_shapes = ((in_chans, image_size, image_size),)
        self.convs = nn.Sequential(
            nn.Conv2d(in_chans, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_chans, image_size, image_size)).shape[1]
        self.fc = nn.Sequential(nn.Linear(flat, out_dim), nn.ReLU())
        if ortho_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.orthogonal_(m.weight, math.sqrt(2))
                    nn.init.zeros_(m.bias)
        if freeze:
            self.freeze()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(image)).unsqueeze(1)
