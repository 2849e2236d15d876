"""
The built-in load-balancing strategies.

Each module defines strategies (L{txlb.interfaces.IStrategy}) and one
L{StrategyFactory <txlb.strategies.base.StrategyFactory>} instance per
algorithm name; C{twisted/plugins/txlb_strategies.py} exposes those
instances as plugins, so txlb finds the built-ins by name exactly as it
finds a third party's:

    - L{roundrobin <txlb.strategies.roundrobin>}: C{round_robin}
    - L{weighted <txlb.strategies.weighted>}: C{weighted_round_robin}
    - L{leastconn <txlb.strategies.leastconn>}: C{least_connections}
    - L{randomized <txlb.strategies.randomized>}: C{random}
    - L{p2c <txlb.strategies.p2c>}: C{power_of_two}
    - L{hashing <txlb.strategies.hashing>}: C{ip_hashing}, C{consistent_hash}
    - L{maglev <txlb.strategies.maglev>}: C{maglev}
    - L{base <txlb.strategies.base>}: the factory, option checks and stable
      hashing they share.

Nothing is imported here, so importing one strategy does not import all.
"""
