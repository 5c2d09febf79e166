"""The HTTP/2 layer is generic: no provider's name appears anywhere in ``pushgres.http2``.

What a provider needs from it (which headers are never indexed, for example) comes in as a
parameter from ``pushgres.providers``.
"""

from __future__ import annotations

import pathlib
import re

HTTP2 = pathlib.Path(__file__).resolve().parents[2] / "src" / "pushgres" / "http2"
PROVIDER_WORDS = re.compile(r"apns|fcm|apple|google|firebase", re.IGNORECASE)


def test_the_http2_layer_names_no_provider() -> None:
    for path in sorted(HTTP2.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not PROVIDER_WORDS.search(line), f"{path.name}:{number}: {line.strip()}"
