"""fbench benchmarks plugins (registered through the fbench.benchmarks entry-point group)."""
