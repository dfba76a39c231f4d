"""Where the loop's records go: record sinks (``sinks``: stdout, file, UDP) and Prometheus metrics (``metrics``)."""
