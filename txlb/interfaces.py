"""
Every zope.interface of txlb, in one place.

These names are a public contract: plugin authors implement L{IStrategyFactory}
and L{IStrategy}, and may implement the optional L{IMembershipAware} and
L{ILatencyObserver}; their tests use the helpers in L{txlb.testing}.
L{IExchange} is txlb's own: what an L7 backend connection reports a
response to.

How a strategy gets what it needs
=================================

  - B{Options}: C{IStrategyFactory.build(options)} receives the pool's
    C{algorithm_options} table as a plain C{dict}.  Reject what you do not
    understand by raising C{ValueError}; txlb turns that into a configuration
    error naming the file and the key.
  - B{Randomness and time}: never use the global C{random} module or
    C{time.time()}.  Every call to L{IStrategy.choose} gets a context
    (L{IChoiceContext}) whose C{random} attribute is the pool's
    C{random.Random} (seeded from the OS in production, seeded by the test in
    tests) and whose C{clock} is the reactor (an L{IReactorTime}), so a
    strategy is deterministic under test.
  - B{Load and latency}: every candidate (L{IBackend}) carries
    C{activeConnections} (in-flight connections or requests) and
    C{latency} (an exponentially weighted moving average of observed
    connect/response times, in seconds, or C{None} before the first
    observation).  A strategy that wants every raw observation also provides
    L{ILatencyObserver}.
  - B{Membership}: a strategy that precomputes a table (maglev, a hash ring)
    provides L{IMembershipAware}; the pool calls C{membershipChanged} with all
    of its backends once before the first pick and again whenever a backend is
    added or removed or its configured weight changes, never on a pick.
    Health changes do not rebuild tables: C{choose} receives only the usable
    backends, and a table-driven strategy falls back along its table (or its
    ring) to a usable one.
"""

from typing import Sequence

from zope.interface import Attribute, Interface


class IBackend(Interface):
    """
    What a strategy sees of one backend server.
    """

    name = Attribute(
        "C{str}: the server's identity in the pool, unique within it "
        "(defaults to C{address:port})."
    )
    address = Attribute("C{str} or C{None}: host for TCP backends.")
    port = Attribute("C{int} or C{None}: port for TCP backends.")
    weight = Attribute(
        "C{int}: the effective weight now: the configured weight, except "
        "during slow start, when it is a C{float} ramping up from a tenth of "
        "it. Table-driven strategies (hash rings) lay out C{configuredWeight} "
        "when a backend has one."
    )
    activeConnections = Attribute(
        "C{int}: connections (L4) or requests (L7) in flight to this backend."
    )
    latency = Attribute(
        "C{float} or C{None}: moving average of observed latency in seconds."
    )


class IChoiceContext(Interface):
    """
    What a strategy knows about the connection or request being placed.
    """

    clientAddress = Attribute(
        "The client's L{twisted.internet.interfaces.IAddress}, or C{None}."
    )
    clientHost = Attribute("C{str} or C{None}: the client's IP address.")
    request = Attribute("For L7, the request being routed; C{None} for L4.")
    hashKey = Attribute(
        "C{bytes} or C{None}: the affinity key the pool extracted for hashing "
        "strategies (from a header, a cookie, the path or the client IP)."
    )
    random = Attribute("A C{random.Random}: the only randomness to use.")
    clock = Attribute("An L{IReactorTime}: the only clock to read.")


class IStrategy(Interface):
    """
    A load-balancing decision for one pool.  Stateful; one per pool.
    """

    def choose(candidates, context):
        """
        Pick a backend.

        @param candidates: the usable backends, a non-empty sequence of
            L{IBackend} in pool order.  Do not mutate it.
        @param context: an L{IChoiceContext}.
        @return: one element of C{candidates}.
        """


class IChoiceExplainer(Interface):
    """
    Optional for strategies: say why a backend was chosen, for the admin
    API's recent decisions.  Called for a sample of picks only, never on
    every one.
    """

    def explain(
        chosen: IBackend, candidates: Sequence[IBackend], context: IChoiceContext
    ) -> str | None:
        """
        One short sentence on why C{chosen} (e.g. C{"fewest in flight per
        weight: 2/1"}), or C{None} for the default.
        """


class IStrategyFactory(Interface):
    """
    A named, stateless factory of L{IStrategy}, discovered as a plugin.

    A plugin is a module-level instance in a C{twisted/plugins/*.py} module
    that provides both this and L{twisted.plugin.IPlugin}.
    """

    name = Attribute(
        "C{str}: unique name used as C{algorithm = '...'} in lb.toml; "
        "matched after lower-casing and removing C{_} and C{-}."
    )
    description = Attribute("C{str}: one line for --help and the docs.")

    def build(options):
        """
        Make a strategy for one pool.

        @param options: the pool's C{algorithm_options} as a C{dict}.
        @return: a new L{IStrategy}.
        @raise ValueError: an option is unknown or has a bad value.
        """


class IMembershipAware(Interface):
    """
    Optional: a strategy that precomputes state from the pool's membership.
    """

    def membershipChanged(backends):
        """
        The pool's backends (all of them, usable or not) changed.

        @param backends: a sequence of L{IBackend} in pool order.
        """


class ILatencyObserver(Interface):
    """
    Optional: a strategy that wants every latency observation.
    """

    def latencyObserved(backend, seconds):
        """
        A connect (L4) or a response (L7) to C{backend} took C{seconds}.
        """


class IExchange(Interface):
    """
    The receiver of one response from a backend: what the client side
    passes to L{txlb.protocols.upstream.UpstreamConnection.sendRequest}.

    Calls arrive in this order: any number of L{informational}, then
    L{responseStarted}, then any number of L{responseBody}, then
    L{responseComplete}, or L{responseWhole} instead of those three; or,
    after a 101, L{responseStarted} then L{upgraded}.  L{responseFailed} may end the sequence at any point
    before its end.  After L{responseComplete}, L{upgraded},
    L{responseFailed}, or L{txlb.protocols.upstream.UpstreamConnection.abort}, nothing more is
    called.  Any method may call L{txlb.protocols.upstream.UpstreamConnection.abort}.  During
    L{responseStarted} and L{responseBody}, the connection's C{moreFollows}
    says whether another call follows before it returns to the reactor.
    """

    def responseStarted(version, status, reason, headers, framing):  # noqa: N805
        """
        A final (C{>= 200}) or 101 response head arrived and passed
        L{txlb.protocols.headers.validateResponseHeaders}.

        @param version: C{(major, minor)}.
        @param status: the status code.
        @param reason: the reason phrase (C{b""} when absent).
        @param headers: the header lines, C{(name, value)} as received.
        @param framing: the L{txlb.protocols.headers.ResponseFraming} the headers gave.
        """

    def informational(status, reason, headers):  # noqa: N805
        """
        An interim response other than 101 (100 Continue, 103 Early Hints)
        arrived and passed validation; the final one is still to come.
        """

    def responseBody(data):  # noqa: N805
        """
        The next bytes of the body, de-chunked.
        """

    def responseComplete():
        """
        The whole response was read.  The connection is already back in
        the pool, or closed, unless the request is not finished yet: then
        it goes back (or is closed) at L{txlb.protocols.upstream.UpstreamConnection.finishRequest}.
        """

    def responseWhole(version, status, reason, headers, framing, body):  # noqa: N805
        """
        A final response whose head and whole body (its C{Content-Length}
        bytes, or none) came in one read with nothing after them: what
        L{responseStarted}, L{responseBody} (for a non-empty C{body}) and
        L{responseComplete} would say, in one call.  As for
        L{responseComplete}, the connection is already back in the pool, or
        closed, unless the request is not finished yet.
        """

    def responseFailed(reason, started):  # noqa: N805
        """
        The response will not be complete.

        @param reason: a L{Failure} wrapping an L{txlb.protocols.upstream.UpstreamError}.
        @param started: C{True} when any byte of a response was received.
        """

    def upgraded(connection, extra):  # noqa: N805
        """
        After C{responseStarted} of a 101: the connection is now a byte
        tunnel, and never goes back to the pool.

        @param connection: the L{txlb.protocols.upstream.UpstreamConnection}; call its
            L{txlb.protocols.upstream.UpstreamConnection.tunnelTo} with the client transport to
            have the backend's bytes written to it.
        @param extra: the bytes that followed the 101 head.
        """
