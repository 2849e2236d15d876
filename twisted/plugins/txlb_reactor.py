"""
txlb's hot-path reactor as a reactor plugin: C{twistd -r txlb},
C{twist --reactor=txlb}, C{trial --reactor=txlb}.

Only the module name is given here; L{txlb.reactor} is imported when the
reactor is installed, not when plugins are listed.
"""

from twisted.application.reactors import Reactor

txlb = Reactor(
    "txlb",
    "txlb.reactor",
    "epoll with immediate TCP sends and no per-event log context "
    "(txlb's hot path; the platform default where epoll is unavailable).",
)
