"""Auto-rollback decision after a promotion (pure: no I/O, no ROS).

After version `new` is promoted over `previous`, the robot's next episodes are
watched. Rollback is recommended when, over the evaluation window:

- success: the new version's success rate is below the previous version's by more
  than `success_margin` (decided early as soon as even all-successes in the rest of
  the window could not lift it back within the margin), or
- safety: safety interventions per episode (safety-filter clamps, e-stops) exceed
  `intervention_factor` x the previous rate + `intervention_slack` (checked from
  `min_episodes` on, because a burst of interventions is a hazard, not just a regression).

Otherwise, once the window is full, the version is kept. A margin, not a
hypothesis test, is the rule an operator can read; `tests/test_runtime_monitor.py`
measures how often it fires on noise (same true success rate) and on a planted
regression with the default window.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from wmpo_core.errors import WmpoError
from wmpo_core.runtime.safety import CLAMPED, ESTOP, NONFINITE, STEP_LIMITED, WORKSPACE, WRONG_SHAPE

KEEP = "keep"
ROLLBACK = "rollback"
UNDECIDED = "undecided"


@dataclass
class MonitorConfig:
    window_episodes: int = 40
    """N: labelled episodes of the new version to judge it on. With 40 episodes, margin
    0.15 and a previous record of 100 episodes, the rule fired on 4.6 % of simulated
    equal-rate (0.7 vs 0.7) promotions and on 94.7 % / 99.9 % of 0.7 -> 0.4 / 0.3
    regressions (2,000 trials each; docs/registry.md)."""
    min_episodes: int = 10
    """No verdict (early rollback included) before this many labelled episodes."""
    success_margin: float = 0.15
    """Rollback if success(new) < success(previous) - margin over the window."""
    intervention_factor: float = 2.0
    """Rollback if interventions/episode(new) > factor x previous + slack."""
    intervention_slack: float = 0.5
    """Absolute slack on interventions per episode (a previous rate of 0 must not make one
    intervention a regression)."""

    def __post_init__(self) -> None:
        if self.window_episodes < 1 or not 1 <= self.min_episodes <= self.window_episodes:
            raise WmpoError(
                f"MonitorConfig: need 1 <= min_episodes <= window_episodes, got "
                f"min_episodes={self.min_episodes}, window_episodes={self.window_episodes}"
            )
        if not 0.0 <= self.success_margin < 1.0:
            raise WmpoError(
                f"MonitorConfig: success_margin must be in [0, 1), got {self.success_margin}"
            )
        if self.intervention_factor < 1.0 or self.intervention_slack < 0.0:
            raise WmpoError(
                "MonitorConfig: need intervention_factor >= 1 and intervention_slack >= 0, got "
                f"{self.intervention_factor}, {self.intervention_slack}"
            )


@dataclass
class EpisodeOutcome:
    version: str
    """Policy version that ran the episode."""
    success: bool | None
    """Outcome label; None (unlabelled) counts for interventions only."""
    interventions: int = 0
    """Safety interventions during the episode (filter clamps, e-stops)."""


@dataclass
class VersionStats:
    episodes: int = 0
    labelled: int = 0
    successes: int = 0
    interventions: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.labelled if self.labelled else float("nan")

    @property
    def interventions_per_episode(self) -> float:
        return self.interventions / self.episodes if self.episodes else float("nan")

    def add(self, outcome: EpisodeOutcome) -> None:
        self.episodes += 1
        self.interventions += int(outcome.interventions)
        if outcome.success is not None:
            self.labelled += 1
            self.successes += int(bool(outcome.success))


def stats_for(
    outcomes: Iterable[EpisodeOutcome], version: str, last: int | None = None
) -> VersionStats:
    """Stats of one version's episodes (the most recent `last` of them if given)."""
    mine = [o for o in outcomes if o.version == version]
    if last is not None:
        mine = mine[-last:]
    stats = VersionStats()
    for o in mine:
        stats.add(o)
    return stats


@dataclass
class Decision:
    action: str
    """'keep', 'rollback' or 'undecided'."""
    reason: str
    new: VersionStats
    previous: VersionStats


@dataclass
class RollbackMonitor:
    """Feed it the episodes after a promotion; it says keep, rollback or not yet."""

    new_version: str
    previous_version: str
    previous: VersionStats
    """The previous version's record (e.g. stats_for(history, previous, last=window))."""
    config: MonitorConfig = field(default_factory=MonitorConfig)
    new: VersionStats = field(default_factory=VersionStats)

    def __post_init__(self) -> None:
        if self.previous.labelled == 0:
            raise WmpoError(
                f"RollbackMonitor: no labelled episodes of the previous version "
                f"{self.previous_version} to compare against; label some, or promote without "
                "auto-rollback"
            )

    def observe(self, outcome: EpisodeOutcome) -> Decision:
        """Count an episode of the new version (others are ignored) and decide."""
        if outcome.version == self.new_version and self.new.labelled < self.config.window_episodes:
            self.new.add(outcome)
        return self.decide()

    def observe_all(self, outcomes: Sequence[EpisodeOutcome]) -> Decision:
        decision = self.decide()
        for o in outcomes:
            decision = self.observe(o)
            if decision.action != UNDECIDED:
                break
        return decision

    def decide(self) -> Decision:
        cfg, new, prev = self.config, self.new, self.previous
        if new.labelled < cfg.min_episodes:
            return self._decision(UNDECIDED, f"{new.labelled}/{cfg.min_episodes} labelled episodes")
        limit = prev.interventions_per_episode * cfg.intervention_factor + cfg.intervention_slack
        if new.interventions_per_episode > limit:
            return self._decision(
                ROLLBACK,
                f"safety interventions {new.interventions_per_episode:.2f}/episode over "
                f"{new.episodes} episodes > limit {limit:.2f} "
                f"({self.previous_version}: {prev.interventions_per_episode:.2f})",
            )
        floor = prev.success_rate - cfg.success_margin
        # Best case: every remaining episode of the window succeeds.
        remaining = cfg.window_episodes - new.labelled
        best = (new.successes + remaining) / cfg.window_episodes
        if best < floor:
            return self._decision(
                ROLLBACK,
                f"success {new.successes}/{new.labelled} ({new.success_rate:.2f}) cannot reach "
                f"{floor:.2f} = {self.previous_version}'s {prev.success_rate:.2f} - margin "
                f"{cfg.success_margin:.2f} within {cfg.window_episodes} episodes",
            )
        if remaining == 0:
            return self._decision(
                KEEP,
                f"success {new.success_rate:.2f} >= {floor:.2f} over {new.labelled} episodes; "
                f"interventions {new.interventions_per_episode:.2f}/episode <= {limit:.2f}",
            )
        return self._decision(UNDECIDED, f"{new.labelled}/{cfg.window_episodes} labelled episodes")

    def _decision(self, action: str, reason: str) -> Decision:
        return Decision(action, f"{self.new_version}: {reason}", self.new, self.previous)


# -- wired to a registry: what policy_node runs ------------------------------------------

OUTCOMES_FILE = "episodes.jsonl"
"""Labelled real episodes per version, appended under the registry root (survives restarts)."""

SAFETY_REASONS = (NONFINITE, CLAMPED, STEP_LIMITED, WORKSPACE, ESTOP, WRONG_SHAPE)
"""Executor interventions that count as safety interventions (not the holds while a chunk
is late: those measure inference latency, not the policy's behaviour)."""


class AutoRollback:
    """Watches a registry's promotions and rolls a regressing version back.

    `record()` is called once per labelled real episode. It appends the outcome to
    `<registry>/episodes.jsonl`, and when the promoted version came from a promotion
    (not a rollback) it judges that version against the one it replaced, with the
    previous version's last `window_episodes` labelled episodes as the reference.
    On ROLLBACK it calls `Registry.rollback` (only if the version is still the promoted
    one: an operator's later promotion wins); the policy node then hot-swaps back.
    """

    def __init__(self, registry, config: MonitorConfig | None = None, log=print):
        self.registry = registry
        self.config = config or MonitorConfig()
        self.log = log
        self.path = registry.root / OUTCOMES_FILE
        self.outcomes: list[EpisodeOutcome] = self._load()
        self.monitor: RollbackMonitor | None = None
        self._judged: set[str] = set()

    def _load(self) -> list[EpisodeOutcome]:
        out = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    out.append(EpisodeOutcome(d["version"], d["success"], int(d["interventions"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: skip it, keep the rest
        return out

    def _append(self, outcome: EpisodeOutcome, episode_id: str) -> None:
        line = json.dumps(
            {
                "version": outcome.version,
                "success": outcome.success,
                "interventions": outcome.interventions,
                "episode_id": episode_id,
                "time": time.time(),
            }  # fmt: skip
        )
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _sync(self) -> bool:
        """Start judging the promoted version if a promotion put it there; True when a new
        monitor was started (it has then already seen every logged episode of the version)."""
        pointer = self.registry.pointer()
        current = pointer.get("version")
        if self.monitor is not None and self.monitor.new_version == current:
            return False
        self.monitor = None
        last = (pointer.get("history") or [{}])[-1]
        if current in self._judged or last.get("action") != "promote" or not last.get("from"):
            return False
        if last.get("version") != current:
            return False
        previous = last["from"]
        try:
            self.monitor = RollbackMonitor(
                current,
                previous,
                stats_for(self.outcomes, previous, last=self.config.window_episodes),
                self.config,
            )
        except WmpoError as exc:
            self._judged.add(current)
            self.log(f"auto-rollback off for {current}: {exc}")
            return False
        self.monitor.observe_all([o for o in self.outcomes if o.version == current])
        return True

    def record(self, outcome: EpisodeOutcome, episode_id: str = "") -> Decision | None:
        """Log one labelled episode; returns the decision about the promoted version, if any."""
        self._append(outcome, episode_id)
        self.outcomes.append(outcome)
        started = self._sync()
        if self.monitor is None:
            return None
        decision = self.monitor.decide() if started else self.monitor.observe(outcome)
        if decision.action == UNDECIDED:
            return decision
        version = self.monitor.new_version
        self._judged.add(version)
        self.monitor = None
        if decision.action == ROLLBACK:
            self._rollback(version, decision)
        else:
            self.log(f"auto-rollback: keeping {decision.reason}")
        return decision

    def _rollback(self, version: str, decision: Decision) -> None:
        if self.registry.promoted() != version:
            self.log(f"auto-rollback: {version} is no longer promoted; nothing to do")
            return
        pointer = self.registry.rollback(reason=f"auto-rollback: {decision.reason}")
        self.log(f"auto-rollback to {pointer['version']}: {decision.reason}")


def safety_interventions(counts: dict[str, int]) -> int:
    """Sum of the executor's intervention counters that are safety interventions."""
    return sum(int(counts.get(k, 0)) for k in SAFETY_REASONS)
