"""
txlb: a load balancer on Twisted.

L4 TCP relay and L7 HTTP/1.1 reverse proxy, configured by one TOML file and
run by C{twistd txlb}.
"""

__version__ = "0.1.0"
