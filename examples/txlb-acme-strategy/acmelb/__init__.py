"""
Acme's load-balancing strategies for txlb.
"""
