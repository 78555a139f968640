"""Scaling experiments: layouts, trials with measured peak memory, search, and reports.

The command line is tools/scaling_experiment.py; the memory model is megatron_sp/memory/estimate.py.
"""
