"""The gate's safety check: interventions the executor's filter would make on a policy's
actions, counted per executed step and only over the chunks a rollout was alive for."""

from __future__ import annotations

import numpy as np

from offline_trainer.gate import _agreement_check, intervention_rate


def _chunk(rows: list[list[float]]) -> np.ndarray:
    """One rollout's chunk [1, K, 7] from K rows of (x, gripper)."""
    return np.array([[[x, 0, 0, 0, 0, 0, g] for x, g in rows]], dtype=np.float64)


def test_smooth_in_bound_actions_need_no_intervention():
    chunks = [_chunk([[0.1, 1], [0.2, 1], [0.3, 1], [0.4, 1]])]
    assert intervention_rate(chunks, np.ones((1, 1), bool)) == 0.0


def test_out_of_bound_and_jumping_actions_are_counted_per_step():
    # step 1: fine; step 2: x = 1.4 clamped to 1.0 (and a 0.9 jump: step-limited, same step);
    # step 3: back to 0.1 from 0.5 (the limited previous command): fine; step 4: -0.6 jump.
    chunks = [_chunk([[0.0, 1], [1.4, 1], [0.1, 1], [-0.6, 1]])]
    assert intervention_rate(chunks, np.ones((1, 1), bool)) == 2 / 4


def test_chunks_after_a_rollout_ended_are_not_counted():
    good, bad = _chunk([[0.0, 1]] * 4), _chunk([[5.0, 1]] * 4)
    mask = np.array([[True, False]])  # the rollout ended (success) after its first chunk
    assert intervention_rate([good, bad], mask) == 0.0
    assert intervention_rate([good, bad], np.ones((1, 2), bool)) == 4 / 8


def test_imagination_agreement_floor():
    record = {"agreement": 0.45}
    assert not _agreement_check(record, 0.75)  # the demo's session-3 pair: refused
    assert _agreement_check({"agreement": 0.8}, 0.75)
    # One outcome only among the recent episodes: agreement cannot be judged, so no trust.
    assert not _agreement_check({"agreement": float("nan")}, 0.75)
    assert _agreement_check({"agreement": float("nan")}, 0.0)  # the check turned off
