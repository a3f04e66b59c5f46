"""Policy-gradient RL (REINFORCE, A2C, PPO) on gymnasium, trained by the Lightning Trainer."""

from rl.callbacks import LearningCurve
from rl.data import RolloutDataset
from rl.envs import check_action_space, check_env_id, make_vec_env
from rl.module import A2C, PPO, REINFORCE, PolicyGradient
from rl.networks import ActorCritic
from rl.rollout import RolloutCollector, compute_gae, evaluate_policy

__all__ = ["A2C", "PPO", "REINFORCE", "PolicyGradient", "ActorCritic", "LearningCurve", "RolloutCollector",
           "compute_gae", "RolloutDataset", "evaluate_policy", "make_vec_env", "check_env_id", "check_action_space"]
