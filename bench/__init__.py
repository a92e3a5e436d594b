"""Benchmarks (`make bench`): throughput and overhead ratios measured in one run, not timed tests."""
