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


# -- AutoRollback: the rule wired to a real registry ----------------------------------------


def _registry_with_two_versions(tmp_path):
    import torch

    from wmpo_core.checkpoint import save_checkpoint
    from wmpo_core.registry import Registry

    reg = Registry(tmp_path / "reg", create=True, lock_timeout_s=10)
    versions = []
    for i in range(2):
        src = save_checkpoint(
            tmp_path / f"src{i}", kind="policy", config={"preset": "tiny"},
            state_dict={"w": torch.full((4,), float(i))},
        )  # fmt: skip
        versions.append(reg.publish(src))
    reg.promote(versions[0])
    return reg, versions


def test_auto_rollback_undoes_a_planted_regression_in_the_registry(tmp_path):
    from wmpo_core.runtime_monitor import AutoRollback

    reg, (v1, v2) = _registry_with_two_versions(tmp_path)
    cfg = MonitorConfig(window_episodes=20, min_episodes=5)
    logs: list[str] = []
    auto = AutoRollback(reg, cfg, log=logs.append)
    for o in outcomes(v1, 8, 10):  # v1: 80 %
        assert auto.record(o) is None  # v1 came from no promotion over another: nothing to judge
    reg.promote(v2, reason="nightly")
    actions = []
    while ROLLBACK not in actions and len(actions) < 20:
        actions.append(auto.record(EpisodeOutcome(v2, False)).action)
    # 0/k cannot reach 80 % - 15 % within 20 episodes once k > 7; no verdict before 5.
    assert actions == [UNDECIDED] * 7 + [ROLLBACK], actions
    assert reg.promoted() == v1
    last = reg.history()[-1]
    assert last["action"] == "rollback" and last["from"] == v2
    assert last["reason"].startswith("auto-rollback") and logs[-1].startswith("auto-rollback to")
    # Episodes the rolled-back version still finishes are logged, and nothing else happens.
    assert auto.record(EpisodeOutcome(v2, False)) is None and reg.promoted() == v1


def test_auto_rollback_keeps_a_good_version_and_survives_a_restart(tmp_path):
    from wmpo_core.runtime_monitor import OUTCOMES_FILE, AutoRollback

    reg, (v1, v2) = _registry_with_two_versions(tmp_path)
    cfg = MonitorConfig(window_episodes=10, min_episodes=5)
    auto = AutoRollback(reg, cfg, log=lambda _: None)
    for o in outcomes(v1, 5, 10):
        auto.record(o)
    reg.promote(v2)
    for o in outcomes(v2, 5, 6):
        auto.record(o)
    # The node restarts mid-window: the log under the registry root carries the record.
    with open(reg.root / OUTCOMES_FILE, "a") as f:
        f.write('{"version": "v00')  # a torn line from a crash mid-append is skipped
    auto = AutoRollback(reg, cfg, log=lambda _: None)
    assert len(auto.outcomes) == 16
    decisions = [auto.record(o) for o in outcomes(v2, 4, 4)]
    assert decisions[-1].action == KEEP and reg.promoted() == v2


def test_auto_rollback_without_a_baseline_stays_off_and_says_so(tmp_path):
    from wmpo_core.runtime_monitor import AutoRollback

    reg, (v1, v2) = _registry_with_two_versions(tmp_path)
    logs: list[str] = []
    auto = AutoRollback(reg, MonitorConfig(window_episodes=10, min_episodes=2), log=logs.append)
    reg.promote(v2)  # v1 never ran a labelled episode
    for _ in range(5):
        assert auto.record(EpisodeOutcome(v2, False)) is None
    assert reg.promoted() == v2 and "auto-rollback off" in logs[0] and len(logs) == 1


def test_safety_interventions_count_only_safety_reasons():
    from wmpo_core.runtime.safety import REASONS
    from wmpo_core.runtime_monitor import SAFETY_REASONS, safety_interventions

    assert set(SAFETY_REASONS) <= set(REASONS)
    counts = dict.fromkeys(REASONS, 1)
    assert safety_interventions(counts) == len(SAFETY_REASONS)  # queue_empty etc. excluded
