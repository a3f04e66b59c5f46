"""Policy-gradient RL (REINFORCE, A2C, PPO) on gymnasium, trained by the Lightning Trainer."""

from rl import losses
from rl.callbacks import LearningCurve
from rl.data import RolloutDataset
from rl.envs import check_action_space, check_env_id, make_env, make_vec_env
from rl.module import A2C, PPO, REINFORCE, CurvePoint, PolicyGradient
from rl.networks import ActorCritic
from rl.rollout import RolloutCollector, compute_gae, evaluate_policy
from rl.video import write_video

__all__ = ["A2C", "PPO", "REINFORCE", "PolicyGradient", "CurvePoint", "ActorCritic", "LearningCurve",
           "RolloutCollector", "compute_gae", "RolloutDataset", "evaluate_policy", "make_env", "make_vec_env",
           "check_env_id", "check_action_space", "losses", "write_video"]
