"""The peer benchmark: DBOS Transact and Procrastinate run our throughput and latency
workloads on the bench stack's Postgres cluster, so that our figures have a yardstick
measured on the same machine, in the same run.

Each peer gets a database of its own (created and dropped here), its workers run as
subprocesses started and stopped here, and the load comes from this process, as
bench.throughput's does for ours. `python -m bench.peers` runs it; bench.run_all runs it
in rounds, interleaved with ours.
"""
