"""Studies of FOCUS on the bundled checkpoint, in plain PyTorch (no server).

- ``decodability``: does the layer-0 -> layer-1 importance delta predict which masked tokens a step decodes?
- ``selection``: FOCUS's selection replayed on the stock decoding trajectory, against random, leftmost and oracle.
"""
