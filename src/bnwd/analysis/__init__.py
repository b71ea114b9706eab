"""Finished run folders read back: aggregation, claims, summaries, reports and figures."""
