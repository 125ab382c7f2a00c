"""`wmpo ingest BAGS... --out STORE`: episode bags -> the trainer's episode store.

Incremental: a bag whose content hash (sha256 over its storage files) is already
in the store is skipped, so the nightly cycle can pass every bag every night.
A damaged bag prints one line and the others go on (exit 1 at the end if any
failed). Discarded episodes are skipped. BAGS may be local bag directories,
their parents, or fsspec URLs (copied to a temporary directory first).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from wmpo_core.bags.episode import ACTION_SOURCES, MATCHES, IngestConfig, load_episode
from wmpo_core.bags.metadata import STATUS_DISCARDED, read_sidecar
from wmpo_core.bags.reader import find_bags
from wmpo_core.bags.verify import check_bag
from wmpo_core.errors import BagError, StoreError, WmpoError
from wmpo_core.fileio import sha256_file
from wmpo_core.images import ImageFormatError
from wmpo_core.interfaces import CAMERA_TOPIC, DEFAULT_CONTROL_RATE_HZ
from wmpo_core.store import EpisodeStore

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", help="bag directories, their parents, or fsspec URLs")
    parser.add_argument("--out", required=True, help="episode store directory (created if new)")
    parser.add_argument("--image-size", type=int, default=64, help="stored frame size (square)")
    parser.add_argument(
        "--tolerance-ms", type=float, default=60.0, help="max frame-to-command time offset"
    )
    parser.add_argument("--rate-hz", type=float, default=DEFAULT_CONTROL_RATE_HZ)
    parser.add_argument("--camera", default=CAMERA_TOPIC, help="camera topic to store")
    parser.add_argument("--actions", choices=ACTION_SOURCES, default="auto")
    parser.add_argument(
        "--match",
        choices=MATCHES,
        default="nearest",
        help="frame -> command: nearest in time, or the next one at/after the frame (causal)",
    )


def bag_content_hash(bag: Path) -> str:
    """sha256 over the bag's storage files (names + content); the sidecar may change later."""
    h = hashlib.sha256()
    for f in sorted(bag.glob("*.mcap")):
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def resolve(spec: str, tmp: Path) -> list[tuple[str, Path]]:
    """(source as given, local bag directory) for every bag under `spec`."""
    if _URL.match(spec) and not spec.startswith("file://"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(spec)
        if not fs.exists(root):
            raise BagError(f"{spec}: not found")
        local = tmp / f"remote{len(list(tmp.iterdir()))}" / Path(root.rstrip("/")).name
        local.parent.mkdir(parents=True)
        fs.get(root.rstrip("/") + "/", str(local), recursive=True)
        return [
            (spec.rstrip("/") + "/" + b.relative_to(local).as_posix(), b)
            for b in find_bags([local])
        ]
    path = Path(spec.removeprefix("file://"))
    if not path.exists():
        raise BagError(f"{spec}: no such file or directory")
    return [(str(b), b) for b in find_bags([path])]


def run(args: argparse.Namespace) -> int:
    config = IngestConfig(
        image_size=args.image_size,
        tolerance_ms=args.tolerance_ms,
        rate_hz=args.rate_hz,
        camera_topic=args.camera,
        actions=args.actions,
        match=args.match,
    )
    store = EpisodeStore(args.out, create=True)
    known = store.source_hashes()
    failed = added = skipped = frames = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wmpo-ingest-") as tmpdir:
        todo: list[tuple[str, Path]] = []
        for spec in args.bags:
            try:
                todo += resolve(spec, Path(tmpdir))
            except WmpoError as exc:
                print(f"wmpo ingest: error: {exc}", file=sys.stderr)
                failed += 1
        for source, bag in tqdm(todo, desc="ingest", unit="bag", file=sys.stderr):
            try:
                outcome = ingest_bag(store, source, bag, config, known)
            except (WmpoError, ImageFormatError) as exc:
                tqdm.write(f"wmpo ingest: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            if isinstance(outcome, str):
                tqdm.write(f"{bag.name}: skipped ({outcome})", file=sys.stderr)
                skipped += 1
            else:
                added += 1
                frames += outcome
        shutil.rmtree(tmpdir, ignore_errors=True)
    seconds = max(time.perf_counter() - start, 1e-9)
    print(
        f"ingested {added} episode(s), {frames} frames in {seconds:.1f} s "
        f"({frames / seconds:.0f} frames/s); skipped {skipped}, failed {failed} -> {args.out}"
    )
    return 1 if failed else 0


def ingest_bag(
    store: EpisodeStore, source: str, bag: Path, config: IngestConfig, known: set[str]
) -> int | str:
    """Add one bag to the store; returns frames added, or why it was skipped."""
    health = check_bag(bag)
    if not health.healthy:
        raise BagError(f"{bag}: {health.summary()}; run `wmpo bags verify --repair {bag}`")
    sidecar = read_sidecar(bag)
    if sidecar is not None and sidecar.status == STATUS_DISCARDED:
        return "discarded by the operator"
    digest = bag_content_hash(bag)
    if digest in known:
        return "already ingested"
    meta, frames, actions = load_episode(bag, config)
    meta.source, meta.source_hash = source, digest
    if meta.id in set(store.ids()):
        meta.id = f"{meta.id}-{digest[:8]}"
    try:
        store.add(meta, frames, actions)
    except StoreError as exc:
        raise BagError(f"{bag}: {exc}") from None
    known.add(digest)
    return len(frames)
