"""Measure: generation helpers, scanning, text statistics, `eval` and `discover`."""
