"""
Deployment example: twistd -r txlb -ny txlb.tac  (config path: TXLB_CONFIG, default lb.toml)
"""
import os

from twisted.application.service import Application

from txlb.tap import makeServiceFromFile

application = Application("txlb")
makeServiceFromFile(os.environ.get("TXLB_CONFIG", "lb.toml")).setServiceParent(application)
