"""`wmpo bags ls | info | verify [--repair]`: what was recorded, and is it intact.

    wmpo bags ls [DIR_OR_BAG ...]          one row per episode bag
    wmpo bags info BAG                     topics, counts, sidecar
    wmpo bags verify BAG... [--deep] [--repair]

`verify` exits 1 when a bag is still unhealthy afterwards, printing one line per
bag; `--repair` rebuilds bags left by a killed recorder (wmpo_core/bags/verify.py).
"""

from __future__ import annotations

import argparse
import json

from wmpo_core.bags.reader import bag_info, bag_size, find_bags
from wmpo_core.bags.verify import check_bag, repair_bag
from wmpo_core.errors import BagError
from wmpo_core.interfaces import CAMERA_TOPIC


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    ls = sub.add_parser("ls", help="table of episode bags")
    ls.add_argument("paths", nargs="*", default=["bags"], help="bag directories or their parents")
    ls.add_argument("--camera", default=CAMERA_TOPIC, help="topic counted as frames")
    info = sub.add_parser("info", help="topics, counts and sidecar of one bag")
    info.add_argument("bag")
    verify = sub.add_parser("verify", help="health check (exit 1 if any bag is unhealthy)")
    verify.add_argument("paths", nargs="+", help="bag directories or their parents")
    verify.add_argument("--deep", action="store_true", help="read every record, compare counts")
    verify.add_argument(
        "--repair", action="store_true", help="rebuild bags left by a killed recorder"
    )


def run(args: argparse.Namespace) -> int:
    return {"ls": _ls, "info": _info, "verify": _verify}[args.action](args)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def episode_row(bag, camera: str = CAMERA_TOPIC) -> dict[str, str]:
    """One `ls` row; a damaged bag still gets a row (health says what is wrong)."""
    health = check_bag(bag)
    row = {"id": bag.name, "task": "-", "duration": "-", "frames": "-", "label": "-"}
    row |= {"policy": "-", "size": _human(bag_size(bag)), "health": _short(health)}
    if not health.healthy:
        return row
    info = bag_info(bag)
    side = info.sidecar
    row["duration"] = f"{info.duration_s:.1f}s"
    row["frames"] = str(info.topics.get(camera, ("", 0))[1])
    if side is not None:
        row["id"] = side.id
        row["task"] = side.task or "-"
        row["label"] = side.label or ("discarded" if health.discarded else "-")
        demo = side.kind == "demonstration" or not (side.kind or side.policy_version)
        row["policy"] = side.policy_version or ("(demo)" if demo else "-")
    return row


def _short(health) -> str:
    if health.healthy:
        return "discarded" if health.discarded else "ok"
    return "REPAIRABLE" if health.repairable else "CORRUPT"


def _ls(args: argparse.Namespace) -> int:
    bags = find_bags(args.paths)
    if not bags:
        print(f"no bags under {' '.join(args.paths)}")
        return 0
    rows = [episode_row(b, args.camera) for b in bags]
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    unhealthy = sum(r["health"] in ("REPAIRABLE", "CORRUPT") for r in rows)
    if unhealthy:
        print(f"{unhealthy} unhealthy bag(s): run `wmpo bags verify --repair PATH`")
    return 0


def _info(args: argparse.Namespace) -> int:
    health = check_bag(args.bag)
    if not health.healthy:
        raise BagError(
            f"{args.bag}: {health.summary()}; run `wmpo bags verify --repair {args.bag}`"
        )
    info = bag_info(args.bag)
    print(f"bag:       {info.path}")
    print(f"files:     {', '.join(info.files)} ({_human(info.size_bytes)})")
    print(f"duration:  {info.duration_s:.2f} s, {info.message_count} messages")
    width = max(len(t) for t in info.topics)
    for topic, (msgtype, count) in sorted(info.topics.items()):
        print(f"  {topic.ljust(width)}  {count:7d}  {msgtype}")
    if info.sidecar is not None:
        side = info.sidecar.to_dict()
        side.pop("events", None)
        side.pop("topics", None)
        print("sidecar:   " + json.dumps(side, sort_keys=True))
    return 0


def _verify(args: argparse.Namespace) -> int:
    bags = find_bags(args.paths)
    if not bags:
        raise BagError(f"no bags under {' '.join(args.paths)} (expected bag directories)")
    bad = 0
    for bag in bags:
        health = check_bag(bag, deep=args.deep)
        if not health.healthy and args.repair and health.repairable:
            try:
                report = repair_bag(bag)
                print(f"{bag}: {report.summary()}")
            except BagError as exc:
                print(f"{bag}: repair failed: {exc}")
            health = check_bag(bag, deep=args.deep)
        print(f"{bag}: {health.summary()}")
        bad += not health.healthy
    return 1 if bad else 0
