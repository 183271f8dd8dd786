"""Run the peers (DBOS Transact, Procrastinate) on the bench stack's Postgres cluster.

Per round and peer: a database of its own, 2 worker processes, a warm-up of 50 jobs,
`--probes` unloaded 3-step probes, then `--jobs` jobs of 1 and of 3 no-op steps started
by `--concurrency` clients; workers stopped and the database dropped at the end.
Results: bench/results/<result-name>.json. bench.run_all runs this once per round,
after our own throughput and latency, and builds the comparison (peers.json).

    python -m bench.peers [--peers dbos procrastinate] [--jobs 2000] [--runs 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench.common import bench_stack, log, write_result
from bench.peers import report
from bench.peers.dbos_peer import DbosPeer
from bench.peers.harness import Peer, run_peer
from bench.peers.procrastinate_peer import ProcrastinatePeer

PEERS: dict[str, type[DbosPeer] | type[ProcrastinatePeer]] = {
    "dbos": DbosPeer, "procrastinate": ProcrastinatePeer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per load (default 2000)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3], choices=[1, 3])
    parser.add_argument("--runs", type=int, default=1, help="rounds (peer after peer in each)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per load at most")
    parser.add_argument("--probes", type=int, default=60, help="unloaded probes (0: none)")
    parser.add_argument("--result-name", default="peers-run", help="bench/results/<name>.json")
    args = parser.parse_args(argv)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.peers}
    with bench_stack() as stack:
        postmaster = stack.postmaster_pid()
        if postmaster is None:
            raise SystemExit("the bench stack's Postgres is not running")
        for i in range(args.runs):
            for name in args.peers:
                peer: Peer = PEERS[name]()
                log(f"=== peer {name}, round {i + 1}/{args.runs}")
                t = time.monotonic()
                runs[name].append(run_peer(
                    peer, stack.database_url, postmaster, stack.cfg.state_dir, f"r{i + 1}",
                    args.jobs, args.concurrency, args.cap, args.probes, tuple(args.steps)))
                log(f"=== peer {name} done in {time.monotonic() - t:.0f} s")
    medians = {name: report.medians([report.peer_figures(r) for r in rs]) for name, rs in runs.items()}
    for name, m in medians.items():
        log(f"median {name}: {m}")
    write_result(args.result_name, {"params": vars(args), "medians": medians, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
