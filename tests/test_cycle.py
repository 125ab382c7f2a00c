"""`wmpo cycle` end to end on real tiny (untrained) models: every stage runs, the candidate is
gated and published with its record, and the report is written. Wiring, not learning."""

from __future__ import annotations

import json
import shutil

from wmpo_core.cli import main as wmpo_main
from wmpo_core.registry import Registry
from wmpo_core.store import EpisodeStore


def test_cycle_runs_every_stage_and_publishes_a_gated_candidate(tmp_path):
    from tests.test_grpo_loop import _tiny_real_models

    models = tmp_path / "models"
    models.mkdir()
    _tiny_real_models(models)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(models / "store", work / "store")
    reg = Registry(tmp_path / "registry", create=True)
    reg.promote(reg.publish(models / "policy"))
    args = [
        "cycle", "--workdir", str(work), "--registry", str(reg.root), "--task", "Lift",
        "--world-model", str(models / "wm"), "--reward", str(models / "rm"),
        "--wm-minutes", "0", "--reward-minutes", "0", "--grpo-iterations", "1",
        "--gate-states", "3", "--threads", "1",
        "--grpo-set", "groups_per_step=1", "group_size=4", "max_chunks=2",
        "minibatch_trajectories=4", "micro_batch_trajectories=4", "rollout_batch_size=4",
        "success_rate_low=0.0", "success_rate_high=1.0",
    ]  # fmt: skip
    assert wmpo_main([*args, "--dry-run"]) == 0
    assert Registry(reg.root).versions() == ["v0001"]  # a dry run changes nothing
    assert wmpo_main(args) == 0
    run = work / "cycles" / "c0001"
    state = json.loads((run / "state.json").read_text())
    assert state["done"]
    stages = sorted(state["stages"], key=lambda n: state["stages"][n]["started"])
    assert stages == ["ingest", "world_model", "reward", "grpo", "gate", "publish", "report"]
    assert all(s["status"] == "done" for s in state["stages"].values())
    gate = json.loads((run / "gate.json").read_text())
    assert set(gate["checks"]) == {
        "finite_actions", "actions_in_bounds", "action_shift_ok", "beats_parent",
        "safety_interventions_ok", "imagination_agrees_with_reality",
    }  # fmt: skip
    assert 0.0 <= gate["candidate_interventions_per_step"] <= 1.0
    # The agreement check replayed every labelled Lift episode of the store; with one outcome
    # only it cannot judge (NaN) and the default floor 0.75 then refuses to trust imagination.
    store = EpisodeStore(work / "store")
    labels = [m.success for m in store.metas() if m.task == "Lift" and m.success is not None]
    agreement = gate["imagination_agreement"]
    assert agreement["episodes"] == len(labels) and agreement["successes"] == sum(labels)
    assert gate["min_agreement"] == 0.75
    if 0 < sum(labels) < len(labels):
        assert 0.0 <= agreement["agreement"] <= 1.0
        trusted = agreement["agreement"] >= 0.75
    else:
        assert agreement["agreement"] != agreement["agreement"]  # NaN
        trusted = False
    assert gate["checks"]["imagination_agrees_with_reality"] == trusted
    reg = Registry(reg.root)
    assert reg.versions() == ["v0001", "v0002"]
    manifest = reg.manifest("v0002")
    assert manifest["parent"] == "v0001" and manifest["gates"]["passed"] == gate["passed"]
    assert reg.promoted() == ("v0002" if gate["passed"] else "v0001")
    report = (work / "report.md").read_text()
    assert report.startswith("# wmpo cycle report")
    assert "imagination agrees with reality" in report
    assert json.loads((work / "models.json").read_text())["world_model"] == str(models / "wm")
    # A finished cycle is not re-run: the next invocation starts c0002.
    assert wmpo_main([*args, "--dry-run"]) == 0
    assert (work / "cycles" / "c0002").exists()


def test_cycle_config_refuses_a_gate_agreement_floor_outside_zero_one(tmp_path):
    import pytest

    from offline_trainer.cycle import CycleConfig
    from wmpo_core.errors import WmpoError

    for bad in (-0.1, 1.5):
        with pytest.raises(WmpoError, match="gate_min_agreement must be in"):
            CycleConfig(workdir=tmp_path, registry=tmp_path / "r", gate_min_agreement=bad)
    assert CycleConfig(workdir=tmp_path, registry=tmp_path / "r").gate_min_agreement == 0.75
