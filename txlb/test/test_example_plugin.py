"""
Strategy discovery: the built-ins through the installed plugin path, name
matching, conflicts, and the example third-party distribution under
C{examples/txlb-acme-strategy} installed for real.

The install test runs pip and Python in subprocesses (offline: no index, no
dependencies, no build isolation); everything else here is in memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from twisted.plugin import IPlugin
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

import txlb
from txlb.interfaces import IStrategyFactory
from txlb.plugin import StrategyLookupError, findStrategy, strategyRegistry
from txlb.strategies.base import StrategyFactory
from txlb.strategies.hashing import ipHashingFactory
from txlb.strategies.roundrobin import RoundRobin, roundRobinFactory
from txlb.strategies.weighted import weightedRoundRobinFactory

BUILTIN_NAMES = [
    "consistent_hash",
    "ip_hashing",
    "least_connections",
    "maglev",
    "power_of_two",
    "random",
    "round_robin",
    "weighted_round_robin",
]

EXAMPLE = "examples/txlb-acme-strategy"


class BuiltinDiscoveryTests(SynchronousTestCase):
    """
    The built-in strategies are found as plugins, as a third party's are.
    """

    def test_everyBuiltinDiscoverable(self) -> None:
        """
        Every built-in strategy is in the registry built from the installed
        plugins, under its own name, as the factory its module defines.
        """
        registry = strategyRegistry()
        names = sorted(factory.name for factory in registry.values())
        for name in BUILTIN_NAMES:
            self.assertIn(name, names)
            factory = findStrategy(name, registry)
            self.assertEqual(factory.name, name)
            self.assertTrue(verifyObject(IPlugin, factory))
            self.assertTrue(verifyObject(IStrategyFactory, factory))
        self.assertIs(findStrategy("round_robin", registry), roundRobinFactory)

    def test_namesMatchLoosely(self) -> None:
        """
        Names match whatever their case, underscores and hyphens.
        """
        registry = strategyRegistry()
        for spelling, factory in [
            ("RoundRobin", roundRobinFactory),
            ("round_robin", roundRobinFactory),
            ("Round-Robin", roundRobinFactory),
            ("ip_hashing", ipHashingFactory),
            ("IPHashing", ipHashingFactory),
            ("WEIGHTED_ROUND_ROBIN", weightedRoundRobinFactory),
        ]:
            self.assertIs(findStrategy(spelling, registry), factory, spelling)

    def test_unknownNameListsInstalled(self) -> None:
        """
        An unknown name raises L{StrategyLookupError} listing the installed
        names.
        """
        error = self.assertRaises(
            StrategyLookupError, findStrategy, "round_robbin", strategyRegistry()
        )
        for name in BUILTIN_NAMES:
            self.assertIn(name, str(error))


class RegistryTests(SynchronousTestCase):
    """
    Tests for L{strategyRegistry} over given factories.
    """

    def test_twoPluginsOneName(self) -> None:
        """
        Two plugins claiming one name (after normalizing) are an error
        naming it, not a silent pick.
        """
        impostor = StrategyFactory(
            name="Round-Robin", description="Another one.", strategyType=RoundRobin
        )
        error = self.assertRaises(
            StrategyLookupError,
            strategyRegistry,
            factories=[roundRobinFactory, ipHashingFactory, impostor],
        )
        self.assertIn("Round-Robin", str(error))

    def test_classAloneIgnored(self) -> None:
        """
        A factory class (rather than an instance) is not a plugin.
        """
        registry = strategyRegistry(factories=[StrategyFactory, roundRobinFactory])
        self.assertEqual(list(registry.values()), [roundRobinFactory])

    def test_withoutIPluginIgnored(self) -> None:
        """
        An object providing L{IStrategyFactory} but not L{IPlugin} is not a
        plugin.
        """

        class Unplugged:
            """
            A strategy factory in all but L{IPlugin}.
            """

            name = "unplugged"
            description = "Not a plugin."

            def build(self, options: object) -> RoundRobin:
                """
                A round robin strategy.
                """
                return RoundRobin()

        unplugged = Unplugged()
        directlyProvides(unplugged, IStrategyFactory)
        self.assertEqual(dict(strategyRegistry(factories=[unplugged])), {})


def sourceRoot() -> Path:
    """
    The source tree: C{$TXLB_SOURCE} when the tests run against an installed
    txlb (as C{dev/test} does), else the checkout this txlb is imported from.
    """
    source = os.environ.get("TXLB_SOURCE")
    if source:
        return Path(source)
    return Path(txlb.__file__).resolve().parent.parent


def canBuildWheels() -> bool:
    """
    Whether setuptools can build a wheel here without fetching anything:
    setuptools 70.1 and later can alone, earlier ones need C{wheel}.
    """
    if find_spec("wheel") is not None:
        return True
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (70, 1)


class InstalledExampleTests(SynchronousTestCase):
    """
    The example plugin distribution, installed with pip into a directory of
    its own, is found by name and works, and its own tests pass.
    """

    def setUp(self) -> None:
        example = sourceRoot() / EXAMPLE
        if not (example / "setup.cfg").exists():
            raise SkipTest(f"{example} not found: set TXLB_SOURCE to the checkout")
        if not canBuildWheels():
            raise SkipTest(
                "setuptools cannot build wheels offline here: install wheel or "
                "setuptools>=70.1 (dev/test does)"
            )
        work = Path(self.mktemp()).resolve()
        # Build from a copy: an in-tree build leaves build/ and *.egg-info.
        self.source = work / "source"
        shutil.copytree(
            example,
            self.source,
            ignore=shutil.ignore_patterns("dropin.cache", "__pycache__", "build"),
        )
        self.target = work / "target"
        self.cwd = work / "cwd"
        self.cwd.mkdir()
        self.runCommand(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(self.target),
            str(self.source),
        )

    def runCommand(self, *command: str) -> str:
        """
        Run C{command} with the install directory first on the path.

        @return: its standard output.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(getattr(self, "target", ""))]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        done = subprocess.run(
            command,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode:
            self.fail(
                f"{' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done.stdout

    def test_foundByName(self) -> None:
        """
        The plugin module is installed under C{twisted/plugins} (with no
        C{__init__.py} there or in C{twisted/}); after regenerating the
        plugin cache as the docs say, C{findStrategy} finds the example by
        any spelling of its name next to the built-ins, and what it builds
        chooses as documented.
        """
        plugins = self.target / "twisted" / "plugins"
        self.assertTrue((plugins / "acme_txlb.py").exists())
        self.assertFalse((plugins / "__init__.py").exists())
        self.assertFalse((self.target / "twisted" / "__init__.py").exists())
        self.runCommand(
            sys.executable,
            "-c",
            "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))",
        )
        self.assertTrue((plugins / "dropin.cache").exists())
        script = """
import json
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject
from txlb.interfaces import IStrategy
from txlb.plugin import findStrategy, strategyRegistry
from txlb.testing import makeBackends, makeContext

factory = findStrategy("ACME-Fastest")
strategy = factory.build({"explore": 0})
verifyObject(IStrategy, strategy)
backends = makeBackends(["a", "b", "c"], latencies=[0.3, 0.1, 0.2])
print(json.dumps({
    "name": factory.name,
    "module": type(factory).__module__,
    "chosen": strategy.choose(backends, makeContext("192.0.2.1")).name,
    "names": sorted(f.name for f in strategyRegistry().values()),
}))
"""
        found = json.loads(self.runCommand(sys.executable, "-c", script))
        self.assertEqual(found["name"], "acme_fastest")
        self.assertEqual(found["module"], "acmelb.strategy")
        self.assertEqual(found["chosen"], "b")
        self.assertEqual(found["names"], sorted(BUILTIN_NAMES + ["acme_fastest"]))

    def test_exampleTestsPass(self) -> None:
        """
        The example's own tests, written with L{txlb.testing}, pass against
        the installed example.
        """
        output = self.runCommand(sys.executable, "-m", "twisted.trial", "acmelb")
        self.assertIn("PASSED", output)
        self.assertIn("FastestConformanceTests", output)


class DocumentationTests(SynchronousTestCase):
    """
    C{docs/plugins.md} shows the example as it is.
    """

    def test_docsShowTheExample(self) -> None:
        """
        Every file of the example that the plugin guide quotes in full is
        quoted exactly, and the quoted start of its tests is their start.
        """
        root = sourceRoot()
        guide = root / "docs" / "plugins.md"
        if not guide.exists():
            raise SkipTest(f"{guide} not found: set TXLB_SOURCE to the checkout")
        blocks = re.findall(
            r"```(?:python|toml|ini)\n(.*?)```", guide.read_text(), re.S
        )
        example = root / EXAMPLE
        for name in (
            "acmelb/strategy.py",
            "twisted/plugins/acme_txlb.py",
            "pyproject.toml",
            "setup.cfg",
        ):
            self.assertIn((example / name).read_text(), blocks, name)
        tests = (example / "acmelb" / "test" / "test_strategy.py").read_text()
        self.assertTrue(any(len(b) > 500 and tests.startswith(b) for b in blocks))
