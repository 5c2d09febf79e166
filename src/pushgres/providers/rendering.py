"""The request builders' cache of rendered portable messages, shared by every provider; pure.

A row with a portable message (:mod:`pushgres.message`) stores the message and its native
overrides as JSON text; the rows of one fan-out share both texts, so a builder decodes, checks
and renders them once per ``(message, overrides)`` pair and keeps the result (or the reason it
cannot be sent) in a bounded :class:`Renderings`. What a rendering is belongs to the provider:
it hands in its own ``finish`` function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .. import codec
from .. import message as portable
from ..models import Outcome

__all__ = ["Renderings", "check_enqueued"]

T = TypeVar("T")

_LIMIT = 256  # distinct messages in flight at once are few: a fan-out shares one


class Renderings(Generic[T]):
    """Decoded, checked and rendered portable messages by their stored texts, bounded.

    ``finish(message, overrides)`` renders a checked message (content keys only) and native
    overrides (a JSON object) into what the provider's builder needs, or returns the
    :class:`~pushgres.models.Outcome` that fails the row. The cached value is shared between
    rows: a builder copies what it changes.
    """

    def __init__(self, finish: Callable[[dict[str, Any], dict[str, Any]], T | Outcome]) -> None:
        self._finish = finish
        self._cache: dict[tuple[str, str], T | Outcome] = {}

    def get(self, message_text: str, overrides_text: str) -> T | Outcome:
        """The rendering of one stored message and its overrides, or the outcome failing it."""
        key = (message_text, overrides_text)
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(self._cache) >= _LIMIT:
            self._cache.clear()
        rendered = self._cache[key] = self._render(message_text, overrides_text)
        return rendered

    def _render(self, message_text: str, overrides_text: str) -> T | Outcome:
        try:
            message = codec.loads(message_text)
        except codec.JSONDecodeError:
            return Outcome.invalid("InvalidMessage", "message is not valid JSON")
        problem = portable.render_check(message)
        if problem is not None:
            return Outcome.invalid("InvalidMessage", problem)
        try:
            overrides = codec.loads(overrides_text)
        except codec.JSONDecodeError:
            return Outcome.invalid("InvalidPayload", "payload (native overrides) is not valid JSON")
        if type(overrides) is not dict:
            return Outcome.invalid("InvalidPayload", "payload (native overrides) must be an object")
        return self._finish(message, overrides)


def check_enqueued(
    message: object,
    overrides: object,
    finish: Callable[[dict[str, Any], dict[str, Any]], object],
) -> str | None:
    """What is wrong with a portable message and its native overrides at enqueue, or None.

    The enqueue-time twin of :meth:`Renderings.get`: the message as the caller gives it
    (delivery keys allowed) is checked, then rendered with the provider's ``finish``, so a
    rendering that would fail at send time is refused at enqueue.
    """
    problem = portable.check(message)
    if problem is not None:
        return f"message: {problem}"
    if not isinstance(overrides, dict):
        return "payload (native overrides) must be an object"
    content, _ = portable.split(message)  # type: ignore[arg-type]  # checked above
    rendered = finish(content, overrides)
    return rendered.detail if type(rendered) is Outcome else None
