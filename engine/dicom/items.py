"""The items of an encoded DICOM sequence, walked from the bytes of its value (PS3.5 7.1 and 7.5): what
``dicom.read`` uses for a structure set's ContourSequence, which holds one item per contour (hundreds per ROI),
where building a pydicom dataset for each item costs more than reading its coordinates.

It reads only the plain encodings of little-endian bytes (the caller checks the byte order): implicit or explicit
VR, items and nested sequences of defined or undefined length. Wherever pydicom could read the same bytes otherwise,
it gives up on the whole sequence, and the caller reads it through pydicom as before, with pydicom's own handling,
warnings and errors: an element running past its item, a VR that is not two capital letters (pydicom switches to
implicit VR there), an item holding an element twice or a Specific Character Set, a delimiter whose length is not 0,
an element of undefined length that pydicom would not read as a sequence, bytes between items, sequences nested
deeper than :data:`MAX_DEPTH`. No pydicom here.
"""

from __future__ import annotations

from struct import unpack_from

#: Item, Item Delimitation Item and Sequence Delimitation Item (PS3.5 7.5).
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2, table 7.1-1).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
#: Specific Character Set: converted by pydicom as it reads an item (with a warning for an unknown one).
SPECIFIC_CHARACTER_SET = 0x00080005
#: The public sequences a contour item may hold (ContourImageSequence): in implicit VR, pydicom reads an element of
#: undefined length as a sequence where its dictionary says it is one (or where a private one's value starts with an
#: item), and reads any other up to a delimiter, which this walker leaves to it.
KNOWN_SEQUENCES = frozenset({0x30060016})
#: Sequences nested deeper than this are left to pydicom.
MAX_DEPTH = 16


class _LeaveToPydicom(Exception):
    """An encoding this walker does not read: the caller reads the sequence through pydicom."""


def _header(raw: bytes, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """The element starting at ``pos``: its tag, VR (b"" where the encoding gives none), value length and where its
    value starts. Items and delimiters (group FFFE) carry no VR in either encoding."""
    if pos + 8 > len(raw):
        raise _LeaveToPydicom
    group, element, length = unpack_from("<HHI", raw, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return tag, b"", length, pos + 8
    vr = raw[pos + 4 : pos + 6]
    if not (0x41 <= vr[0] <= 0x5A and 0x41 <= vr[1] <= 0x5A):
        raise _LeaveToPydicom
    if vr in LONG_VRS:
        if pos + 12 > len(raw):
            raise _LeaveToPydicom
        return tag, vr, unpack_from("<I", raw, pos + 8)[0], pos + 12
    return tag, vr, length >> 16, pos + 8  # the 2-byte length after the VR


def _delimiter(raw: bytes, pos: int) -> tuple[int, int, int]:
    """The item or delimiter starting at ``pos``: its tag, length and where its value starts. A delimiter's length
    must be 0 (PS3.5 7.5): pydicom reads any other as an element of explicit VR."""
    tag, _, length, value_at = _header(raw, pos, True)  # an item's header is the same in either encoding
    if tag in (ITEM_END, SEQUENCE_END) and length != 0:
        raise _LeaveToPydicom
    return tag, length, value_at


def _elements(
    raw: bytes, pos: int, stop: int | None, implicit: bool, depth: int, vrs: dict[int, bytes] | None = None
) -> tuple[dict[int, bytes | None], int]:
    """The elements of one item from ``pos``: to ``stop`` (an item of defined length) or to its Item Delimitation
    Item (``stop`` None); and the position after them. A nested sequence of undefined length is walked (to check
    it) and given as None. Each element's VR (b"" in implicit VR) goes into ``vrs`` where one is given."""
    elements: dict[int, bytes | None] = {}
    end = len(raw) if stop is None else stop
    while True:
        if stop is not None and pos == stop:
            return elements, pos
        tag, vr, length, value_at = _header(raw, pos, implicit)
        if tag == ITEM_END and stop is None:
            if length != 0:
                raise _LeaveToPydicom
            return elements, value_at
        if tag >> 16 == 0xFFFE or tag in elements or tag == SPECIFIC_CHARACTER_SET:
            raise _LeaveToPydicom
        if vrs is not None:
            vrs[tag] = vr
        if length == UNDEFINED_LENGTH:
            if not _read_as_sequence(raw, tag, vr, value_at, implicit):
                raise _LeaveToPydicom
            elements[tag] = None
            _, pos = _items(raw, value_at, implicit, depth + 1, delimited=True)
            if pos > end:
                raise _LeaveToPydicom
        else:
            if value_at + length > end:
                raise _LeaveToPydicom
            elements[tag] = raw[value_at : value_at + length]
            pos = value_at + length


def _read_as_sequence(raw: bytes, tag: int, vr: bytes, value_at: int, implicit: bool) -> bool:
    """Whether pydicom reads an element of undefined length as a sequence: in explicit VR one of VR SQ or UN; in
    implicit VR a sequence its dictionary knows (of those a contour item holds), or a private element whose value
    starts with an item."""
    if not implicit:
        return vr in (b"SQ", b"UN")
    if tag in KNOWN_SEQUENCES:
        return True
    return bool(tag >> 16 & 1) and value_at + 4 <= len(raw) and unpack_from("<HH", raw, value_at) == (0xFFFE, 0xE000)


def _items(
    raw: bytes, pos: int, implicit: bool, depth: int, delimited: bool, vrs: list[dict[int, bytes]] | None = None
) -> tuple[list[dict[int, bytes | None]], int]:
    """The items of a sequence from ``pos``, each walked as pydicom would read it (its elements within it, their
    lengths, nothing twice), and the position after them: up to the Sequence Delimitation Item of a sequence of
    undefined length (``delimited``), or to the end of ``raw``, a sequence's whole value (which may keep that
    delimiter at its end). The VRs of each item's elements go into ``vrs``, one dict per item, where it is given
    (those of nested sequences' items are not kept)."""
    if depth > MAX_DEPTH:
        raise _LeaveToPydicom
    items: list[dict[int, bytes | None]] = []
    while delimited or pos < len(raw):
        tag, length, value_at = _delimiter(raw, pos)
        if tag == SEQUENCE_END and (delimited or value_at == len(raw)):
            return items, value_at
        if tag != ITEM:
            raise _LeaveToPydicom
        item_vrs: dict[int, bytes] | None = None if vrs is None else {}
        if length == UNDEFINED_LENGTH:
            item, pos = _elements(raw, value_at, None, implicit, depth, item_vrs)
        elif value_at + length > len(raw):
            raise _LeaveToPydicom
        else:
            item, pos = _elements(raw, value_at, value_at + length, implicit, depth, item_vrs)
        items.append(item)
        if vrs is not None and item_vrs is not None:
            vrs.append(item_vrs)
    return items, pos


def sequence_items(
    raw: bytes, implicit_vr: bool, vrs: list[dict[int, bytes]] | None = None
) -> list[dict[int, bytes | None]] | None:
    """The items of a sequence whose value is ``raw`` (little endian, the VR implicit or explicit): each item's
    elements by tag (``0x30060050`` for ContourData), as the bytes of their values (None for a nested sequence
    of undefined length); each item's elements' VRs (b"" in implicit VR) appended to ``vrs`` where it is given.
    None where the encoding is one the module's text leaves to pydicom."""
    try:
        return _items(raw, 0, implicit_vr, 0, delimited=False, vrs=vrs)[0]
    except _LeaveToPydicom:
        return None
