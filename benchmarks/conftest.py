from __future__ import annotations

import pytest

from isodose.phantoms import head_neck_case
from tests.conftest import pytest_collection_modifyitems  # noqa: F401  (gpu-marked benchmarks skip without a GPU)


@pytest.fixture(scope="session")
def head_neck():
    """A head-and-neck-sized case: dose grid 200 x 200 x 120 at 2.5 mm, 20 ROIs from 1 cc to 3000 cc."""
    return head_neck_case()
