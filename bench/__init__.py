"""cloudcontainer benchmarks: `python -m bench [names...]` prints a table and writes JSON."""
