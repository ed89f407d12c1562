"""The items of an encoded DICOM sequence, walked from the bytes of its value (PS3.5 7.1 and 7.5): what
``dicom.read`` uses for a structure set's ContourSequence, which holds one item per contour (hundreds per ROI),
where building a pydicom dataset for each item costs more than reading its coordinates.

It reads only the plain encodings: little endian, implicit or explicit VR, items and nested sequences of defined
or undefined length. Anything else (big endian, an element running past its item, a VR that is not two capital
letters, an item holding an element twice, bytes between items) makes it give up on the whole sequence, and the
caller reads it through pydicom as before, with pydicom's own handling and errors. No pydicom here.
"""

from __future__ import annotations

from struct import unpack_from

#: Item, Item Delimitation Item and Sequence Delimitation Item (PS3.5 7.5).
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2, table 7.1-1).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())


class _Unusual(Exception):
    """An encoding this walker leaves to pydicom."""


def _header(raw: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """The element starting at ``pos``: its tag, VR (b"" where the encoding gives none), value length and the
    position of its value."""
    if pos + 8 > len(raw):
        raise _Unusual
    group, element, length = unpack_from("<HHI", raw, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # items and delimiters carry no VR in either encoding
        return tag, b"", length, pos + 8
    vr = raw[pos + 4 : pos + 6]
    if not (0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A):
        raise _Unusual
    if vr in LONG_VRS:
        if pos + 12 > len(raw):
            raise _Unusual
        return tag, vr, unpack_from("<I", raw, pos + 8)[0], pos + 12
    return tag, vr, length >> 16, pos + 8  # the 2-byte length after the VR


def _elements(raw: bytes, pos: int, stop: int | None, implicit: bool) -> tuple[dict[int, bytes | None], int]:
    """The elements of one item from ``pos``: to ``stop`` (an item of defined length) or to its Item Delimitation
    Item (``stop`` None); and the position after them. An element of undefined length (a nested sequence) is
    skipped, and given as None."""
    elements: dict[int, bytes | None] = {}
    end = len(raw) if stop is None else stop
    while True:
        if stop is not None and pos == stop:
            return elements, pos
        tag, vr, length, value = _header(raw, pos, implicit)
        if tag == ITEM_END and stop is None:
            return elements, value
        if tag >> 16 == 0xFFFE or tag in elements:
            raise _Unusual
        if length == UNDEFINED_LENGTH:
            if not (implicit or vr in (b"SQ", b"UN")):
                raise _Unusual
            elements[tag] = None
            pos = _skip_sequence(raw, value, implicit)
            if pos > end:
                raise _Unusual
        else:
            if value + length > end:
                raise _Unusual
            elements[tag] = raw[value : value + length]
            pos = value + length


def _skip_sequence(raw: bytes, pos: int, implicit: bool) -> int:
    """The position after a sequence of undefined length whose first item starts at ``pos``."""
    while True:
        tag, _, length, value = _header(raw, pos, True)
        if tag == SEQUENCE_END:
            return value
        if tag != ITEM:
            raise _Unusual
        if length == UNDEFINED_LENGTH:
            _, pos = _elements(raw, value, None, implicit)
        elif value + length > len(raw):
            raise _Unusual
        else:
            pos = value + length


def sequence_items(raw: bytes, implicit_vr: bool) -> list[dict[int, bytes | None]] | None:
    """The items of a sequence whose value is ``raw`` (little endian, the VR implicit or explicit): each item's
    elements by tag (``0x30060050`` for ContourData), as the bytes of their values (None for a nested sequence
    of undefined length). None where the encoding is anything but the plain ones the module's text lists."""
    items = []
    pos = 0
    try:
        while pos < len(raw):
            tag, _, length, value = _header(raw, pos, True)
            if tag == SEQUENCE_END and value == len(raw):  # a delimiter kept with the value
                break
            if tag != ITEM:
                return None
            if length == UNDEFINED_LENGTH:
                item, pos = _elements(raw, value, None, implicit_vr)
            elif value + length > len(raw):
                return None
            else:
                item, pos = _elements(raw, value, value + length, implicit_vr)
            items.append(item)
    except _Unusual:
        return None
    return items
