"""
Connection limits: how many connections one listener holds at once.

A listener's protocol asks its L{ConnectionLimit} to L{acquire
<ConnectionLimit.acquire>} a slot as soon as a connection is made, closes the
connection at once when that is refused (the connection is I{shed}), and
L{releases <ConnectionLimit.release>} the slot when the connection and
everything it opened are gone.  L{ConnectionLimit.drained} is how graceful
shutdown waits for the last one.
"""

from __future__ import annotations

import attrs
from attrs.validators import ge, optional
from twisted.internet.defer import Deferred, succeed


@attrs.define(eq=False)
class ConnectionLimit:
    """
    Admit at most C{maximum} connections at once; count the rest as shed.

    @ivar maximum: the most connections held at once; C{None} admits every
        connection.  It may be changed at run time (a lower value sheds new
        connections until enough of the current ones have gone).
    @ivar active: connections admitted and not yet released.
    @ivar admitted: connections ever admitted.
    @ivar shed: connections ever refused because C{maximum} was reached.
    """

    maximum: int | None = attrs.field(default=None, validator=optional(ge(0)))
    active: int = attrs.field(default=0, init=False)
    admitted: int = attrs.field(default=0, init=False)
    shed: int = attrs.field(default=0, init=False)
    _waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)

    def acquire(self) -> bool:
        """
        Take a slot for a new connection, if one is free.

        @return: C{True} when the connection is admitted (release it later
            with L{release}); C{False} when it must be shed (it has been
            counted in C{shed}, and must not be released).
        """
        if self.maximum is not None and self.active >= self.maximum:
            self.shed += 1
            return False
        self.active += 1
        self.admitted += 1
        return True

    def release(self) -> None:
        """
        Give back the slot of an admitted connection that has gone.

        When it was the last one, every L{Deferred} returned by L{drained}
        fires.

        @raise RuntimeError: more releases than admissions.
        """
        if self.active <= 0:
            raise RuntimeError("connection limit released more than acquired")
        self.active -= 1
        if self.active == 0 and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drained(self) -> Deferred[None]:
        """
        Wait until no admitted connection is left.

        @return: a L{Deferred} that fires with C{None} as soon as C{active}
            is 0 (at once when it already is).  Cancelling it stops the
            wait and leaves the connections alone.
        """
        if self.active == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter


# Validated when made; the counters change on every request, so no attrs
# hook runs on assignment.
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class RetryBudget:
    """
    Bound retries to a share of the requests in flight, so that a failing
    backend cannot make its pool's load grow by more than C{ratio}.

    Like Envoy's retry budgets: a retry may start while the retries in
    flight are fewer than C{ratio} of the requests in flight, or fewer than
    C{minimum} (so a quiet pool can still retry).

    @ivar ratio: the share of in-flight requests that may be retries.
    @ivar minimum: retries always allowed at once.
    @ivar requests: requests in flight.
    @ivar retries: retries in flight.
    @ivar refused: retries refused by the budget.
    """

    ratio: float = attrs.field(default=0.2, validator=ge(0.0))
    minimum: int = attrs.field(default=3, validator=ge(0))
    requests: int = attrs.field(default=0, init=False)
    retries: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)

    def allowRetry(self) -> bool:
        """
        May one more retry start now?  A refusal is counted.
        """
        if self.retries < max(self.minimum, self.ratio * self.requests):
            return True
        self.refused += 1
        return False
