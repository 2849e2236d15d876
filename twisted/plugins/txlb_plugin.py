"""
Registers C{twistd txlb}; the options module is imported only when used.
"""

from twisted.application.service import ServiceMaker

txlb = ServiceMaker(
    "txlb",
    "txlb.tap",
    "Load balancer: L4 TCP relay and L7 HTTP/1.1 reverse proxy across backend servers.",
    "txlb",
)
