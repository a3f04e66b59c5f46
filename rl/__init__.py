"""Policy-gradient RL (REINFORCE, A2C, PPO) on gymnasium, trained by the Lightning Trainer."""
