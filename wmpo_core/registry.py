"""The checkpoint registry: versioned, hashed policy checkpoints with promote / rollback.

Layout (docs/registry.md):

    ROOT/
      versions/
        v0001/                      a checkpoint (wmpo_core.checkpoint layout) whose
          config.json                 manifest.json also carries a "registry" block:
          model.safetensors           {"version": "v0001", "published", "source"} plus
          manifest.json               "parent", "data" (bags, episodes), "metrics", "gates"
        .v0002.staging-<pid>/       an interrupted publish: never listed, removed by the
                                    next publish / `clean`
      promoted.json                 {"version", "stack", "history"}: replaced atomically
      .lock                         fcntl lock held by publish / promote / rollback

Publishing copies a verified checkpoint into a hidden staging directory and renames
it into place (wmpo_core.fileio.atomic_publish_dir): a process killed at any point
leaves either no version or a complete one. Promotion and rollback rewrite
`promoted.json` with one atomic rename under the lock, so readers (the policy node
hot-swapping) always see a whole pointer. Loading refuses anything outside
ROOT/versions, without a manifest that names this version, tampered, or pickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.checkpoint import MANIFEST, Checkpoint, load_checkpoint, verify_checkpoint
from wmpo_core.errors import CheckpointError
from wmpo_core.fileio import atomic_publish_dir, atomic_write_json, sha256_file, staging_dir_for

FORMAT = "wmpo-registry/1"
VERSIONS = "versions"
PROMOTED = "promoted.json"
LOCK = ".lock"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_STAGING_RE = re.compile(r"^\.v\d{4,}\.staging-\d+$")
DEFAULT_ROOT_ENV = "WMPO_REGISTRY"


class RegistryError(CheckpointError):
    """A registry operation that cannot be done: unknown version, nothing to roll back, ..."""


@dataclass
class VersionInfo:
    version: str
    path: Path
    manifest: dict[str, Any]
    status: str
    """'promoted', 'previous' (rollback target), 'rolled back', or ''."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Registry:
    def __init__(
        self,
        root: str | os.PathLike,
        *,
        create: bool = False,
        kind: str = "policy",
        lock_timeout_s: float = 30.0,
    ):
        self.root = Path(root).resolve()
        self.versions_dir = self.root / VERSIONS
        self.kind = kind
        self.lock_timeout_s = lock_timeout_s
        if create:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        elif not self.versions_dir.is_dir():
            raise RegistryError(
                f"{self.root}: not a checkpoint registry (no {VERSIONS}/ folder); create one by "
                "publishing: `wmpo registry publish CKPT --root ROOT`"
            )

    # -- locking --------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (fcntl.flock); released by the kernel if we die."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(
                            f"{self.root / LOCK}: another process has held the registry lock for "
                            f"over {self.lock_timeout_s:.0f} s; wait for it, or check for a hung "
                            "`wmpo cycle`"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # -- reading --------------------------------------------------------------
    def versions(self) -> list[str]:
        """Published versions, oldest first. Staging leftovers are not versions."""
        names = [
            p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)
        ]
        return sorted(names, key=lambda n: int(n[1:]))

    def path_of(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise RegistryError(
                f"'{version}' is not a version name (expected v0001, v0002, ...); see `wmpo registry ls`"
            )
        path = self.versions_dir / version
        if not path.is_dir():
            raise RegistryError(f"{self.root}: no version {version}; see `wmpo registry ls`")
        return path

    def manifest(self, version: str) -> dict[str, Any]:
        """The manifest, without re-hashing the files (cheap; `verify` checks hashes)."""
        path = self.path_of(version) / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: missing or unreadable manifest ({exc})") from None
        self._check_registry_block(version, manifest)
        return manifest

    def verify(self, version: str) -> dict[str, Any]:
        """Full check: every file's sha256, no pickles, the manifest names this version."""
        manifest = verify_checkpoint(self.path_of(version), kind=self.kind)
        self._check_registry_block(version, manifest)
        return manifest

    def _check_registry_block(self, version: str, manifest: dict[str, Any]) -> None:
        block = manifest.get("registry") if isinstance(manifest, dict) else None
        if not isinstance(block, dict) or block.get("version") != version:
            found = block.get("version") if isinstance(block, dict) else None
            raise RegistryError(
                f"{self.versions_dir / version}: manifest does not name this version "
                f"(registry.version = {found!r}); it was not published by the registry. "
                "Publish the checkpoint with `wmpo registry publish` instead of copying it"
            )

    def load(self, version_or_path: str | os.PathLike) -> Checkpoint:
        """Verify and load a version (by name, or by a path inside ROOT/versions)."""
        version = self._version_from(version_or_path)
        self.verify(version)
        return load_checkpoint(self.path_of(version), kind=self.kind)

    def _version_from(self, version_or_path: str | os.PathLike) -> str:
        text = os.fspath(version_or_path)
        if _VERSION_RE.match(text):
            return text
        resolved = Path(text).resolve()  # follows symlinks: a link out of the root is refused
        if resolved.parent != self.versions_dir.resolve() or not _VERSION_RE.match(resolved.name):
            raise RegistryError(
                f"{text}: outside the registry ({self.versions_dir}); only published versions "
                "load from here. Publish it first: `wmpo registry publish PATH`"
            )
        return resolved.name

    # -- promotion pointer ----------------------------------------------------
    def pointer(self) -> dict[str, Any]:
        path = self.root / PROMOTED
        if not path.is_file():
            return {"format": FORMAT, "version": None, "stack": [], "history": []}
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT or not isinstance(data.get("stack"), list):
                raise ValueError(f"format {data.get('format')!r}")
        except (OSError, ValueError, AttributeError) as exc:
            raise RegistryError(f"{path}: unreadable promotion pointer ({exc})") from None
        return data

    def promoted(self) -> str | None:
        return self.pointer()["version"]

    def resolve_promoted(self) -> Path:
        """The verified directory of the promoted version (raises if none or broken)."""
        version = self.promoted()
        if version is None:
            raise RegistryError(f"{self.root}: no version promoted yet; `wmpo registry promote V`")
        self.verify(version)
        return self.path_of(version)

    def history(self) -> list[dict[str, Any]]:
        return list(self.pointer()["history"])

    def promote(self, version: str, reason: str = "") -> dict[str, Any]:
        """Make `version` the one robots run. Idempotent for the current version."""
        with self.lock():
            self.verify(version)
            pointer = self.pointer()
            current = pointer["version"]
            if current == version:
                return pointer
            pointer["stack"].append(version)
            pointer["history"].append(
                {
                    "action": "promote",
                    "version": version,
                    "from": current,
                    "time": _now(),
                    "reason": reason,
                }
            )
            pointer["version"] = version
            atomic_write_json(self.root / PROMOTED, pointer)
            return pointer

    def rollback(self, reason: str = "") -> dict[str, Any]:
        """Return to the version promoted before the current one."""
        with self.lock():
            pointer = self.pointer()
            stack = pointer["stack"]
            if len(stack) < 2:
                raise RegistryError(
                    f"{self.root}: nothing to roll back to (promotion stack {stack}); "
                    "promote a specific version with `wmpo registry promote V`"
                )
            current, target = stack[-1], stack[-2]
            self.verify(target)
            stack.pop()
            pointer["history"].append(
                {
                    "action": "rollback",
                    "version": target,
                    "from": current,
                    "time": _now(),
                    "reason": reason,
                }
            )
            pointer["version"] = target
            atomic_write_json(self.root / PROMOTED, pointer)
            return pointer

    def status_of(self, version: str, pointer: dict[str, Any] | None = None) -> str:
        pointer = pointer or self.pointer()
        stack = pointer["stack"]
        if pointer["version"] == version:
            return "promoted"
        if len(stack) >= 2 and stack[-2] == version:
            return "previous"
        if any(e["action"] == "rollback" and e["from"] == version for e in pointer["history"]):
            return "rolled back"
        return ""

    def entries(self) -> list[VersionInfo]:
        pointer = self.pointer()
        out = []
        for version in self.versions():
            try:
                manifest = self.manifest(version)
            except RegistryError as exc:
                manifest = {"error": str(exc)}
            out.append(
                VersionInfo(
                    version, self.versions_dir / version, manifest, self.status_of(version, pointer)
                )
            )
        return out

    # -- writing --------------------------------------------------------------
    def publish(
        self,
        checkpoint_dir: str | os.PathLike,
        *,
        parent: str | None = None,
        bags: list[str] | None = None,
        episodes: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        gates: dict[str, Any] | None = None,
        notes: str = "",
    ) -> str:
        """Copy a verified checkpoint in as the next version; returns its name."""
        src = Path(checkpoint_dir)
        src_manifest = verify_checkpoint(src, kind=self.kind)
        with self.lock():
            self.clean_stale()
            if parent is not None:
                self.path_of(parent)
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
            final = self.versions_dir / version
            staging = staging_dir_for(final)
            for name, digest in src_manifest["files"].items():
                shutil.copyfile(src / name, staging / name)
                if sha256_file(staging / name) != digest:
                    raise RegistryError(f"{src / name}: changed while being copied; publish again")
            manifest = {
                **src_manifest,
                "parent": parent,
                "data": {"bags": list(bags or []), "episodes": list(episodes or [])},
                "metrics": dict(metrics or src_manifest.get("metrics") or {}),
                "gates": dict(gates or {}),
                "registry": {
                    "format": FORMAT,
                    "version": version,
                    "published": _now(),
                    "source": str(src.resolve()),
                    "notes": notes,
                },
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            atomic_publish_dir(staging, final)
            return version

    def clean_stale(self) -> list[Path]:
        """Remove staging directories left by interrupted publishes.

        Safe only under the lock: every publisher stages while holding it, so any staging
        directory seen by the lock holder belongs to a process that died.
        """
        removed = []
        for p in self.versions_dir.iterdir():
            if p.is_dir() and _STAGING_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def clean(self) -> list[Path]:
        with self.lock():
            return self.clean_stale()


def default_root() -> Path:
    """$WMPO_REGISTRY, else ./registry."""
    return Path(os.environ.get(DEFAULT_ROOT_ENV, "registry"))


def resolve_promoted(root: str | os.PathLike | None = None, kind: str = "policy") -> Path:
    """The verified directory of the promoted version in `root` (default: default_root())."""
    return Registry(root if root is not None else default_root(), kind=kind).resolve_promoted()
