"""
Acme's txlb strategies, as plugins: module-level instances only.
"""

from acmelb.strategy import FastestFactory

acmeFastest = FastestFactory()
