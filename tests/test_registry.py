"""The checkpoint registry: atomic publish, refusal of bad checkpoints, promote/rollback, locking."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wmpo_core.checkpoint import save_checkpoint
from wmpo_core.cli import main as wmpo_main
from wmpo_core.errors import CheckpointError
from wmpo_core.registry import Registry, RegistryError, resolve_promoted

REPO = Path(__file__).resolve().parents[1]


def make_ckpt(path: Path, value: float = 0.0) -> Path:
    return save_checkpoint(
        path,
        kind="policy",
        config={"preset": "tiny"},
        state_dict={"w": torch.full((4,), value)},
        manifest_fields={"metrics": {"bc/loss": value}},
    )


@pytest.fixture
def reg(tmp_path) -> Registry:
    return Registry(tmp_path / "reg", create=True, lock_timeout_s=10)


def publish_n(reg: Registry, tmp_path: Path, n: int) -> list[str]:
    return [reg.publish(make_ckpt(tmp_path / f"src{i}", float(i))) for i in range(n)]


def test_publish_records_manifest_and_loads_back(reg, tmp_path):
    v1 = reg.publish(
        make_ckpt(tmp_path / "a", 1.0), bags=["bag_1"], episodes=["e1", "e2"], gates={"sim": "pass"}
    )
    v2 = reg.publish(make_ckpt(tmp_path / "b", 2.0), parent=v1, metrics={"eval/success": 0.8})
    assert (v1, v2) == ("v0001", "v0002") and reg.versions() == [v1, v2]
    m = reg.verify(v2)
    assert m["parent"] == v1 and m["registry"]["version"] == v2
    assert m["metrics"] == {"eval/success": 0.8}
    assert reg.manifest(v1)["data"] == {"bags": ["bag_1"], "episodes": ["e1", "e2"]}
    assert reg.manifest(v1)["gates"] == {"sim": "pass"}
    assert set(m["files"]) == {"config.json", "model.safetensors"}
    ckpt = reg.load(v2)
    assert torch.equal(ckpt.state_dict["w"], torch.full((4,), 2.0))
    assert reg.load(reg.versions_dir / v1).config == {"preset": "tiny"}
    with pytest.raises(RegistryError, match="no version v0009"):
        reg.load("v0009")
    with pytest.raises(RegistryError, match="v0009"):
        reg.publish(make_ckpt(tmp_path / "c"), parent="v0009")


_KILLED_PUBLISH = """
import sys, time
import wmpo_core.registry as r

def stuck(staging, final):  # everything is written; die before the rename
    print("STAGED", staging, flush=True)
    time.sleep(120)

r.atomic_publish_dir = stuck
r.Registry(sys.argv[1]).publish(sys.argv[2])
"""


def test_publish_killed_between_write_and_rename_leaves_no_version(reg, tmp_path):
    (v1,) = publish_n(reg, tmp_path, 1)
    src = make_ckpt(tmp_path / "killed", 5.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PUBLISH, str(reg.root), str(src)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("STAGED"), line
        staging = Path(line.split()[1])
        assert (staging / "model.safetensors").is_file() and (staging / "manifest.json").is_file()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert staging.is_dir()  # left behind ...
    assert reg.versions() == [v1]  # ... but never listed
    # the lock died with the process; the next publish cleans up and reuses the number
    v2 = reg.publish(make_ckpt(tmp_path / "next", 6.0))
    assert v2 == "v0002" and not staging.exists()
    assert torch.equal(reg.load(v2).state_dict["w"], torch.full((4,), 6.0))


def test_tampered_missing_manifest_pickle_and_foreign_checkpoints_are_refused(reg, tmp_path):
    v1, v2, v3, v4 = publish_n(reg, tmp_path, 4)
    weights = reg.versions_dir / v1 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        reg.load(v1)
    with pytest.raises(CheckpointError, match="sha256"):
        reg.promote(v1)
    (reg.versions_dir / v2 / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        reg.load(v2)
    torch.save({"w": torch.zeros(1)}, reg.versions_dir / v3 / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        reg.load(v3)
    # a valid checkpoint copied in by hand, or a manifest taken from another version
    make_ckpt(reg.versions_dir / "v0007")
    with pytest.raises(RegistryError, match="not published by the registry"):
        reg.load("v0007")
    manifest = json.loads((reg.versions_dir / v4 / "manifest.json").read_text())
    manifest["registry"]["version"] = "v0001"
    (reg.versions_dir / v4 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RegistryError, match="does not name this version"):
        reg.load(v4)


def test_paths_outside_the_root_are_refused(reg, tmp_path):
    publish_n(reg, tmp_path, 1)
    outside = make_ckpt(tmp_path / "elsewhere", 3.0)
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.load(outside)
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.load(reg.versions_dir / ".." / ".." / "elsewhere")
    (reg.versions_dir / "v0005").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="outside the registry"):
        reg.load(reg.versions_dir / "v0005")
    with pytest.raises(RegistryError, match="not a version name"):
        reg.path_of("../elsewhere")


def test_promote_rollback_round_trip(reg, tmp_path):
    v1, v2, v3 = publish_n(reg, tmp_path, 3)
    assert reg.promoted() is None
    with pytest.raises(RegistryError, match="no version promoted"):
        resolve_promoted(reg.root)
    for v in (v1, v2, v3):
        reg.promote(v, reason=f"gate passed {v}")
    reg.promote(v3)  # idempotent: no new event
    assert resolve_promoted(reg.root) == reg.versions_dir / v3
    assert reg.status_of(v2) == "previous"
    reg.rollback(reason="success dropped")
    assert reg.promoted() == v2 and reg.status_of(v3) == "rolled back"
    reg.rollback()
    assert reg.promoted() == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    reg.promote(v3)
    actions = [(e["action"], e["version"], e["from"]) for e in reg.history()]
    assert actions == [
        ("promote", v1, None),
        ("promote", v2, v1),
        ("promote", v3, v2),
        ("rollback", v2, v3),
        ("rollback", v1, v2),
        ("promote", v3, v1),
    ]
    assert reg.history()[3]["reason"] == "success dropped"
    # a rollback target that got corrupted is refused, and the pointer stays
    reg.promote(v2)  # stack: v1, v3, v2
    (reg.versions_dir / v3 / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sha256"):
        reg.rollback()
    assert reg.promoted() == v2 and len(reg.history()) == 7


def _promote_many(root: str, versions: list[str], worker: int, n: int, queue) -> None:
    reg = Registry(root, lock_timeout_s=60)
    recorded = []
    for j in range(n):
        reason = f"w{worker}-{j}"
        pointer = reg.promote(versions[(worker + j) % len(versions)], reason=reason)
        if pointer["history"] and pointer["history"][-1]["reason"] == reason:
            recorded.append(reason)
    queue.put(recorded)


def test_concurrent_promotes_lose_no_update(reg, tmp_path):
    versions = publish_n(reg, tmp_path, 3)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_promote_many, args=(str(reg.root), versions, w, 12, queue))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    recorded = [r for _ in procs for r in queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    history = reg.history()
    # every promote a worker saw succeed is in the final history, and the chain is unbroken
    assert sorted(e["reason"] for e in history) == sorted(recorded)
    assert len(recorded) > 12
    for before, after in zip(history, history[1:], strict=False):
        assert after["from"] == before["version"]
    pointer = reg.pointer()
    assert pointer["version"] == history[-1]["version"] == pointer["stack"][-1]
    assert len(pointer["stack"]) == len(history)


def _hold_lock(root: str, seconds: float, ready) -> None:
    with Registry(root).lock():
        ready.set()
        time.sleep(seconds)


def test_promote_waits_for_the_lock_and_times_out(reg, tmp_path):
    (v1,) = publish_n(reg, tmp_path, 1)
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(reg.root), 1.5, ready))
    holder.start()
    assert ready.wait(30)
    impatient = Registry(reg.root, lock_timeout_s=0.2)
    with pytest.raises(RegistryError, match="lock"):
        impatient.promote(v1)
    t0 = time.monotonic()
    reg.promote(v1)  # waits until the holder lets go
    assert time.monotonic() - t0 > 0.5
    holder.join(timeout=30)
    assert reg.promoted() == v1


def test_registry_cli(reg, tmp_path, capsys):
    src = make_ckpt(tmp_path / "cli_src", 1.0)
    root = str(reg.root)
    assert wmpo_main(["registry", "publish", str(src), "--root", root, "--bags", "b1", "b2"]) == 0
    assert wmpo_main(["registry", "publish", str(src), "--root", root, "--parent", "v0001"]) == 0
    assert wmpo_main(["registry", "promote", "v0001", "--root", root]) == 0
    assert wmpo_main(["registry", "promote", "v0002", "--root", root, "--reason", "gate ok"]) == 0
    capsys.readouterr()
    assert wmpo_main(["registry", "ls", "--root", root]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["VERSION", "STATUS", "PARENT"]
    rows = {line.split()[0]: line for line in out[1:]}
    assert "promoted" in rows["v0002"] and "previous" in rows["v0001"]
    assert wmpo_main(["registry", "show", "v0001", "--root", root]) == 0
    shown = capsys.readouterr().out
    assert "sha256 ok" in shown and "b1" in shown
    assert wmpo_main(["registry", "rollback", "--root", root]) == 0
    assert Registry(root).promoted() == "v0001"
    capsys.readouterr()
    assert wmpo_main(["registry", "promote", "v0042", "--root", root]) == 1
    assert "no version v0042" in capsys.readouterr().err
    assert wmpo_main(["registry", "ls", "--root", str(tmp_path / "nothing")]) == 1
