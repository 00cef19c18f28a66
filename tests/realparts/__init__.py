"""Starters for the real parts the tests run against: Envoy, Tansu (Kafka), Prometheus.

Each module is a pytest plugin (listed in tests/conftest.py) whose fixtures start the real
process on free ports and clean up after themselves.
"""
