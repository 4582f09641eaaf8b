"""Every place sglang-focus touches SGLang internals, with the reason and the way out.

Each entry names one hook on one SGLang target. The hook lives in the file named after the patched SGLang module
(`patches/<module>.py`), keeps SGLang's behaviour unless its condition holds, and is covered by a test under
tests/patches/. `scope` says when a hook changes anything:
- "focus": only when the FOCUS algorithm is selected (inert otherwise);
- "dllm": every diffusion-LLM run, stock algorithms included, and only where stock SGLang would crash or
  misbehave; checkpoints stock SGLang already serves see no change, so stock and FOCUS compare on equal footing.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import NamedTuple


class Patch(NamedTuple):
    module: str  # our file in patches/, named after the SGLang module it patches
    hook: str  # function in that file
    target: str  # dotted SGLang target
    kind: str  # HookType name: BEFORE | AFTER | AROUND | REPLACE
    scope: str  # "focus" | "dllm"
    why: str
    how: str
    removal: str  # what upstream change makes it unnecessary


MANIFEST: tuple[Patch, ...] = (
    Patch(
        module="server_args", hook="add_focus_cli_args", target="sglang.srt.server_args.ServerArgs.add_cli_args",
        kind="AFTER", scope="focus",
        why="`--focus`, `--focus-alpha`, `--focus-config` on launch_server / sglang serve.",
        how="Adds the three flags to SGLang's parser; they are not ServerArgs fields, so SGLang ignores them.",
        removal="An upstream way for plugins to declare CLI flags.",
    ),
    Patch(
        module="server_args", hook="resolve_focus_cli_args", target="sglang.srt.server_args.ServerArgs.from_cli_args",
        kind="AROUND", scope="focus",
        why="Translate `--focus` into the canonical `--dllm-algorithm Focus --dllm-algorithm-config FILE` and reject "
            "bad FOCUS options with one clear line before any process starts.",
        how="Validates the FOCUS YAML and flags, writes the merged YAML to a file deleted at exit, sets the two "
            "dllm fields on the Namespace, then calls the original. Untouched unless --focus or "
            "--dllm-algorithm Focus is given.",
        removal="Same as add_cli_args; validation would move to the algorithm's configure_server_args.",
    ),
    Patch(
        module="dllm_config", hook="apply_checkpoint_dllm_params", target="sglang.srt.dllm.config.DllmConfig.from_server_args",
        kind="AFTER", scope="dllm",
        why="SGLang takes the mask id and block size from a hard-coded per-architecture table, so checkpoints with "
            "another vocabulary (every small model) crash with an index error.",
        how="Prefers the YAML's `mask_id`/`block_size`, then config.json's `mask_token_id`/`block_size`, then the "
            "table; validates the mask id against the vocabulary. Same values as before for the table's models.",
        removal="Upstream reading mask_token_id/block_size from the model config.",
    ),
    Patch(
        module="arg_groups_overrides", hook="keep_torch_native_on_cpu",
        target="sglang.srt.arg_groups.overrides._dllm_attention_backend",
        kind="AROUND", scope="dllm",
        why="On a CPU host SGLang forces the FlashInfer backend for dLLM algorithms that list no supported "
            "backends (stock LowConfidence), and FlashInfer does not run on a CPU.",
        how="On the CPU engine with torch_native already chosen, declares nothing; otherwise calls the original.",
        removal="Upstream skipping the FlashInfer default when the platform is the CPU.",
    ),
    Patch(
        module="models_sdar", hook="load_weights_with_tied_embeddings",
        target="sglang.srt.models.sdar.SDARForCausalLM.load_weights",
        kind="AROUND", scope="dllm",
        why="With tie_word_embeddings, `lm_head` is `embed_tokens` and has no `lm_head.weight` parameter, so "
            "loading raises KeyError('lm_head.weight').",
        how="When lm_head is the embedding module, clears config.tie_word_embeddings for the duration of the call "
            "(the embedding is loaded once, which also fills the tied head).",
        removal="Upstream guarding the tied-weight copy in SDARForCausalLM.load_weights.",
    ),
    Patch(
        module="dllm_algorithm_low_confidence", hook="step_without_mask_token",
        target="sglang.srt.dllm.algorithm.low_confidence.LowConfidence.step",
        kind="AROUND", scope="dllm",
        why="The greedy argmax may pick the mask token itself, which re-masks the position and can emit the mask "
            "id as output text.",
        how="Sets the mask id's logit to -inf before the original step.",
        removal="Upstream excluding mask_id from the unmasking argmax.",
    ),
)


def _hook_fn(patch: Patch):
    module = importlib.import_module(f"{__name__}.{patch.module}")
    return getattr(module, patch.hook)


def apply_all() -> None:
    """Register every manifest hook with SGLang's HookRegistry (applied by SGLang's plugin loader)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for patch in MANIFEST:
        HookRegistry.register(patch.target, _hook_fn(patch), HookType[patch.kind])


def _resolve(target: str):
    owner_path, attr = target.rsplit(".", 1)
    owner = pkgutil.resolve_name(owner_path)
    return getattr(owner, attr)


def missing_hooks() -> list[str]:
    """Targets whose current attribute is not a HookRegistry wrapper (SGLang logs hook failures and goes on)."""
    return [p.target for p in MANIFEST if not hasattr(_resolve(p.target), "__wrapped__")]


def patch_files() -> set[str]:
    """Modules in this package that hold hooks (everything but this file)."""
    return {m.name for m in pkgutil.iter_modules(__path__)}
