"""The benchmark: the project as deployed against a baseline server of the old protocol.

Run ``python -m bench --help``; README.md, section Benchmark, explains the figures.
"""
