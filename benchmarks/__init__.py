"""Speed and memory benchmarks (run by hand, never asserted in tests): docs/benchmarks.md."""
