"""Shared hypothesis strategies: connected graphs (n in [2, 24]) and finite float matrices within +-1e6."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.simhelpers import random_connected_graph


@st.composite
def connected_graphs(draw, min_n: int = 2, max_n: int = 24) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    p = draw(st.floats(0.0, 0.7))
    seed = draw(st.integers(0, 2**31 - 1))
    return random_connected_graph(n, p, seed)


def node_values(n: int, d: int = 3, bound: float = 1e6):
    return arrays(np.float64, (n, d), elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False))
