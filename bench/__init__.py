"""Benchmarks that print comparable figures (not tests; run them by hand)."""
