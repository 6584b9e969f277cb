"""Load segbench's conformance kit as a pytest plugin (its fixtures, marker and test parametrization)."""

pytest_plugins = ["harness.testing"]
