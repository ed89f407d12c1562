"""``isodose backends``: the compute backends usable on this machine, and the one ``auto`` picks."""

from __future__ import annotations

import argparse


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("backends", help="list the compute backends usable on this machine")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..dispatch import available_backends, select_backend

    for name, device in available_backends().items():
        print(f"{name:6s} {device}")
    print(f"auto   -> {select_backend('auto').name}")
    return 0
