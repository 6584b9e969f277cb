"""Reporting: loading results, tables, statistics and figures.

In Python, ``load(RUNS)`` gives one row per test image of every finished run (best checkpoint by
default) and ``summary(RUNS)`` the cells of ``bench table`` as a tidy DataFrame.
"""

from harness.reporting.load import load
from harness.reporting.summary import summary

__all__ = ["load", "summary"]
