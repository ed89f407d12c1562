"""The compiled half of a DVH's curve built from its histogram (:func:`isodose.dvh.dvh_from_histogram`; Numba,
cached on disk), taken where :func:`isodose.compiled.take_compiled` says so: the same values as the NumPy arrays it
replaces, bit for bit (the same IEEE operations on each value, in the same order: a running sum, as ``np.cumsum``
keeps), in one pass over the bins rather than six."""

from __future__ import annotations

from numba import njit

from .kernels import numba_target

numba_target.set_up()


@njit(cache=True, error_model="numpy")
def curve_knots(folded, k_lo, bin_width_gy, dmin_gy, dmax_gy, scale, inside_mm3, dose, cumulative_cc):
    """Into ``dose`` and ``cumulative_cc`` (``len(folded) + 1`` each): the bin edges from Dmin to Dmax and the volume
    (cc) at or above each, from the histogram's mass ``folded`` in its bins from ``k_lo`` on (the volume below an
    edge is the running sum of the mass, times ``scale``)."""
    n = folded.shape[0]
    dose[0] = dmin_gy
    for i in range(1, n):
        dose[i] = bin_width_gy * (k_lo + i)
    dose[n] = dmax_gy
    cumulative_cc[0] = (inside_mm3 - 0.0) / 1000.0
    below = 0.0
    for i in range(n - 1):
        below += folded[i]
        cumulative_cc[i + 1] = (inside_mm3 - below * scale) / 1000.0
    cumulative_cc[n] = 0.0
