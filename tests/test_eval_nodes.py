"""`wmpo eval policy --through-nodes`: a checkpoint evaluated through the real ROS graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmpo_core.cli import main as wmpo_main

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

LIFT = Path(__file__).resolve().parents[1] / "assets" / "policies" / "Lift"


def test_committed_lift_policy_through_the_nodes(tmp_path, ros_domain_id, capsys):
    from wmpo_core.policy import load_policy_checkpoint

    report = tmp_path / "eval.json"
    rc = wmpo_main(
        [
            "eval",
            "policy",
            str(LIFT),
            "--task",
            "Lift",
            "--episodes",
            "2",
            "--through-nodes",
            "--seed-start",
            "100000",
            "--no-progress",
            "--logs",
            str(tmp_path / "logs"),
            "--json",
            str(report),
        ]  # fmt: skip
    )
    assert rc == 0
    s = json.loads(report.read_text())
    # The seeds come from the episode events, which carry the seed of the sim's reset.
    assert s["through_nodes"] and s["episodes"] == 2 and s["seeds"] == [100000, 100001]
    # policy_node announced the checkpoint it loaded: the one given on the command line.
    assert s["policy_version"] == load_policy_checkpoint(LIFT).version
    # Every episode ran (the graph labelled it) and was bounded by the wall-clock horizon.
    for ep in s["per_episode"]:
        assert 0 < ep["length"] <= 1.5 * 200 + 20, ep
    # The executor saw the policy's chunks: its log names the policy version it followed.
    assert "through the nodes" in capsys.readouterr().out
    sim_log = (tmp_path / "logs" / "sim_node.log").read_text()
    assert "reset Lift with seed 100001" in sim_log, sim_log[-1500:]


def test_through_nodes_refuses_the_random_baseline(capsys):
    assert wmpo_main(["eval", "policy", "random", "--task", "Lift", "--through-nodes"]) != 0
    assert "needs a checkpoint directory" in capsys.readouterr().err
