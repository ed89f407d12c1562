"""DICOM decimal strings (DS) parsed by compiled code (Numba, cached on disk): what reading a structure set spends
most of its time on, since its ContourData holds hundreds of thousands of coordinates and Python parses them one by
one (about 0.2 us each). Imported only where Numba is loaded already (``isodose.dicom.read._compiled_decimals``
decides), so that reading never loads Numba by itself.

Every value it returns is the one Python's ``float`` gives for the same text, bit for bit: it takes only the values
whose decimal significand has at most 15 digits and whose decimal exponent is at most 22 in size, for which the
significand and the power of ten are both exact doubles and one IEEE multiplication or division rounds their exact
product or quotient correctly (W. D. Clinger, "How to read floating point numbers accurately", PLDI 1990). Any other
value (more digits, a larger exponent, NaN or infinity, characters DS does not allow) makes it give up on the whole
element, which the caller then parses with Python as before.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .kernels import numba_target

numba_target.set_up()

#: 10**0 .. 10**22, each an exact double.
_POWERS_OF_TEN = np.array([float(10**k) for k in range(23)])
_MAX_DIGITS = 15
_BACKSLASH, _SPACE, _PLUS, _MINUS, _POINT = ord("\\"), ord(" "), ord("+"), ord("-"), ord(".")
_ZERO, _NINE, _UPPER_E, _LOWER_E = ord("0"), ord("9"), ord("E"), ord("e")


@njit(cache=True, error_model="numpy")
def _parse(text, powers, out):
    """The backslash-separated values of ``text`` (bytes as uint8) into ``out``; their count, or -1 where one of
    them lies outside the exact fast path (see the module's text)."""
    length = text.shape[0]
    n = 0
    start = 0
    while True:
        stop = start
        while stop < length and text[stop] != _BACKSLASH:
            stop += 1
        k, end = start, stop
        while k < end and text[k] == _SPACE:
            k += 1
        while end > k and text[end - 1] == _SPACE:
            end -= 1
        if k == end:
            return -1
        negative = False
        if text[k] == _PLUS or text[k] == _MINUS:
            negative = text[k] == _MINUS
            k += 1
        significand = 0
        digits = 0
        exponent = 0
        seen_digit = False
        seen_point = False
        while k < end:
            c = text[k]
            if _ZERO <= c <= _NINE:
                seen_digit = True
                # Zeros before the first other digit are not significant: they only move the point (0.05 is
                # 5 x 10^-2); every digit from the first other one on counts, zeros included (100.5 is 1005 x 10^-1).
                if significand == 0 and c == _ZERO:
                    if seen_point:
                        exponent -= 1
                else:
                    digits += 1
                    if digits > _MAX_DIGITS:
                        return -1
                    significand = significand * 10 + (c - _ZERO)
                    if seen_point:
                        exponent -= 1
            elif c == _POINT and not seen_point:
                seen_point = True
            else:
                break
            k += 1
        if not seen_digit:
            return -1
        if k < end:
            if text[k] != _UPPER_E and text[k] != _LOWER_E:
                return -1
            k += 1
            exponent_negative = False
            if k < end and (text[k] == _PLUS or text[k] == _MINUS):
                exponent_negative = text[k] == _MINUS
                k += 1
            if k == end:
                return -1
            exponent_written = 0
            while k < end:
                c = text[k]
                if c < _ZERO or c > _NINE:
                    return -1
                exponent_written = exponent_written * 10 + (c - _ZERO)
                if exponent_written > 1000:
                    return -1
                k += 1
            exponent += -exponent_written if exponent_negative else exponent_written
        if significand == 0:
            value = 0.0
        elif exponent >= 0:
            if exponent > 22:
                return -1
            value = float(significand) * powers[exponent]
        else:
            if exponent < -22:
                return -1
            value = float(significand) / powers[-exponent]
        out[n] = -value if negative else value
        n += 1
        if stop >= length:
            return n
        start = stop + 1


def parse_decimal_strings(raw: bytes) -> np.ndarray | None:
    """The values of a DS element's bytes (``b"1.5\\\\-2\\\\3e2"``) as float64, each as Python's ``float`` reads it;
    None where one of them is outside the exact fast path (then parse them with Python)."""
    text = np.frombuffer(raw, dtype=np.uint8)
    out = np.empty(raw.count(b"\\") + 1, dtype=np.float64)
    n = _parse(text, _POWERS_OF_TEN, out)
    return out if n == len(out) else None
