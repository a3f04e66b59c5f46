"""Gymnasium environments for the agents: checked ids and spaces, vectorised by one of three
backends, with episode statistics and optional observation/reward normalisation (gymnasium's own
vector wrappers, applied alike on every backend).

Backends (``vector_backend``): ``sync`` (``SyncVectorEnv``, envs stepped in turn), ``async``
(``AsyncVectorEnv``, one subprocess per env) and ``envpool`` (EnvPool's C++ thread pool, same ids
as gymnasium for MuJoCo and ``ALE/...`` Atari). All keep gymnasium 1.x's *next-step* autoreset:
the step that ends an episode returns its final observation, and the following step of that
sub-env ignores the action and returns the reset observation with reward 0. ``rl.rollout``
masks those reset steps.

Atari ids (``ALE/<Game>-v5``) get the standard preprocessing on every backend (``rl.atari``).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import vector as vw

SUPPORTED_SPACES = "Discrete, or a 1-D Box (continuous actions)"
BACKENDS = ("sync", "async", "envpool")
# env families that need a package gymnasium does not install: (id test, pip package, what it is)
EXTRAS = (
    (lambda i: i.startswith("ALE/"), "ale-py", "Atari (ALE)"),
    (lambda i: i.split("-")[0] in {"HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "HumanoidStandup",
                                   "Swimmer", "Reacher", "Pusher", "InvertedPendulum", "InvertedDoublePendulum"},
     "mujoco", "MuJoCo"),
    (lambda i: i.split("-")[0] in {"LunarLander", "LunarLanderContinuous", "BipedalWalker",
                                   "BipedalWalkerHardcore", "CarRacing"}, "box2d", "Box2D"),
)
INSTALL_HINT = "pip install 'fusegen[rl]' (the rl extra: gymnasium[mujoco], ale-py, envpool, box2d) or pip install {}"


def missing_extra(package: str, what: str, err: BaseException | str) -> ImportError:
    """The error for an env family whose package is not installed: names the pip package and the extra."""
    return ImportError(f"{what} environments need the {package!r} package, which is not installed or failed to "
                       f"import ({err}). Install it: {INSTALL_HINT.format(package)}")


def register_known_envs() -> None:
    """Register the namespaces of installed extras (``ale_py``'s ``ALE/...`` ids), once."""
    if any(i.startswith("ALE/") for i in gym.registry):
        return
    try:
        from ale_py.registration import register_v5_envs
    except ImportError:
        return
    register_v5_envs()  # importing ale_py registers them too, but only the first time


def _extra_for(env_id: str) -> tuple[str, str] | None:
    for test, package, what in EXTRAS:
        if test(env_id):
            return package, what
    return None


def _registered_ids() -> list[str]:
    return sorted(gym.registry.keys())


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` naming the id, close matches and where to look when it is not registered.

    ``module:EnvId`` (gymnasium's own syntax) imports ``module`` first, so an env that registers
    itself on import needs no other code."""
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"env_id {module + ':' + env_id!r}: cannot import module {module!r} ({err})") from err
    register_known_envs()
    if env_id in gym.registry:
        return
    extra = _extra_for(env_id)
    if extra is not None and extra[0] == "ale-py":
        try:
            import ale_py  # noqa: F401
        except ImportError as err:
            raise missing_extra(*extra, err) from None
    close = difflib.get_close_matches(env_id, _registered_ids(), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"env_id {env_id!r} is not a registered gymnasium environment.{hint} "
                     f"Any id in gymnasium.registry works, e.g. CartPole-v1, Acrobot-v1, Pendulum-v1, "
                     f"MountainCarContinuous-v0 (print sorted(gymnasium.registry) for all).")


def check_action_space(space: gym.Space, env_id: str = "") -> None:
    """The agents sample from a Categorical (``Discrete``) or a diagonal Gaussian (1-D ``Box``)."""
    if isinstance(space, gym.spaces.Discrete):
        return
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return
    where = f" of {env_id!r}" if env_id else ""
    raise ValueError(f"action space {space}{where} is not supported; supported action spaces: "
                     f"{SUPPORTED_SPACES}. Wrap the env (e.g. gymnasium.wrappers.FlattenObservation / a "
                     f"custom ActionWrapper) to expose one of them.")


def resolve_wrappers(wrappers: Sequence[str | dict[str, Any]] | None, key: str = "wrappers"
                     ) -> list[tuple[type, dict[str, Any]]]:
    """``[{class_path: gymnasium.wrappers.FlattenObservation, init_args: {...}}, ...]`` (or plain
    class-path strings) -> ``[(class, init_args), ...]``; errors name ``key[i]`` and the class path."""
    resolved = []
    for i, entry in enumerate(wrappers or []):
        where = f"{key}[{i}]"
        if isinstance(entry, str):
            entry = {"class_path": entry}
        if not isinstance(entry, dict) or "class_path" not in entry:
            raise ValueError(f"{where} = {entry!r}: expected {{class_path: module.WrapperClass, init_args: {{...}}}} "
                             f"or a class-path string, e.g. gymnasium.wrappers.FlattenObservation")
        unknown = set(entry) - {"class_path", "init_args"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: class_path, init_args")
        class_path, init_args = str(entry["class_path"]), dict(entry.get("init_args") or {})
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name) if module_name else None
        except (ImportError, AttributeError):
            cls = None
        if not isinstance(cls, type) or not issubclass(cls, gym.Wrapper):
            raise ValueError(f"{where}.class_path = {class_path!r} is not an importable gymnasium.Wrapper class "
                             f"(e.g. gymnasium.wrappers.FlattenObservation, or your_module.YourWrapper)")
        resolved.append((cls, init_args))
    return resolved


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None,
             wrappers: Sequence[str | dict[str, Any]] | None = None, render_mode: str | None = None) -> gym.Env:
    """One env: ``gymnasium.make(env_id, **env_kwargs)`` with the ``wrappers`` applied in order
    (first listed = innermost)."""
    check_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if is_atari(env_id):
        from rl.atari import make_atari_env

        env = _make_or_name_extra(make_atari_env, env_id, kwargs)
    else:
        env = _make_or_name_extra(gym.make, env_id, kwargs)
    for cls, init_args in resolve_wrappers(wrappers):
        env = cls(env, **init_args)
    return env


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def _make_or_name_extra(make: Any, env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    try:
        return make(env_id, **kwargs)
    except (gym.error.DependencyNotInstalled, ImportError) as err:
        extra = _extra_for(env_id)
        if extra is None:
            raise
        raise missing_extra(*extra, err) from None


def make_vec_env(env_id: str, num_envs: int, *, seed: int | None = None, normalize_obs: bool = False,
                 normalize_reward: bool = False, gamma: float = 0.99, env_kwargs: dict[str, Any] | None = None,
                 record_stats: bool = True, asynchronous: bool = False,
                 wrappers: Sequence[str | dict[str, Any]] | None = None, backend: str = "sync",
                 training: bool = False, norm_clip: float | None = None) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``make_env(env_id, env_kwargs, wrappers)`` stepped by ``backend``
    (``sync``, ``async`` = ``asynchronous=True``: one process per env, or ``envpool``).

    Wrapper order matters: episode statistics sit *inside* the normalisers (and Atari's
    training-only life-loss terminals and reward clipping) so logged returns are the true game
    scores; continuous actions are clipped to the bounds inside the env, so the agent's
    log-probabilities stay those of the unclipped Gaussian sample. ``norm_clip`` clips normalised
    observations and rewards to ``[-norm_clip, norm_clip]`` (CleanRL/SB3's 10).
    """
    if backend not in BACKENDS:
        raise ValueError(f"vector_backend {backend!r} is not supported; use one of {', '.join(BACKENDS)}")
    backend = "async" if asynchronous else backend
    check_env_id(env_id)
    resolve_wrappers(wrappers)  # fail here, not inside a worker process
    if backend == "envpool":
        from rl.envpool import EnvPoolVectorEnv

        if wrappers:
            raise ValueError(f"vector_backend 'envpool' runs {env_id!r} in C++ and cannot apply the gymnasium "
                             f"wrappers {list(wrappers)}; use vector_backend 'sync' or 'async' with wrappers")
        envs = EnvPoolVectorEnv(env_id, num_envs, seed=seed, env_kwargs=env_kwargs)
    else:
        vector_cls = gym.vector.AsyncVectorEnv if backend == "async" else gym.vector.SyncVectorEnv
        envs = vector_cls([lambda: make_env(env_id, env_kwargs, wrappers) for _ in range(num_envs)])
    check_action_space(envs.single_action_space, env_id)
    if isinstance(envs.single_action_space, gym.spaces.Box):
        envs = vw.ClipAction(envs)
    if record_stats:
        envs = vw.RecordEpisodeStatistics(envs)
    if training and is_atari(env_id):
        from rl.atari import atari_training_wrappers

        envs = atari_training_wrappers(envs)
    if normalize_obs:
        envs = vw.NormalizeObservation(envs)
        if norm_clip is not None:
            envs = vw.TransformObservation(envs, lambda obs: np.clip(obs, -norm_clip, norm_clip))
    if normalize_reward:
        envs = vw.NormalizeReward(envs, gamma=gamma)
        if norm_clip is not None:
            envs = vw.TransformReward(envs, lambda reward: np.clip(reward, -norm_clip, norm_clip))
    if seed is not None:
        envs.action_space.seed(seed)
    return envs


def _find(envs: gym.vector.VectorEnv, cls: type) -> Any | None:
    env = envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, cls):
            return env
        env = env.env
    return None


def obs_normalizer(envs: gym.vector.VectorEnv) -> Any | None:
    return _find(envs, vw.NormalizeObservation)


def normalization_state(envs: gym.vector.VectorEnv) -> dict[str, dict[str, Any]]:
    """The running statistics of the env's normalisers, as plain arrays (checkpoint-ready)."""
    state = {}
    if (w := _find(envs, vw.NormalizeObservation)) is not None:
        state["obs_rms"] = _rms_state(w.obs_rms)
    if (w := _find(envs, vw.NormalizeReward)) is not None:
        state["return_rms"] = _rms_state(w.return_rms)
    return state


def load_normalization_state(envs: gym.vector.VectorEnv, state: dict[str, dict[str, Any]]) -> None:
    for key, cls, attr in (("obs_rms", vw.NormalizeObservation, "obs_rms"),
                           ("return_rms", vw.NormalizeReward, "return_rms")):
        if key not in state:
            continue
        w = _find(envs, cls)
        if w is None:
            raise ValueError(f"checkpoint has {key} statistics but the env has no {cls.__name__}; "
                             f"resume with the same normalize_obs/normalize_reward settings")
        rms = getattr(w, attr)
        rms.mean = np.array(state[key]["mean"], dtype=np.float64)
        rms.var = np.array(state[key]["var"], dtype=np.float64)
        rms.count = float(state[key]["count"])


def _rms_state(rms: Any) -> dict[str, Any]:
    return {"mean": np.array(rms.mean, dtype=np.float64).copy(), "var": np.array(rms.var, dtype=np.float64).copy(),
            "count": float(rms.count)}
