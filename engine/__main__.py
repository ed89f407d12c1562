"""``python -m isodose``: the console command, as ``isodose`` (and ``python -m isodose.cli``)."""

from .cli.main import console

if __name__ == "__main__":
    console()
