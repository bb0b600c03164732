"""Benchmarks of a world model against the procedural simulator (issue 8)."""
