from __future__ import annotations

import pytest

from isodose.dispatch import cuda_usable
from isodose.phantoms import head_neck_case


@pytest.fixture(scope="session")
def head_neck():
    """A head-and-neck-sized case: dose grid 200 x 200 x 120 at 2.5 mm, 20 ROIs from 1 cc to 3000 cc."""
    return head_neck_case()


def pytest_collection_modifyitems(config, items):
    if cuda_usable():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
