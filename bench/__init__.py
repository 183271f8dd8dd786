"""Benchmarks of supaflow on its own local stack (ports 55421-55425, state in .stack-bench/)."""
