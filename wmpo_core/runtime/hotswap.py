"""Safe hot-swap of the running policy: watch the registry, vet a candidate, swap between chunks.

policy_node calls this from a background thread, never from the control path:

1. `RegistryWatcher.poll()` notices that `promoted.json` names a different version.
2. `prepare_candidate` loads it through the registry (manifest hashes, safetensors
   only, finite weights), checks that its action space, chunk size and image size
   match the running robot, and warms it up on recorded observations: every chunk
   must be finite and inside the action bounds.
3. Only then does the node swap the policy object between two chunks (one
   reference assignment) and drop the queued actions.

Any failure leaves the old policy running and is reported as one line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wmpo_core.errors import CheckpointError, WmpoError
from wmpo_core.policy_api import ChunkPolicy, Observation

REGISTRY_PREFIX = "registry:"


class SwapRefused(WmpoError):
    """A candidate policy that must not replace the running one."""


def registry_root_of(spec: str) -> Path | None:
    """'registry:/path/to/root' -> Path; any other policy spec -> None."""
    if spec.startswith(REGISTRY_PREFIX):
        return Path(spec[len(REGISTRY_PREFIX) :]).expanduser()
    return None


class RegistryWatcher:
    """Reports when the registry's promoted version changes (cheap: one small file read)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.pointer = self.root / "promoted.json"
        self._last_key: tuple[int, int] | None = None
        self.current: str | None = None

    def read_promoted(self) -> str | None:
        try:
            return json.loads(self.pointer.read_text()).get("version")
        except FileNotFoundError:
            return None
        except ValueError as exc:  # promoted.json is replaced atomically, so this is corruption
            raise WmpoError(f"{self.pointer}: unreadable ({exc})") from None

    def poll(self) -> str | None:
        """The newly promoted version if it differs from `current`, else None."""
        try:
            st = self.pointer.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key == self._last_key:
            return None
        self._last_key = key
        version = self.read_promoted()
        if version is None or version == self.current:
            return None
        return version


@dataclass
class RobotContract:
    """What the running robot needs from any policy it swaps in."""

    action_names: tuple[str, ...]
    chunk_size: int
    image_size: int | None = None
    action_low: float = -1.0
    action_high: float = 1.0


def contract_of(policy: ChunkPolicy, image_size: int | None = None) -> RobotContract:
    return RobotContract(
        action_names=tuple(policy.action_names),
        chunk_size=int(policy.chunk_size),
        image_size=getattr(policy, "image_size", None) or image_size,
    )


def check_contract(candidate: ChunkPolicy, contract: RobotContract, where: str) -> None:
    names = tuple(candidate.action_names)
    if names != contract.action_names:
        raise SwapRefused(
            f"{where}: action space {list(names)} does not match the robot's {list(contract.action_names)}"
        )
    if int(candidate.chunk_size) != contract.chunk_size:
        raise SwapRefused(
            f"{where}: chunk size {candidate.chunk_size} differs from the running {contract.chunk_size}"
        )
    size = getattr(candidate, "image_size", None)
    if contract.image_size and size and int(size) != contract.image_size:
        raise SwapRefused(
            f"{where}: expects {size}px images, the robot's camera gives {contract.image_size}px"
        )


def warm_up(
    candidate: ChunkPolicy,
    observations: Sequence[Observation],
    contract: RobotContract,
    where: str,
) -> float:
    """Run the candidate on recorded observations; returns the slowest inference (s)."""
    if not observations:
        raise SwapRefused(f"{where}: no recorded observations to warm the candidate up on")
    candidate.reset()
    slowest = 0.0
    for obs in observations:
        t0 = time.perf_counter()
        chunk = np.asarray(candidate.predict_chunk(obs), dtype=np.float64)
        slowest = max(slowest, time.perf_counter() - t0)
        expected = (contract.chunk_size, len(contract.action_names))
        if chunk.shape != expected:
            raise SwapRefused(
                f"{where}: warm-up chunk has shape {chunk.shape}, expected {expected}"
            )
        if not np.isfinite(chunk).all():
            raise SwapRefused(f"{where}: warm-up produced NaN/Inf actions")
        if chunk.min() < contract.action_low - 1e-6 or chunk.max() > contract.action_high + 1e-6:
            raise SwapRefused(
                f"{where}: warm-up actions leave [{contract.action_low}, {contract.action_high}] "
                f"(min {chunk.min():.3g}, max {chunk.max():.3g})"
            )
    candidate.reset()
    return slowest


def prepare_candidate(
    version: str,
    root: Path,
    load: Callable[[Path], ChunkPolicy],
    contract: RobotContract,
    observations: Sequence[Observation],
) -> ChunkPolicy:
    """Verify + load + check + warm up a registry version; raises SwapRefused/CheckpointError."""
    from wmpo_core.registry import Registry

    where = f"{root}/versions/{version}"
    try:
        path = Registry(root).path_of(version)
        Registry(root).verify(version)
    except CheckpointError as exc:
        raise SwapRefused(str(exc)) from None
    try:
        candidate = load(path)
    except CheckpointError as exc:
        raise SwapRefused(str(exc)) from None
    if getattr(candidate, "version", None) != version:
        try:
            candidate.version = version  # the robot reports registry versions
        except AttributeError:
            pass
    check_contract(candidate, contract, where)
    warm_up(candidate, observations, contract, where)
    return candidate
