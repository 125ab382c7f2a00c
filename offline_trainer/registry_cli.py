"""`wmpo registry ls | show V | publish CKPT | promote V | rollback | clean` (docs/registry.md)."""

from __future__ import annotations

import argparse
import json

from wmpo_core.registry import Registry, default_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--root", default=None, help="registry root (default: $WMPO_REGISTRY or ./registry)"
        )
        return p

    with_root(sub.add_parser("ls", help="list versions (a table)"))
    show = with_root(sub.add_parser("show", help="a version's manifest, with its hashes checked"))
    show.add_argument("version")
    publish = with_root(
        sub.add_parser("publish", help="copy a policy checkpoint in as a new version")
    )
    publish.add_argument(
        "checkpoint", help="checkpoint directory (config.json, model.safetensors, manifest.json)"
    )
    publish.add_argument("--parent", default=None, help="version it was trained from")
    publish.add_argument("--bags", nargs="*", default=[], help="bag ids the training used")
    publish.add_argument("--episodes", nargs="*", default=[], help="episode ids the training used")
    publish.add_argument("--metrics", default=None, help="JSON file of metrics to record")
    publish.add_argument("--gates", default=None, help="JSON file of gate results to record")
    publish.add_argument("--promote", action="store_true", help="promote it right away")
    promote = with_root(sub.add_parser("promote", help="make a version the one robots run"))
    promote.add_argument("version")
    promote.add_argument("--reason", default="manual", help="recorded in the history")
    rollback = with_root(
        sub.add_parser("rollback", help="return to the previously promoted version")
    )
    rollback.add_argument("--reason", default="manual", help="recorded in the history")
    with_root(sub.add_parser("clean", help="remove leftovers of interrupted publishes"))


def _read_json(path: str | None) -> dict | None:
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def _fmt_metrics(metrics: dict) -> str:
    items = [
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())
    ]
    text = " ".join(items[:3])
    return text + (" ..." if len(items) > 3 else "")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def run(args: argparse.Namespace) -> int:
    root = args.root if args.root is not None else default_root()
    if args.action == "publish":
        reg = Registry(root, create=True)
        version = reg.publish(
            args.checkpoint,
            parent=args.parent,
            bags=args.bags,
            episodes=args.episodes,
            metrics=_read_json(args.metrics),
            gates=_read_json(args.gates),
        )
        print(f"published {version} in {reg.root}")
        if args.promote:
            reg.promote(version, reason="published with --promote")
            print(f"promoted {version}")
        return 0
    reg = Registry(root)
    if args.action == "ls":
        rows = [["VERSION", "STATUS", "PARENT", "PUBLISHED", "GATES", "METRICS"]]
        for info in reg.entries():
            m = info.manifest
            if "error" in m:
                rows.append([info.version, "BROKEN", "-", "-", "-", m["error"][:60]])
                continue
            gates = m.get("gates") or {}
            rows.append(
                [
                    info.version,
                    info.status or "-",
                    m.get("parent") or "-",
                    m["registry"].get("published", "-"),
                    " ".join(f"{k}:{v}" for k, v in sorted(gates.items())) or "-",
                    _fmt_metrics(m.get("metrics") or {}) or "-",
                ]
            )
        print(_table(rows))
        if len(rows) == 1:
            print(f"(no versions in {reg.root})")
        return 0
    if args.action == "show":
        manifest = reg.verify(args.version)
        print(
            f"{args.version}: {reg.path_of(args.version)} (sha256 ok, {reg.status_of(args.version) or 'not promoted'})"
        )
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    if args.action == "promote":
        reg.promote(args.version, reason=args.reason)
        print(f"promoted {args.version}")
        return 0
    if args.action == "rollback":
        pointer = reg.rollback(reason=args.reason)
        last = pointer["history"][-1]
        print(f"rolled back {last['from']} -> {last['version']}")
        return 0
    if args.action == "clean":
        removed = reg.clean()
        print(f"removed {len(removed)} interrupted publish(es)")
        return 0
    raise AssertionError(args.action)
