"""Reporting: loading results, tables, statistics and figures."""
