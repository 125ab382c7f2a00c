"""Which action the arm executes at each control tick, given the chunks the policy sent.

A chunk is K actions computed from one observation (stamp t_obs); action k is meant
for time t_obs + k*dt. Inference takes time, so a chunk arrives late. Three ways
to play chunks, chosen by the executor's `chunk_strategy` parameter:

- open_loop (the paper's mode, WMPO / OpenVLA-OFT): every action of every chunk is
  played in order; a chunk that arrives while another plays is queued behind it.
- temporal_ensemble (ACT, Zhao et al. 2023): each chunk starts at the tick after it
  arrives; every tick averages all chunks that cover it with weights exp(-m*i),
  i = 0 for the oldest chunk (ACT's convention; m = `ensemble_decay`).
- latency_aware: a new chunk replaces the rest of the current one, starting at the
  action its own stamp says is due now (the actions inference delay overtook are
  skipped), cross-fading over `blend_steps` actions so chunk boundaries do not jerk.

The schedulers are pure (time is passed in) and never let time go backwards: a
`now` earlier than the previous one raises, and within a chunk actions are played
in increasing index order.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("open_loop", "temporal_ensemble", "latency_aware")


@dataclass
class ChunkConfig:
    strategy: str = "open_loop"
    """One of STRATEGIES."""
    dt: float = 0.05
    """Control period in seconds (1 / control rate); also the spacing of a chunk's actions."""
    ensemble_decay: float = 0.01
    """temporal_ensemble: m in w_i = exp(-m*i); ACT's default 0.01 (older chunks count more)."""
    blend_steps: int = 2
    """latency_aware: actions over which the old chunk's tail fades into the new chunk."""
    max_queued_actions: int = 64
    """open_loop: a chunk that would grow the queue past this is dropped (backlog bound)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"chunk strategy must be one of {STRATEGIES}, got '{self.strategy}'")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0 s, got {self.dt}")
        if self.ensemble_decay < 0:
            raise ValueError(f"ensemble_decay must be >= 0, got {self.ensemble_decay}")
        if self.blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0, got {self.blend_steps}")
        if self.max_queued_actions < 1:
            raise ValueError(f"max_queued_actions must be >= 1, got {self.max_queued_actions}")


@dataclass
class ScheduledAction:
    action: np.ndarray
    """float64 [D]."""
    chunk_id: int
    """Id of the (newest contributing) chunk."""
    index: int
    """Index of the action within that chunk."""
    obs_stamp: float
    """Stamp of the observation that chunk was computed from (for the staleness check)."""


class ChunkScheduler:
    """Common bookkeeping; subclasses implement `_add` and `_next`."""

    def __init__(self, config: ChunkConfig):
        self.config = config
        self._now = -math.inf
        self._next_id = 0
        self.dropped_chunks = 0
        """Chunks discarded: out of order, fully overtaken by delay, or over the backlog."""
        self.skipped_actions = 0
        """latency_aware: actions skipped because inference delay overtook them."""

    def add_chunk(self, actions: np.ndarray, obs_stamp: float, now: float) -> int:
        """Queue a [K, D] chunk computed from an observation stamped `obs_stamp`; its id."""
        self._advance(now)
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"a chunk is [K, D] with K >= 1, got shape {a.shape}")
        cid = self._next_id
        self._next_id += 1
        self._add(cid, a, float(obs_stamp), now)
        return cid

    def next_action(self, now: float) -> ScheduledAction | None:
        """The action for the tick at `now`, or None when nothing is queued (hold)."""
        self._advance(now)
        return self._next(now)

    def clear(self) -> None:
        """Drop everything queued (e-stop, episode boundaries)."""
        raise NotImplementedError

    @property
    def queue_depth(self) -> int:
        """Actions still to play (excluding any ensemble overlap)."""
        raise NotImplementedError

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def _add(self, cid: int, actions: np.ndarray, obs_stamp: float, now: float) -> None:
        raise NotImplementedError

    def _next(self, now: float) -> ScheduledAction | None:
        raise NotImplementedError


class OpenLoopScheduler(ChunkScheduler):
    def __init__(self, config: ChunkConfig):
        super().__init__(config)
        self._queue: deque[ScheduledAction] = deque()

    def _add(self, cid, actions, obs_stamp, now):
        if len(self._queue) + len(actions) > self.config.max_queued_actions:
            self.dropped_chunks += 1
            return
        for k, a in enumerate(actions):
            self._queue.append(ScheduledAction(a, cid, k, obs_stamp))

    def _next(self, now):
        return self._queue.popleft() if self._queue else None

    def clear(self):
        self._queue.clear()

    @property
    def queue_depth(self):
        return len(self._queue)


@dataclass
class _Active:
    cid: int
    start_tick: int
    actions: np.ndarray
    obs_stamp: float


class TemporalEnsembleScheduler(ChunkScheduler):
    def __init__(self, config: ChunkConfig):
        super().__init__(config)
        self._tick = 0  # index of the next tick to play
        self._active: list[_Active] = []

    def _add(self, cid, actions, obs_stamp, now):
        self._active.append(_Active(cid, self._tick, actions, obs_stamp))

    def _next(self, now):
        tick = self._tick
        self._tick += 1
        self._active = [c for c in self._active if tick - c.start_tick < len(c.actions)]
        live = [c for c in self._active if tick >= c.start_tick]
        if not live:
            return None
        # ACT: w_i = exp(-m * i), i = 0 the oldest chunk that covers this tick.
        w = np.exp(-self.config.ensemble_decay * np.arange(len(live)))
        stack = np.stack([c.actions[tick - c.start_tick] for c in live])
        action = (w[:, None] * stack).sum(axis=0) / w.sum()
        newest = live[-1]
        return ScheduledAction(action, newest.cid, tick - newest.start_tick, newest.obs_stamp)

    def clear(self):
        self._active.clear()

    @property
    def queue_depth(self):
        if not self._active:
            return 0
        return max(c.start_tick + len(c.actions) for c in self._active) - self._tick


class LatencyAwareScheduler(ChunkScheduler):
    def __init__(self, config: ChunkConfig):
        super().__init__(config)
        self._queue: deque[ScheduledAction] = deque()
        self._pending: tuple[int, np.ndarray, float] | None = None
        self._current_stamp = -math.inf

    def _add(self, cid, actions, obs_stamp, now):
        # A chunk from an older observation than the one playing would move time backwards.
        newest = self._pending[2] if self._pending is not None else self._current_stamp
        if obs_stamp <= newest:
            self.dropped_chunks += 1
            return
        if self._pending is not None:
            self.dropped_chunks += 1  # superseded before it ever played
        # Resolved at the next tick, whose time decides how many actions are already due.
        self._pending = (cid, actions, obs_stamp)

    def _next(self, now):
        if self._pending is not None:
            self._switch(now)
        return self._queue.popleft() if self._queue else None

    def _switch(self, now: float) -> None:
        cid, actions, obs_stamp = self._pending
        self._pending = None
        # Action k is due at obs_stamp + k*dt: the ones before `now` were overtaken.
        start = max(0, math.floor((now - obs_stamp) / self.config.dt + 0.5))
        if start >= len(actions):
            self.dropped_chunks += 1
            self.skipped_actions += len(actions)
            return
        self.skipped_actions += start
        old = list(self._queue)
        new = [ScheduledAction(actions[k], cid, k, obs_stamp) for k in range(start, len(actions))]
        n_blend = min(self.config.blend_steps, len(old), len(new))
        for m in range(n_blend):
            alpha = (m + 1) / (self.config.blend_steps + 1)
            new[m].action = (1 - alpha) * old[m].action + alpha * new[m].action
        self._queue = deque(new)
        self._current_stamp = obs_stamp

    def clear(self):
        self._queue.clear()
        self._pending = None

    @property
    def queue_depth(self):
        pending = 0 if self._pending is None else len(self._pending[1])
        return max(len(self._queue), pending)


def make_scheduler(config: ChunkConfig) -> ChunkScheduler:
    cls = {
        "open_loop": OpenLoopScheduler,
        "temporal_ensemble": TemporalEnsembleScheduler,
        "latency_aware": LatencyAwareScheduler,
    }[config.strategy]
    return cls(config)


def request_lead_steps(latency_s: float, dt: float, margin_steps: int = 1) -> int:
    """Ask for the next chunk when this many actions remain, so the queue never runs dry.

    With inference latency L the new chunk lands ceil(L / dt) ticks after the request;
    one extra tick covers jitter (docs/runtime.md, "when to infer").
    """
    if latency_s < 0 or dt <= 0:
        raise ValueError(f"need latency >= 0 and dt > 0, got {latency_s}, {dt}")
    return int(math.ceil(latency_s / dt)) + margin_steps
