"""What every provider is made of, and the batch-sending loop they share.

A provider (``providers/<name>/``) owns everything about one push service: its config
section, enqueue validation, request building and response parsing, reason table,
credentials (and their check, :meth:`Provider.check_credentials`) and :class:`Sender`. :class:`Provider` is the face the rest of pushgres sees;
``providers/__init__.py`` registers one per platform, and adding a provider is one new folder
and one registry line.

:class:`BatchSender` is the loop both HTTP/2 providers share: a batch of claimed rows in, one
:class:`~pushgres.models.Outcome` per row out. It adds credentials (one authorization header
per batch), the batch deadline, the one inline retry the providers ask for (fresh credentials
or a new connection), and turns transport failures into outcome values. A whole batch goes to
:meth:`Http2Pool.send_batch` at once: no task or future per notification. Nothing here raises
for a provider answer.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..config import AppConfig, PoolConfig, Section
from ..exceptions import PoolClosed, RequestRejected, TransportError
from ..http2.pool import BatchResult, Http2Pool, Observe, Response, Stragglers
from ..models import Action, ClaimedRow, Notification, Outcome, Request
from ..observability.diagnosis import Diagnosis

if TYPE_CHECKING:
    from .credentials import CredentialReport

__all__ = [
    "Accepted",
    "BatchSender",
    "LateOutcome",
    "Provider",
    "ProviderModule",
    "Sender",
    "transport_outcome",
]

logger = logging.getLogger(__name__)

LateOutcome = Callable[[int, Outcome], None]
"""Receives a straggler's outcome, with its row's index in the batch."""
Accepted = Callable[[int], None]
"""Receives the index in the batch of a row the provider accepted, as its answer arrives."""


class Sender(Protocol):
    """One app's way to a provider: owns its connections and credentials (``async with``)."""

    async def __aenter__(self) -> Sender: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def capacity(self) -> int:
        """How many requests could be in flight at once right now."""
        ...

    def describe(self) -> str:
        """A short state line for the report (connections, streams in flight)."""
        ...

    def stats(self) -> Mapping[str, int]:
        """Connection gauges and counters, as :meth:`Http2Pool.stats` gives them."""
        ...

    def record_response_times(self, histogram: Observe) -> None:
        """From now on, give ``histogram`` each provider response time, in seconds."""
        ...

    async def warm_up(self, timeout_s: float) -> str | None:
        """Get credentials and open a first connection ahead of any send; what failed, or None."""
        ...

    def problem(self) -> str | None:
        """Why this app could not send now (no usable connection, credentials refused), or None."""
        ...

    async def send_batch(
        self,
        rows: Sequence[ClaimedRow],
        *,
        now: dt.datetime,
        abort: asyncio.Future[None] | None = None,
        on_late: LateOutcome | None = None,
        on_accepted: Accepted | None = None,
    ) -> list[Outcome | None]:
        """One outcome per row, in order; never raises for a provider or transport failure.

        With ``on_late``, the call may return before a few slow requests are answered: their
        places hold ``None`` and their outcomes reach ``on_late`` later, exactly once each.
        With ``on_accepted``, each row the provider accepts (HTTP 200) is named as its answer
        arrives, before the call returns.
        """
        ...


def transport_outcome(exc: TransportError) -> Outcome:
    """A transport failure as an outcome: resend at once if unprocessed, else after backoff."""
    name = type(exc).__name__
    if isinstance(exc, PoolClosed):
        return Outcome(action=Action.CONN, reason="Interrupted", detail=str(exc))
    if isinstance(exc, RequestRejected):
        return Outcome.invalid("RequestRejected", str(exc))
    action = Action.CONN if exc.unprocessed else Action.WAIT
    return Outcome(action=action, reason=name, detail=str(exc))


_ACCEPTED = frozenset({Action.SENT, Action.DEAD})


class BatchSender(abc.ABC):
    """The batch loop shared by both providers: build, send, parse, one inline retry.

    Subclasses supply the credential header (:meth:`_authorization`), the response parser
    and what to do after an AUTH/CONN answer (:meth:`_after_failure`).
    """

    pool: Http2Pool
    _timeout_s: float
    _RETRY_ACTIONS: frozenset[Action] = frozenset({Action.AUTH, Action.CONN})

    @abc.abstractmethod
    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome: ...

    @abc.abstractmethod
    async def _authorization(self) -> list[tuple[bytes, bytes]] | Outcome: ...

    @abc.abstractmethod
    def _parse(self, response: Response) -> Outcome: ...

    @abc.abstractmethod
    def _after_failure(
        self, outcome: Outcome, response: Response, authorization: bytes
    ) -> None: ...

    def _exhausted(self, outcome: Outcome) -> Outcome:
        """The outcome of a request still failing after the inline retry."""
        return outcome

    async def __aenter__(self) -> BatchSender:
        await self.pool.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.pool.aclose()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the credentials' resources (the pool is closed by ``__aexit__``)."""
        return None

    def capacity(self) -> int:
        return self.pool.capacity()

    def describe(self) -> str:
        stats = self.pool.stats()
        return f"conns={stats['connections']},streams={stats['in_flight']}"

    def stats(self) -> Mapping[str, int]:
        return self.pool.stats()

    def record_response_times(self, histogram: Observe) -> None:
        self.pool.response_times = histogram

    async def warm_up(self, timeout_s: float) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s  # one deadline for both steps
        try:
            async with asyncio.timeout_at(deadline):
                auth = await self._authorization()
        except TimeoutError:
            return f"credentials not obtained within {timeout_s:g}s"
        if isinstance(auth, Outcome):
            return f"{auth.reason}: {auth.detail}" if auth.detail else auth.reason
        return await self.pool.connect(max(0.0, deadline - loop.time()))

    def problem(self) -> str | None:
        return self._credential_problem() or self._rejected or self.pool.problem()

    def _credential_problem(self) -> str | None:
        """Why the credentials cannot be used now, or None (the default: they always can)."""
        return None

    _rejected: str | None = None
    """The provider's last word against the app's credentials or configuration, until an
    answer shows them accepted again (a send, or a dead token: both passed authentication)."""

    def _outcome(self, result: BatchResult, authorization: bytes) -> Outcome:
        if isinstance(result, TransportError):
            return transport_outcome(result)
        outcome = self._parse(result)
        action = outcome.action
        if action in self._RETRY_ACTIONS:
            self._after_failure(outcome, result, authorization)
        elif action is Action.CFG:
            self._reject(outcome)
        elif self._rejected is not None and action in _ACCEPTED:
            self._rejected = None
        return outcome

    def _reject(self, outcome: Outcome) -> None:
        reason = outcome.reason or "refused"
        self._rejected = f"the provider answered {reason}" + (
            f" ({outcome.detail})" if outcome.detail else ""
        )

    async def send_batch(
        self,
        rows: Sequence[ClaimedRow],
        *,
        now: dt.datetime,
        abort: asyncio.Future[None] | None = None,
        on_late: LateOutcome | None = None,
        on_accepted: Accepted | None = None,
    ) -> list[Outcome | None]:
        outcomes: list[Outcome | None] = [None] * len(rows)
        built: list[tuple[int, Request]] = []
        for index, row in enumerate(rows):
            request = self._build(row, now)
            if isinstance(request, Outcome):
                outcomes[index] = request
            else:
                built.append((index, request))
        for attempt in range(2):  # one inline retry after an AUTH/CONN answer
            if not built:
                break
            auth = await self._authorization()
            if isinstance(auth, Outcome):
                for index, _ in built:
                    outcomes[index] = auth
                break
            authorization = auth[0][1] if auth else b""
            requests = [
                (request.headers + auth if auth else request.headers, request.body)
                for _, request in built
            ]
            answered = None if on_accepted is None else _accepted_handler(built, on_accepted)
            if on_late is None:
                results: list[BatchResult | None] = list(
                    await self.pool.send_batch(
                        requests, timeout_s=self._timeout_s, abort=abort, answered=answered
                    )
                )
            else:
                results = await self.pool.send_batch(
                    requests,
                    timeout_s=self._timeout_s,
                    abort=abort,
                    stragglers=Stragglers(
                        on_late=self._late_handler(built, authorization, on_late)
                    ),
                    answered=answered,
                )
            again: list[tuple[int, Request]] = []
            for (index, request), result in zip(built, results, strict=True):
                if result is None:
                    continue  # a straggler: its outcome goes to on_late
                outcome = self._outcome(result, authorization)
                if outcome.action in self._RETRY_ACTIONS and not isinstance(result, TransportError):
                    if attempt == 0:
                        again.append((index, request))
                        continue
                    outcome = self._exhausted(outcome)
                    if outcome.action is Action.CFG:
                        self._reject(outcome)
                outcomes[index] = outcome
            built = again
        return outcomes

    def _late_handler(
        self, built: list[tuple[int, Request]], authorization: bytes, on_late: LateOutcome
    ) -> Callable[[int, BatchResult], None]:
        """A straggler's result as its row's outcome (no inline retry: it is decided as is)."""

        def late(position: int, result: BatchResult) -> None:
            on_late(built[position][0], self._outcome(result, authorization))

        return late


def _accepted_handler(
    built: list[tuple[int, Request]], on_accepted: Accepted
) -> Callable[[int, Response], None]:
    """The pool's per-response hook: a 200 names its row (both providers accept with 200)."""

    def answered(position: int, response: Response) -> None:
        if response.status == 200:
            on_accepted(built[position][0])

    return answered


class Provider(Protocol):
    """One push service, as the config, the enqueue API and the daemon see it."""

    platform: str
    """The ``platform`` value of its apps and notifications (``apns``, ``fcm``)."""

    def parse_app(
        self, section: Section, *, base_dir: Path, environ: Mapping[str, str]
    ) -> tuple[PoolConfig, object]:
        """An app's pool and the provider's own settings, from its config table."""
        ...

    def check(self, notification: Notification) -> str | None:
        """What is wrong with a notification for this provider (generic checks done), or None."""
        ...

    def check_message(self, message: object, overrides: object) -> str | None:
        """What is wrong with a portable message and native overrides for this provider (its
        rendering would fail at send time), or None."""
        ...

    def senders(self, apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
        """One sender per app, in order, from their configs (credentials are read here, once).

        Built together, so that apps sharing a credential share its state (one APNs provider
        token per signing key).
        """
        ...

    async def check_credentials(
        self, app: AppConfig, *, timeout_s: float, now: dt.datetime
    ) -> CredentialReport:
        """What the app's credential is and whether the provider accepts it, delivering nothing.

        Reads the credential, checks it offline, then makes one live request that cannot
        deliver anything, through the same pool and TLS settings as the daemon's. Finishes
        within about ``timeout_s``; every failure is a failed check in the report, never an
        exception. ``now`` is the time expiry is judged against.
        """
        ...

    def credential_expiry(self, app: AppConfig) -> dt.datetime | None:
        """When the app's credential stops working (a certificate's notAfter), else None.

        Offline and cheap (reads local files only, never raises): the daemon calls it at start
        and daily to warn ahead of expiry.
        """
        ...

    def diagnoses(self, app: AppConfig) -> Sequence[Diagnosis]:
        """The misconfigurations an app's answers can reveal, watched by the daemon."""
        ...

    token_lifetime_days: int | None
    """How long the provider keeps a token of a device that never checks in, if it says."""
    pace_scopes: Mapping[str, str]
    """Throttling reasons and what each slows: ``project`` or ``device`` (pipeline/pacing.py)."""


class ProviderModule:
    """A :class:`Provider` made of a provider folder's functions."""

    def __init__(
        self,
        platform: str,
        *,
        parse_app: Callable[..., tuple[PoolConfig, object]],
        check: Callable[[Notification], str | None],
        check_message: Callable[[object, object], str | None],
        senders: Callable[..., list[Sender]],
        check_credentials: Callable[..., Awaitable[CredentialReport]],
        credential_expiry: Callable[[AppConfig], dt.datetime | None],
        diagnoses: Callable[[AppConfig], Sequence[Diagnosis]] = lambda app: (),
        token_lifetime_days: int | None = None,
        pace_scopes: Mapping[str, str] | None = None,
    ) -> None:
        self.platform = platform
        self.pace_scopes: Mapping[str, str] = dict(pace_scopes or {})
        """Throttling reasons and what each slows: ``project`` or ``device``."""
        self._parse_app = parse_app
        self._check = check
        self._check_message = check_message
        self._senders = senders
        self._check_credentials = check_credentials
        self._credential_expiry = credential_expiry
        self._diagnoses = diagnoses
        self.token_lifetime_days = token_lifetime_days

    def parse_app(
        self, section: Section, *, base_dir: Path, environ: Mapping[str, str]
    ) -> tuple[PoolConfig, object]:
        return self._parse_app(section, base_dir=base_dir, environ=environ)

    def check(self, notification: Notification) -> str | None:
        return self._check(notification)

    def check_message(self, message: object, overrides: object) -> str | None:
        return self._check_message(message, overrides)

    def senders(self, apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
        return self._senders(apps, request_timeout_s=request_timeout_s)

    async def check_credentials(
        self, app: AppConfig, *, timeout_s: float, now: dt.datetime
    ) -> CredentialReport:
        return await self._check_credentials(app, timeout_s=timeout_s, now=now)

    def credential_expiry(self, app: AppConfig) -> dt.datetime | None:
        return self._credential_expiry(app)

    def diagnoses(self, app: AppConfig) -> Sequence[Diagnosis]:
        return self._diagnoses(app)
