"""ACT's temporal ensembling (Zhao et al. 2023, "Learning Fine-Grained Bimanual Manipulation with Low-Cost
Hardware", Sec. 3.3): the policy is queried at every control step; each query predicts a chunk of the next
actions, so several chunks hold a prediction for the current step, and the executed action is their weighted
mean with ``w_i = exp(-m * i)``, ``i = 0`` for the OLDEST prediction (ACT's ``m = 0.01``; a larger ``m``
trusts old predictions more, ``m = 0`` is the plain mean).

:class:`TemporalEnsembler` holds these chunks for a batch of environments (one buffer each, reset at each
env's episode start); the rollouts use it, and the real-time loop's timestamped
:class:`~s2_policy.realtime.actions.ActionScheduler` blends with the same :func:`ensemble_weights`.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def ensemble_weights(n: int, m: float) -> np.ndarray:
    """Normalised weights of ``n`` predictions of one step, oldest first: ``exp(-m * i) / sum``."""
    if n < 1:
        raise ValueError(f"need at least one prediction to ensemble, got {n}")
    if m < 0:
        raise ValueError(f"the temporal ensembling coefficient m must be >= 0, got {m}")
    w = np.exp(-m * np.arange(n, dtype=np.float64))
    return w / w.sum()


class TemporalEnsembler:
    """Per-env buffers of predicted chunks; :meth:`add` a chunk predicted at the current step, then
    :meth:`pop` the ensembled action of that step (which advances the env by one step).

    Args:
        n_envs: number of environments (buffers).
        m: ACT's weight coefficient (``w_i = exp(-m * i)``, ``i = 0`` oldest).
    """

    def __init__(self, n_envs: int, m: float = 0.01) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        ensemble_weights(1, m)  # checks m
        self.n_envs, self.m = int(n_envs), float(m)
        # per env: chunks still covering a future step, oldest first, each as (first step it covers, actions)
        self._chunks: list[deque[tuple[int, np.ndarray]]] = [deque() for _ in range(self.n_envs)]
        self._step = [0] * self.n_envs

    def reset(self, env: int | None = None) -> None:
        """Forget the predictions of ``env`` (all envs if ``None``): call at each episode start."""
        for i in range(self.n_envs) if env is None else [env]:
            self._chunks[i].clear()
            self._step[i] = 0

    def add(self, env: int, chunk: np.ndarray) -> None:
        """Add ``chunk (N, A)`` predicted at ``env``'s current step (``chunk[j]``: for step current + j)."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise ValueError(f"an action chunk must be (n_actions, action_dim), got shape {chunk.shape}")
        buf = self._chunks[env]
        if buf and buf[0][1].shape[1] != chunk.shape[1]:
            raise ValueError(f"action_dim changed from {buf[0][1].shape[1]} to {chunk.shape[1]} within an "
                             "episode")
        buf.append((self._step[env], chunk))

    def predictions(self, env: int) -> np.ndarray:
        """Every stored prediction for ``env``'s current step, oldest first: ``(n, A)`` (``n`` may be 0)."""
        t = self._step[env]
        rows = [c[t - s] for s, c in self._chunks[env] if 0 <= t - s < len(c)]
        dim = self._chunks[env][0][1].shape[1] if self._chunks[env] else 0
        return np.stack(rows) if rows else np.zeros((0, dim), np.float32)

    def pop(self, env: int) -> np.ndarray:
        """The ensembled action ``(A,)`` for ``env``'s current step; then advance it one step."""
        preds = self.predictions(env)
        if len(preds) == 0:
            raise ValueError(f"env {env} has no prediction for its step {self._step[env]}: add a chunk first")
        action = np.tensordot(ensemble_weights(len(preds), self.m), preds, axes=1).astype(np.float32)
        self._step[env] += 1
        buf, t = self._chunks[env], self._step[env]
        while buf and buf[0][0] + len(buf[0][1]) <= t:   # chunks whose last step has passed
            buf.popleft()
        return action
