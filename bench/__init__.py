"""framescale's benchmarks and capacity simulator (``make bench``; see bench/README.md)."""
