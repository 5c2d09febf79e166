"""``python -m benchmarks``: the entry point of ``make bench`` (see :mod:`benchmarks.run`)."""

from __future__ import annotations

from .run import main

raise SystemExit(main())
