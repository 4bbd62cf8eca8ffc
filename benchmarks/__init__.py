"""Runnable benchmarks of sdsnodes, each printing a table against a baseline measured in the same
run (see ``benchmarks/README.md``). Run them with ``python -m benchmarks.run``; they are never
part of the test run, and no timing is asserted anywhere."""
