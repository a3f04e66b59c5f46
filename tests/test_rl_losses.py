"""Every loss term and coefficient of the agents against hand-computed values, plus the schedules,
PPO's target_kl stop, GAE on a 3-step example and the learning-history checkpoint round trip."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from experiments.cli import FusegenCLI
from rl import A2C, PPO, REINFORCE, CurvePoint
from rl.losses import (
    actor_critic_loss,
    approx_kl,
    clip_fraction,
    clipped_surrogate_loss,
    clipped_value_loss,
    entropy_bonus,
    explained_variance,
    linear_schedule,
    normalize_advantages,
    policy_gradient_loss,
    value_loss,
)
from rl.rollout import compute_gae

PPO_CP = str(Path(__file__).resolve().parents[1] / "experiments" / "rl" / "ppo-cartpole.yaml")

# one minibatch of three samples, used throughout
LOGP = [-1.0, -0.5, -3.0]      # log pi(a|s) under the current policy
OLD_LOGP = [-1.0, -1.0, -1.0]  # at collection: log-ratios 0, 0.5, -2
ADV = [1.0, 2.0, -1.0]
VALUES = [1.0, 2.0, 3.0]
OLD_VALUES = [0.5, 2.5, 2.0]
RETURNS = [2.0, 2.0, 0.0]
ENTROPY = [0.5, 0.6, 0.7]

# by hand: ratios r = 1, e^0.5 = 1.6487, e^-2 = 0.1353; clip 0.2 -> 1, 1.2, 0.8
# -A r = -1, -3.2974, 0.1353; -A clip(r) = -1, -2.4, 0.8; max = -1, -2.4, 0.8
PPO_POLICY_LOSS = (-1.0 - 2.4 + 0.8) / 3
# -A log pi = 1, 1, -3 (REINFORCE / A2C)
PG_LOSS = (1.0 + 1.0 - 3.0) / 3
# (V - R)^2 = 1, 0, 9
VALUE_LOSS = 10.0 / 3
# clip_range_vf 0.25: V - V_old = 0.5, -0.5, 1 -> 0.25, -0.25, 0.25; clipped V = 0.75, 2.25, 2.25;
# its squared errors 1.5625, 0.0625, 5.0625; max with 1, 0, 9 -> 1.5625, 0.0625, 9
CLIPPED_VALUE_LOSS = (1.5625 + 0.0625 + 9.0) / 3
ENTROPY_MEAN = 0.6
# (r - 1) - log r = 0, (e^0.5 - 1) - 0.5, (e^-2 - 1) + 2
APPROX_KL = (0.0 + (math.exp(0.5) - 1.5) + (math.exp(-2) + 1)) / 3
# advantages standardised: mean 2/3, sample std sqrt(7/3)
ADV_STD = math.sqrt(7 / 3)
ADV_NORMALIZED = [(1 / 3) / ADV_STD, (4 / 3) / ADV_STD, (-5 / 3) / ADV_STD]


def t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor | float, expected: float) -> None:
    assert float(torch.as_tensor(actual).detach()) == pytest.approx(expected, rel=1e-6, abs=1e-9)


# ---- the pure functions ------------------------------------------------------------------------
def test_policy_gradient_loss_by_hand() -> None:
    logp = t(LOGP).requires_grad_()
    loss = policy_gradient_loss(logp, t(ADV))
    close(loss, PG_LOSS)
    loss.backward()
    torch.testing.assert_close(logp.grad, -t(ADV) / 3)  # d/dlogp of -mean(A logp); advantages get none


def test_clipped_surrogate_loss_by_hand() -> None:
    ratio = (t(LOGP) - t(OLD_LOGP)).exp()
    close(clipped_surrogate_loss(ratio, t(ADV), 0.2), PPO_POLICY_LOSS)
    # a wider clip lets the middle sample's ratio through: -2 * e^0.5 instead of -2.4; the third
    # (A < 0, r = 0.1353) is clipped up to 1 - clip = 0.3 -> -A * 0.3 = 0.3
    close(clipped_surrogate_loss(ratio, t(ADV), 0.7), (-1.0 - 2 * math.exp(0.5) + 0.3) / 3)
    # ratio 1 everywhere: the surrogate is the plain -mean(A)
    close(clipped_surrogate_loss(torch.ones(3, dtype=torch.float64), t(ADV), 0.2), -2.0 / 3)


def test_value_losses_by_hand() -> None:
    close(value_loss(t(VALUES), t(RETURNS)), VALUE_LOSS)
    close(clipped_value_loss(t(VALUES), t(OLD_VALUES), t(RETURNS), 0.25), CLIPPED_VALUE_LOSS)
    # a clip range the changes stay within: the clipped loss is the plain one
    close(clipped_value_loss(t(VALUES), t(OLD_VALUES), t(RETURNS), 10.0), VALUE_LOSS)


def test_entropy_kl_clip_fraction_explained_variance_by_hand() -> None:
    close(entropy_bonus(t(ENTROPY)), ENTROPY_MEAN)
    log_ratio = t(LOGP) - t(OLD_LOGP)
    close(approx_kl(log_ratio), APPROX_KL)
    close(approx_kl(torch.zeros(3)), 0.0)
    close(clip_fraction(log_ratio.exp(), 0.2), 2 / 3)  # |r - 1| = 0, 0.65, 0.86
    close(clip_fraction(log_ratio.exp(), 0.9), 0.0)
    close(explained_variance(t(RETURNS), t(RETURNS)), 1.0)
    # Var[R] = 4/3 (sample), R - V = 1, 0, -3 -> Var = 13/3: 1 - 13/4
    close(explained_variance(t(VALUES), t(RETURNS)), 1 - 13 / 4)
    close(explained_variance(t(VALUES), torch.ones(3, dtype=torch.float64)), 0.0)  # constant returns


def test_normalize_advantages_and_combination_by_hand() -> None:
    torch.testing.assert_close(normalize_advantages(t(ADV)), t(ADV_NORMALIZED))
    torch.testing.assert_close(normalize_advantages(t([3.0])), t([3.0]))  # one sample: left as is
    close(actor_critic_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), vf_coef=0.5, ent_coef=0.25),
          1.0 + 0.5 * 2.0 - 0.25 * 4.0)
    close(linear_schedule(0.2, 0.25), 0.05)


# ---- the agents combine them with their coefficients ----------------------------------------------
class StubPolicy(nn.Module):
    """``evaluate_actions`` returns the fixed minibatch values above (plus a zero parameter, so
    the loss has a graph)."""

    def __init__(self, observation_space, action_space) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def evaluate_actions(self, obs, actions):
        return t(LOGP) + self.w, t(ENTROPY) + self.w, t(VALUES) + self.w


def minibatch() -> dict[str, torch.Tensor]:
    return {"obs": torch.zeros(3, 4), "actions": torch.zeros(3), "logprobs": t(OLD_LOGP), "values": t(OLD_VALUES),
            "advantages": t(ADV), "returns": t(RETURNS)}


@pytest.mark.parametrize("vf_coef, ent_coef", [(0.5, 0.0), (0.7, 0.1), (0.0, 0.0), (1.0, 0.01)])
@pytest.mark.parametrize("clip_range_vf", [None, 0.25])
def test_ppo_loss_terms_and_coefficients(vf_coef: float, ent_coef: float, clip_range_vf: float | None) -> None:
    agent = PPO(policy=StubPolicy, vf_coef=vf_coef, ent_coef=ent_coef, clip_range=0.2, clip_range_vf=clip_range_vf,
                normalize_advantage=False)
    loss, stats = agent.loss(minibatch())
    v = VALUE_LOSS if clip_range_vf is None else CLIPPED_VALUE_LOSS
    close(stats["policy_loss"], PPO_POLICY_LOSS)
    close(stats["value_loss"], v)
    close(stats["entropy"], ENTROPY_MEAN)
    close(stats["approx_kl"], APPROX_KL)
    close(stats["clip_fraction"], 2 / 3)
    close(loss, PPO_POLICY_LOSS + vf_coef * v - ent_coef * ENTROPY_MEAN)


@pytest.mark.parametrize("cls", [A2C, REINFORCE])
@pytest.mark.parametrize("vf_coef, ent_coef", [(0.5, 0.0), (0.25, 0.05)])
def test_actor_critic_loss_terms_and_coefficients(cls: type, vf_coef: float, ent_coef: float) -> None:
    agent = cls(policy=StubPolicy, vf_coef=vf_coef, ent_coef=ent_coef, normalize_advantage=False)
    loss, stats = agent.loss(minibatch())
    close(stats["policy_loss"], PG_LOSS)
    close(stats["value_loss"], VALUE_LOSS)
    close(stats["entropy"], ENTROPY_MEAN)
    close(loss, PG_LOSS + vf_coef * VALUE_LOSS - ent_coef * ENTROPY_MEAN)


def test_normalize_advantage_switch() -> None:
    on = A2C(policy=StubPolicy, normalize_advantage=True)
    off = A2C(policy=StubPolicy)
    assert off.hparams.normalize_advantage is False  # the A2C (SB3) default
    torch.testing.assert_close(on.advantages(minibatch()), t(ADV_NORMALIZED))
    torch.testing.assert_close(off.advantages(minibatch()), t(ADV))
    # -mean(A_norm * logp) with A_norm * logp = (-1/3, -2/3, 5) / std
    close(on.loss(minibatch())[1]["policy_loss"], -(-1 / 3 - 2 / 3 + 5) / ADV_STD / 3)
    ppo = PPO(policy=StubPolicy)
    assert ppo.hparams.normalize_advantage is True
    # PPO: -A_norm r vs -A_norm clip(r), r = 1, e^0.5, e^-2: max(-0.2182, -0.2182), max(-1.4, -1.2)
    # (A_norm > 0: the clipped one), max(0.1472, 0.8729) (A_norm < 0, r < 0.8: the clipped one)
    expected = (-ADV_NORMALIZED[0] - ADV_NORMALIZED[1] * 1.2 - ADV_NORMALIZED[2] * 0.8) / 3
    close(ppo.loss(minibatch())[1]["policy_loss"], expected)


# ---- schedules and the KL stop ----------------------------------------------------------------------
@pytest.mark.parametrize("anneal", [True, False])
def test_lr_and_clip_annealing(anneal: bool) -> None:
    agent = PPO(policy=StubPolicy, total_timesteps=1000, clip_range=0.2, anneal_lr=anneal, anneal_clip=anneal)
    optimizer = agent.configure_optimizers()
    lr0 = optimizer.param_groups[0]["lr"]
    assert lr0 == 3e-4  # the default Adam
    for env_steps, remaining in [(0, 1.0), (250, 0.75), (1000, 0.0), (1500, 0.0)]:
        agent.env_steps = env_steps
        agent.update_schedule(optimizer)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr0 * remaining if anneal else lr0)
        assert agent.clip == pytest.approx(0.2 * remaining if anneal else 0.2)
        assert agent.extra_metrics()["train/clip_range"] == agent.clip


def test_target_kl_stop_rule() -> None:
    agent = PPO(policy=StubPolicy, target_kl=0.01)
    assert agent.stop_early({"approx_kl": [torch.tensor(0.0), torch.tensor(0.0151)]})  # > 1.5 x 0.01
    assert not agent.stop_early({"approx_kl": [torch.tensor(0.5), torch.tensor(0.0149)]})  # only the latest counts
    assert not PPO(policy=StubPolicy).stop_early({"approx_kl": [torch.tensor(10.0)]})  # target_kl None: never


def test_target_kl_stops_the_epochs(in_tmp: Path) -> None:
    def fit(tag: str, *args: str) -> FusegenCLI:
        return FusegenCLI(args=["fit", "--config", PPO_CP, "--trainer.enable_progress_bar", "false",
                                "--trainer.enable_model_summary", "false", "--experiment", tag, "--trainer.max_epochs",
                                "1", "--model.init_args.eval_every_steps", "512", "--model.init_args.n_eval_episodes",
                                "1", "--model.init_args.batch_size", "256", *args])

    plain = fit("kl-off")
    # 2 updates (512 env steps) x 20 epochs x 1 minibatch (a rollout has <= 256 valid steps)
    assert plain.model.num_updates == 2 and plain.trainer.global_step == 40
    stopped = fit("kl-on", "--model.init_args.target_kl", "1e-9")
    # the KL is measured before each minibatch step: 0 in epoch 1 (same policy), > 0 after it, so
    # every update stops after its 2nd epoch
    assert stopped.model.num_updates == 2 and stopped.trainer.global_step == 4


# ---- GAE on three steps -------------------------------------------------------------------------------
@pytest.mark.parametrize("ending, advantages", [
    # terminated at t=2: deltas d2 = 3 - 6 = -3, d1 = 2 + 0.5*6 - 5 = 0, d0 = 1 + 0.5*5 - 4 = -0.5;
    # A2 = -3, A1 = 0 + 0.25*(-3) = -0.75, A0 = -0.5 + 0.25*(-0.75) = -0.6875
    ("terminated", [-0.6875, -0.75, -3.0]),
    # truncated at t=2 (time limit): bootstrap from V(final obs) = 8: d2 = 3 + 0.5*8 - 6 = 1;
    # A1 = 0 + 0.25*1 = 0.25, A0 = -0.5 + 0.25*0.25 = -0.4375
    ("truncated", [-0.4375, 0.25, 1.0]),
    # the rollout just ends there (episode goes on): bootstraps exactly like a truncation
    ("running", [-0.4375, 0.25, 1.0]),
])
def test_gae_three_steps_by_hand(ending: str, advantages: list[float]) -> None:
    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[4.0], [5.0], [6.0]])
    last_value = torch.tensor([8.0])
    flag = torch.tensor([[False], [False], [True]])
    none = torch.zeros_like(flag)
    term, trunc = {"terminated": (flag, none), "truncated": (none, flag), "running": (none, none)}[ending]
    adv, ret = compute_gae(rewards, values, last_value, term, trunc, torch.ones_like(flag), gamma=0.5, gae_lambda=0.5)
    torch.testing.assert_close(adv, torch.tensor(advantages).unsqueeze(1))
    torch.testing.assert_close(ret, torch.tensor(advantages).unsqueeze(1) + values)


# ---- the learning history ------------------------------------------------------------------------------
def test_history_checkpoint_round_trip_is_exact() -> None:
    agent = PPO(policy=StubPolicy)
    agent.history = {"train": [CurvePoint(256, 21.125, 0.1234567891234), CurvePoint(512, 30.0, 0.25)],
                     "last100": [CurvePoint(256, 21.125, 0.12), CurvePoint(512, 25.5, 0.25)],
                     "eval": [CurvePoint(512, 1 / 3, 0.3)]}
    agent.recent_returns.extend([21.125, 30.0])
    agent.env_steps, agent.total_env_steps, agent.num_updates, agent.wall_time = 512, 512, 2, 0.3
    checkpoint: dict = {}
    agent.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    restored = PPO(policy=StubPolicy)
    restored.on_load_checkpoint(torch.load(buffer, weights_only=True))  # plain data: no pickled classes
    assert restored.history == agent.history
    assert all(isinstance(p, CurvePoint) for points in restored.history.values() for p in points)
    assert restored.history["eval"][0].mean_return == 1 / 3 and restored.history["train"][0].env_steps == 256
    assert (restored.env_steps, restored.num_updates, restored.wall_time) == (512, 2, 0.3)
    # the last-100-episodes window goes on where it stopped
    assert list(restored.recent_returns) == [21.125, 30.0] and restored.recent_returns.maxlen == 100
