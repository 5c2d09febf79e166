"""``make bench``: pushgres's throughput and CPU cost against a C HTTP/2 sink, on one machine.

``python -m benchmarks`` (from the repository root; ``-h`` for the options) runs every step in
one go and prints a table, also written as JSON under ``benchmarks/results/``:

* sink probe and ceiling: ``h2load`` → the sink (:mod:`benchmarks.ceiling`);
* transport: pushgres's own HTTP/2 pool → the sink, once per codec (:mod:`benchmarks.transport`);
* baseline: aioapns → the sink (:mod:`benchmarks.baseline`);
* end to end: Postgres → ``pushgres run`` → the sink (:mod:`benchmarks.e2e`).

Shared pieces: the sink (:mod:`benchmarks.sink`), the request every step sends and its
credentials (:mod:`benchmarks.workload`), child processes and their CPU and memory
(:mod:`benchmarks.procs`), the client-subprocess contract (:mod:`benchmarks.client`). The table,
ratios and targets are in :mod:`benchmarks.report`; the command line in :mod:`benchmarks.run`.
"""
