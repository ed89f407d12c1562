"""``python -m isodose.cli``: the console command."""

from .main import console

console()
