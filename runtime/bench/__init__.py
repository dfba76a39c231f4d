"""``vla-bench``: latency figures defined as trtexec defines them, with the machine they were taken on.

- ``environment``: CPU, governor, affinity, versions, GPU and Jetson power state (tegrastats);
- ``engine_bench``: one engine (bundle, ``.plan`` or any ``.onnx``) run back to back, per stage;
- ``loop_bench``: the real ``vla-run`` pipeline on synthetic cameras, per tick;
- ``report``: table, Markdown, JSON, PNG, and ``compare`` of two JSON reports;
- ``interleaved``: peers timed round by round (benchmarks' and the export's ratios);
- ``cli``: the command line.

A result is a dict of schema ``vla.bench/1`` (see ``result.py``).
"""
