"""What the test suite and the benchmarks share: a handle on a running stack, users,
workflows, jobs, fault injection and the invariant checks.

Modules, by concept: `stack` (the Stack handle, users, tokens, SQL), `api` (a client that
checks answers against docs/openapi.yaml), `workflows` (definitions and the one place a
workflow row is inserted), `jobs` (starting and waiting), `receiver` (a webhook stand-in),
`faults` (killing and restarting processes, hand deliveries), `orchestrators`
(orchestrator passes in processes of their own) and `invariants`.
"""
