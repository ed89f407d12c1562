"""``isodose backends``: the compute backends usable on this machine, and the one ``auto`` picks."""

from __future__ import annotations

import argparse

from ..formatting import csv_text, json_document
from . import options


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("backends", help="list the compute backends usable on this machine")
    options.add_format(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..dispatch import available_backends, select_backend

    report = available_backends()
    chosen = select_backend("auto").name
    rows = [[name, not device.startswith("unavailable"), device, name == chosen] for name, device in report.items()]
    if args.format == "json":
        keys = ["name", "usable", "device", "auto"]
        print(json_document({"backends": [dict(zip(keys, row)) for row in rows], "auto": chosen}))
    elif args.format == "csv":
        print(csv_text(["name", "usable", "device", "auto"], rows), end="")
    else:
        for name, device in report.items():
            print(f"{name:6s} {device}")
        print(f"auto   -> {chosen}")
    return 0
