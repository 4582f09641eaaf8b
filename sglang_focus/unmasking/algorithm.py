"""`Focus`: the dLLM algorithm SGLang runs when FOCUS is selected."""

from __future__ import annotations

from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
from sglang.srt.dllm.config import DllmConfig

from sglang_focus.compat import assert_hooks_active
from sglang_focus.config import SUPPORTED_ARCHITECTURES, parse_focus_config


class Focus(LowConfidence):
    """LowConfidence unmasking with FOCUS token eviction.

    The unmasking rule is the host's (`LowConfidence.step`, for both arms of any comparison), so FOCUS changes
    only which block tokens run through layers 2..L.
    """

    supported_architectures = SUPPORTED_ARCHITECTURES
    # torch_native for the CPU engine (SGLang would otherwise force FlashInfer), FlashInfer on GPUs.
    supported_attention_backends = ("flashinfer", "torch_native")

    def __init__(self, config: DllmConfig):
        super().__init__(config)
        assert_hooks_active()
        self.focus_config = parse_focus_config(config.algorithm_config)
        self.threshold = self.focus_config.threshold
