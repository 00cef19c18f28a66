"""Shared test wiring: the real-part starters are plugins so every test folder can use them."""

pytest_plugins = [
    "tests.realparts.envoy",
    "tests.realparts.remixer",
    "tests.realparts.kafka",
    "tests.realparts.prometheus",
]
