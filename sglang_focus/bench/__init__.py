"""Tools that drive the plugin from outside: benchmarks, the demo and the local-server helper they share.

Nothing in the runtime imports them. Run each as ``python -m sglang_focus.bench.<module>``.

- ``throughput``: output throughput of stock vs FOCUS per batch size, both arms served at once.
- ``accuracy``: exact-match accuracy of stock vs FOCUS on held-out task problems, each arm served in turn.
- ``forward``: one denoising forward of an SDAR-shaped decoder, stock vs FOCUS (torch, tqdm and the kernels only).
- ``kernels``: the Triton kernels against their PyTorch references (torch, tqdm and the kernels only).
- ``arms``: the two arms every comparison runs, as ``launch_server`` flags, and the request driver.
- ``local_server``: start, wait for and stop a ``launch_server`` on 127.0.0.1, by PID.
- ``demo``: ``make demo``, the bundled model served with ``--focus`` solving held-out problems.
"""
