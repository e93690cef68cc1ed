"""Experiments: configuration, assignment, recording, statistics, decisions and reports.

The statistics engine (``ab.statistics``, ``ab.sequential``, ``ab.power``, ``ab.srm``,
``ab.multitest``) works from per-arm sufficient statistics only, so the same numbers can be
recomputed from SQL aggregates and cross-checked against GrowthBook's ``gbstats``.
"""
