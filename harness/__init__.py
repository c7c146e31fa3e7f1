"""Helpers shared by the tests and the benchmark: start the project's processes, and talk to them as clients do.

Nothing here imports pytest: a helper that cannot do its job raises a plain
exception, and the tests decide whether that is a skip or a failure.
"""
