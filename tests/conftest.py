"""Shared test wiring: the real-part starters are plugins so every test folder can use them."""

# Imported now, not lazily by hypothesis' terminal-summary hook at the end of a run: on CPython 3.11 an
# ast.parse during which the GC collects an unretrieved future (aiokafka leaves one on a failed batch's
# internal drain waiter when the broker is gone) logs a traceback, whose formatting parses again and
# trips CPython's AST recursion-depth check (python/cpython#106905). Seen running test_shipping.py alone.
import hypothesis  # noqa: F401

pytest_plugins = [
    "tests.realparts.envoy",
    "tests.realparts.remixer",
    "tests.realparts.kafka",
    "tests.realparts.prometheus",
]
