"""
Every zope.interface of txlb, in one place.

These names are a public contract: plugin authors implement L{IStrategyFactory}
and L{IStrategy}, and may implement the optional L{IMembershipAware} and
L{ILatencyObserver}; their tests use the helpers in L{txlb.testing}.

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
