"""
The shared harness's stock Twisted L4 relay, on txlb's reactor.

The same C{portforward} relay as the harness's C{tw-l4} target (its own
C{tw_l4.py}, imported, not copied: round robin per connection, C{TCP_NODELAY}
on both legs as in C{tw-l4-fast}), but run on L{txlb.reactor.HotPathReactor}
instead of being monkeypatched by C{fastpath.py}.  Beside C{tw-l4-fast} it
shows whether txlb's reactor reaches what the experiment reached.

Usage (the harness fills in the placeholders)::

    <venv>/bin/python bench/tw_l4_txlbreactor.py --bench {bench} \\
        --listen {host}:{port} --backends {backends}

C{--bench} is the harness directory (C{tw_l4.py}, C{_twcommon.py}); the other
options are C{tw_l4.py}'s.
"""

import argparse
import os
import sys


def main() -> None:
    """
    Install txlb's reactor, then run the harness's relay on it.
    """
    from txlb.reactor import install

    # Before anything imports twisted.internet.reactor (tw_l4.py does).
    install()

    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--bench", default=os.path.join(here, os.pardir, os.pardir, "shared", "bench")
    )
    known, rest = parser.parse_known_args()
    sys.path.insert(0, os.path.abspath(known.bench))
    sys.argv[1:] = rest

    import _twcommon
    import tw_l4
    from twisted.internet import reactor

    args = _twcommon.parse_args(__doc__)
    _twcommon.setup_logging()
    factory = tw_l4.RoundRobinProxyFactory(args.backends)
    factory.protocol = tw_l4.NoDelayProxyServer
    _twcommon.listen(reactor, factory, args)
    reactor.run()


if __name__ == "__main__":
    main()
