"""Reading the little DER (ITU-T X.690) that Apple's certificate extensions hold.

The ``1.2.840.113635.100.6.3.6`` extension of an APNs provider certificate lists its topics as
a DER SEQUENCE of UTF8Strings (each followed by a SEQUENCE of its kinds). ``cryptography``
hands unknown extensions over as raw bytes; :func:`sequence_strings` reads those strings, for
the provider's certificate check and for the simulator that judges certificates as Apple does.
Pure: bytes in, values out.
"""

from __future__ import annotations

__all__ = ["elements", "sequence_strings"]

_OCTET_STRING = 0x04
_SEQUENCE = 0x30
_UTF8_STRING = 0x0C


def elements(data: bytes) -> list[tuple[int, bytes]]:
    """Consecutive DER elements as (tag, contents) (X.690 section 8.1); [] when malformed."""
    out: list[tuple[int, bytes]] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            return []
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            size = length & 0x7F
            if not 0 < size <= 4 or i + size > len(data):
                return []
            length = int.from_bytes(data[i : i + size], "big")
            i += size
        if i + length > len(data):
            return []
        out.append((tag, data[i : i + length]))
        i += length
    return out


def sequence_strings(data: bytes) -> list[str]:
    """The UTF8Strings directly inside one DER SEQUENCE (wrapped or not in an OCTET STRING,
    as encoders differ); [] when it cannot be read."""
    found = elements(data)
    if len(found) == 1 and found[0][0] == _OCTET_STRING:
        found = elements(found[0][1])
    if len(found) != 1 or found[0][0] != _SEQUENCE:
        return []
    return [
        content.decode("utf-8", "replace")
        for tag, content in elements(found[0][1])
        if tag == _UTF8_STRING
    ]
