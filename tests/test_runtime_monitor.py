"""Auto-rollback decisions: fire on a planted regression, stay quiet on noise within the margin."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.errors import WmpoError
from wmpo_core.runtime_monitor import (
    KEEP,
    ROLLBACK,
    UNDECIDED,
    EpisodeOutcome,
    MonitorConfig,
    RollbackMonitor,
    VersionStats,
    stats_for,
)


def outcomes(
    version: str, successes: int, total: int, interventions: int = 0
) -> list[EpisodeOutcome]:
    # interleave successes and failures so early decisions see a representative prefix
    flags = np.zeros(total, bool)
    flags[np.linspace(0, total - 1, successes).round().astype(int)] = True
    return [EpisodeOutcome(version, bool(f), interventions) for f in flags]


def monitor(prev_successes=70, prev_total=100, prev_interventions=0, **cfg) -> RollbackMonitor:
    history = outcomes("v1", prev_successes, prev_total, prev_interventions)
    return RollbackMonitor("v2", "v1", stats_for(history, "v1"), MonitorConfig(**cfg))


def test_noise_within_the_margin_keeps_the_new_version():
    m = monitor(window_episodes=40, success_margin=0.15)
    decision = m.observe_all(outcomes("v2", 25, 40))  # 0.625 vs 0.70: within 0.15
    assert decision.action == KEEP, decision.reason
    assert m.new.labelled == 40


def test_planted_regression_triggers_rollback_early():
    m = monitor(window_episodes=40, success_margin=0.15)
    decision = m.observe_all(outcomes("v2", 8, 40))  # 0.20 vs 0.70
    assert decision.action == ROLLBACK
    assert "success" in decision.reason and "v1" in decision.reason
    assert m.new.labelled < 40  # decided before the window filled: it could no longer recover


def test_exact_boundary_of_the_margin():
    # previous 0.70, margin 0.15 -> floor 0.55: 22/40 = 0.55 keeps, 21/40 rolls back
    assert monitor().observe_all(outcomes("v2", 22, 40)).action == KEEP
    assert monitor().observe_all(outcomes("v2", 21, 40)).action == ROLLBACK


def test_no_verdict_before_min_episodes_and_other_versions_ignored():
    m = monitor(min_episodes=10, window_episodes=12)
    for o in outcomes("v2", 0, 9):
        assert m.observe(o).action == UNDECIDED
    assert m.observe(EpisodeOutcome("v1", False)).action == UNDECIDED  # not the new version
    assert m.new.episodes == 9
    assert m.observe(EpisodeOutcome("v2", False)).action == ROLLBACK  # 0/10: max 2/12 < 0.55


def test_safety_intervention_spike_triggers_rollback_even_with_good_success():
    m = monitor(prev_interventions=1)  # previous: 1 per episode -> limit 2 * 1 + 0.5
    decision = m.observe_all(outcomes("v2", 40, 40, interventions=3))
    assert decision.action == ROLLBACK and "interventions" in decision.reason
    calm = monitor(prev_interventions=1).observe_all(outcomes("v2", 30, 40, interventions=2))
    assert calm.action == KEEP


def test_unlabelled_episodes_count_for_safety_only():
    m = monitor()
    for _ in range(20):
        m.observe(EpisodeOutcome("v2", None, interventions=0))
    assert m.new.episodes == 20 and m.new.labelled == 0
    assert m.decide().action == UNDECIDED


def test_rates_on_simulated_promotions():
    """The default rule on 500 simulated promotions each (seeded): noise vs regressions."""
    rng = np.random.default_rng(0)
    cfg = MonitorConfig()

    def fire_rate(p_prev: float, p_new: float, trials: int = 500) -> float:
        fires = 0
        for _ in range(trials):
            prev = VersionStats(
                episodes=100, labelled=100, successes=int(rng.binomial(100, p_prev))
            )
            m = RollbackMonitor("v2", "v1", prev, cfg)
            flags = rng.random(cfg.window_episodes) < p_new
            d = m.observe_all([EpisodeOutcome("v2", bool(f)) for f in flags])
            fires += d.action == ROLLBACK
        return fires / trials

    assert fire_rate(0.7, 0.7) < 0.08  # same true rate: rarely a false alarm
    assert fire_rate(0.7, 0.4) > 0.9
    assert fire_rate(0.7, 0.3) > 0.98


def test_config_checks_and_missing_baseline():
    with pytest.raises(WmpoError, match="min_episodes"):
        MonitorConfig(window_episodes=5, min_episodes=10)
    with pytest.raises(WmpoError, match="success_margin"):
        MonitorConfig(success_margin=1.5)
    with pytest.raises(WmpoError, match="no labelled episodes"):
        RollbackMonitor("v2", "v1", VersionStats())
