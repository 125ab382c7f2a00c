"""`wmpo eval policy --through-nodes`: the evaluation episodes through the real ROS graph.

sim_node -> policy_node (the checkpoint, greedy) -> executor_node (chunk queue + safety
filter) -> sim_node, with episode_node starting, resetting and labelling each episode
from the sim's success flag. Episode k resets the sim with seed `seed_start + k` (sim_node
increments its `seed` parameter at every reset), so the initial states are those of the
in-process evaluation with the same `--seed-start`.

Unlike the in-process loop, which counts sim steps, an episode here is bounded in
wall-clock time, as on a robot: `timeout_s`, by default the task's horizon at 20 Hz with
50 % slack for a sim that runs slower than real time on a loaded CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from wmpo_core.errors import WmpoError

CONTROL_RATE_HZ = 20.0


def default_timeout_s(task: str, horizon: int | None = None) -> float:
    from wmpo_core.sim.tasks import task_spec

    steps = horizon or task_spec(task).horizon
    return 1.5 * steps / CONTROL_RATE_HZ


def evaluate_through_nodes(
    checkpoint: str | Path,
    task: str,
    episodes: int,
    seed_start: int,
    log_dir: Path,
    timeout_s: float | None = None,
    image_size: int = 64,
    domain: int | None = None,
    progress: bool = True,
):
    """Run `episodes` labelled episodes of `checkpoint` through the node graph -> EvalResult."""
    from offline_trainer.eval_policy import EpisodeResult, EvalResult
    from wmpo_core.rosenv import pick_domain_id
    from wmpo_nodes.demo import Driver, Graph

    ckpt = Path(checkpoint).resolve()
    if not (ckpt / "manifest.json").is_file():
        raise WmpoError(f"{checkpoint}: not a policy checkpoint (no manifest.json)")
    timeout_s = timeout_s or default_timeout_s(task)
    if domain is None:
        env = os.environ.get("ROS_DOMAIN_ID")
        domain = int(env) if env else pick_domain_id()
    params = [
        f"sim_node:task:={task}",
        f"sim_node:image_size:={image_size}",
        f"sim_node:seed:={seed_start}",
        f"policy_node:policy:={ckpt}",
        f"policy_node:task:={task}",
        f"policy_node:image_size:={image_size}",
        "policy_node:use_privileged_state:=false",
        f"episode_node:task:={task}",
        f"episode_node:max_duration_s:={timeout_s}",
    ]
    result = EvalResult(task=task, policy_version="")
    bar = _bar(episodes, task) if progress else None
    with Graph("sim", params, ["record:=false"], log_dir, domain) as graph:
        driver = Driver(domain)
        try:
            driver.wait_ready(graph)
            result.policy_version = driver.version
            for k in range(episodes):
                r = driver.run_episode(graph, timeout_s)
                result.episodes.append(
                    EpisodeResult(
                        seed=r.seed if r.seed is not None else seed_start + k,
                        success=r.label == "success",
                        length=round(r.active_seconds * CONTROL_RATE_HZ),
                        seconds=r.seconds,
                    )
                )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{result.successes}/{result.n}")
        finally:
            driver.close()
            if bar is not None:
                bar.close()
    return result


def _bar(total: int, task: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"eval {task} (nodes)", unit="ep", dynamic_ncols=True)
