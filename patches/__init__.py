"""Every place sglang-focus touches SGLang internals, with the reason and the way out.

Each entry names one hook on one SGLang target. The hook lives in the file named after the patched SGLang module
(`patches/<module>.py`), keeps SGLang's behaviour unless its condition holds, and is covered by a test under
tests/patches/. `scope` says when a hook changes anything:
- "focus": only when the FOCUS algorithm is selected (inert otherwise);
- "dllm": every diffusion-LLM run, stock algorithms included, and only where stock SGLang would crash or
  misbehave; checkpoints stock SGLang already serves see no change, so stock and FOCUS compare on equal footing;
- "observe": every diffusion-LLM run; reports per-request decoding counters (`meta_info["focus_stats"]`,
  `sglang:focus_*` metrics) and never changes a token, so both arms of a comparison report the same way;
- "speed": every run that takes the patched path, stock included: replaces needless work in a reference (CPU)
  code path by an equivalent computation (the same outputs up to float rounding), so both arms spend a step on
  the model's work alone.
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
    scope: str  # "focus" | "dllm" | "observe" | "speed"
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
            "dllm fields on the Namespace, then calls the original. The launch refusals raised later, while SGLang "
            "resolves the arguments (sglang_focus.launch), end the command with the same one line: a "
            "sys.excepthook that prints FOCUS's configuration errors and passes every other error on. Untouched "
            "unless --focus or --dllm-algorithm Focus is given.",
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
        module="model_loader_utils", hook="register_focus_models",
        target="sglang.srt.model_loader.utils.get_model_architecture",
        kind="BEFORE", scope="focus",
        why="The evicting forward needs layer 0/1 internals (q/k after RoPE, the KV write) that the stock model "
            "class does not expose.",
        how="When FOCUS is the dLLM algorithm, puts our subclasses (sglang_focus.adapters) into SGLang's "
            "ModelRegistry before the scheduler resolves the architecture; they run SGLang's forward unchanged "
            "unless a batch carries FOCUS eviction input.",
        removal="An upstream per-algorithm model hook, or layer-level eviction support in the model classes.",
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
        module="layers_attention_torch_native_backend", hook="attend_extend_queries_only",
        target="sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend",
        kind="AROUND", scope="speed",
        why="The CPU engine's attention (torch_native) pads each request's extend queries to the whole sequence "
            "and runs SDPA over sequence x sequence. A dLLM step is a non-causal extend of one block after a long "
            "prefix, so most of that work is for prefix rows it throws away: on SmolLM2 at batch 32 attention was "
            "15 % of a stock step and 35 % of a FOCUS step (whose kept rows are a few per request).",
        how="For non-causal extends without cross-attention or a sliding window, runs SDPA per request with only "
            "its extend rows as queries against all its keys (same rows up to float rounding); everything else "
            "calls the original.",
        removal="Upstream torch_native computing only the extend rows (its own TODO says the loop is inefficient).",
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
        how="Sets the mask id's logit to -inf before the original step. With SGLANG_FOCUS_DUMP_LOGITS set (a debug "
            "aid, off by default) it first writes the step's ids, positions and logits to that directory.",
        removal="Upstream excluding mask_id from the unmasking argmax.",
    ),
    Patch(
        module="managers_scheduler", hook="reject_unsupported_dllm_requests",
        target="sglang.srt.managers.scheduler.Scheduler.validate_dllm_request",
        kind="AROUND", scope="dllm",
        why="Stock dLLM algorithms admit requests block decoding cannot answer: a grammar-constrained request "
            "(regex, json_schema, ebnf, structural_tag) is never answered (the client waits until it times out); "
            "return_logprob gets empty log-probabilities (sgl.select() then fails with ZeroDivisionError); a "
            "prompt token id outside the vocabulary crashes the scheduler (IndexError in the embedding), taking "
            "the server down.",
        how="When the algorithm's own check passes on a dLLM server, returns the message of "
            "`request_params.dllm_request_error` (HTTP 400 before the request is queued); otherwise the original "
            "answer. Other requests, and servers without a dLLM algorithm, see no change.",
        removal="Upstream DllmAlgorithm.validate_request rejecting grammar and logprob requests by default, and "
                "prompt ids checked against the vocabulary at tokenization.",
    ),
    Patch(
        module="managers_scheduler", hook="count_dllm_requests_as_running",
        target="sglang.srt.managers.scheduler.Scheduler.init_load_inquirer",
        kind="AFTER", scope="dllm",
        why="dLLM requests being decoded live in the scheduler's dllm_manager between rounds, never in "
            "running_batch, so `/v1/loads` (and the load balancer's view) report 0 running requests while the "
            "server decodes up to --max-running-requests of them.",
        how="On a dLLM server, replaces the frozen load inquirer with a copy whose get_running_batch also "
            "returns the dllm_manager's requests. Only load reports change; servers without a dLLM algorithm "
            "keep the original inquirer.",
        removal="Upstream counting dllm_manager requests in SchedulerLoadInquirer.get_loads.",
    ),
    Patch(
        module="managers_schedule_policy", hook="keep_dllm_blocks_whole",
        target="sglang.srt.managers.schedule_policy.PrefillAdder._get_dllm_remain_tokens",
        kind="AFTER", scope="dllm",
        why="Under KV pressure SGLang stages dLLM requests with extends that are not one block: an exhausted KV "
            "estimate falls back to the whole row budget, uncapped (a request whose prompt does not end on a "
            "block boundary then extends by 24 tokens with block 16), and an estimate between 0 and one block "
            "cuts the block short. Every dLLM algorithm views the batch as whole blocks, so the scheduler dies "
            "(RuntimeError: shape '[63, 16]' is invalid for input of size 1016) and the server goes down. Seen "
            "with 64 concurrent requests on --max-total-tokens 8192.",
        how="Returns one block whenever the original returns a positive budget and the dLLM row budget has a "
            "block left, else 0 (the request waits a round). A budget of 0 or less, and algorithms with a "
            "separate context pass, are unchanged; without KV pressure the original already returns one block.",
        removal="Upstream capping the exhausted-KV fallback of PrefillAdder._get_dllm_remain_tokens at one block.",
    ),
    Patch(
        module="sampling_sampling_batch_info", hook="carry_focus_request_params",
        target="sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.from_schedule_batch",
        kind="AFTER", scope="focus",
        why="The worker reads each request's FOCUS alpha from `sampling_info.custom_params`, but SGLang fills that "
            "list only for batches with a custom logit processor (None otherwise, even when requests send "
            "custom_params).",
        how="For a FOCUS dLLM batch in which some request sends `custom_params[\"focus\"]`, sets `custom_params` to "
            "the requests' custom_params in batch order on the freshly built SamplingBatchInfo. dLLM batches are "
            "rebuilt every round (never filtered or merged), so the list stays aligned.",
        removal="Upstream always carrying custom_params (or a per-request algorithm field) to the dLLM worker.",
    ),
    Patch(
        module="dllm_algorithm_base", hook="count_stock_decoding_steps",
        target="sglang.srt.dllm.algorithm.base.DllmAlgorithm._run_fdfo",
        kind="AROUND", scope="observe",
        why="Tokens decoded per forward is the quantity FOCUS exploits and must be compared at the same threshold; "
            "SGLang's own algorithms report no per-request step counts.",
        how="Counts each request's masked positions before and after the unchanged FDFO round and attaches one "
            "stats delta per request (1 forward, whole block kept, 0 evicted) to logits_output.customized_info, "
            "which the scheduler hook sums into meta_info[\"focus_stats\"]; times the round when "
            "SGLANG_FOCUS_STEP_TIMES is set (benchmarks). FOCUS overrides `run`, so never passes here.",
        removal="An upstream per-request stats channel for dLLM algorithms.",
    ),
    Patch(
        module="managers_scheduler", hook="finish_aborted_dllm_requests",
        target="sglang.srt.managers.scheduler.Scheduler.abort_request",
        kind="AROUND", scope="dllm",
        why="A dLLM request aborted between denoising rounds is answered with a bare AbortReq, so the reply holds "
            "only the tokens already delivered (a non-streamed request: one chunk per 50 tokens), disagreeing "
            "with its streamed form and carrying no focus_stats; the detokenizer keeps the rid's decode state, "
            "so a request reusing the rid gets stray text. Stock algorithms included.",
        how="Before the original, on a dLLM server, pops the matching requests from the dLLM manager and ends each "
            "as SGLang ends an aborted running request: FINISH_ABORT (503 with the message for timeout aborts), "
            "streamed through the output streamer and detokenizer, KV released. The original then finds none of "
            "them and handles every other queue.",
        removal="Upstream finishing aborted dLLM-manager requests through the output stream (as the "
                "running-batch abort path does).",
    ),
    Patch(
        module="entrypoints_openai_serving_chat", hook="refuse_grammar_constrained_output",
        target="sglang.srt.entrypoints.openai.serving_chat.OpenAIServingChat._validate_request",
        kind="AROUND", scope="dllm",
        why="A `response_format` of json_object, json_schema or structural_tag, and a forced tool call "
            "(`tool_choice` 'required' or a named function), become grammar fields before admission, which then "
            "refuses them under that field's name (json_object and forced calls are reported as 'json_schema'), "
            "not what the client sent.",
        how="After SGLang's own checks, on a dLLM server, returns a 400 message naming 'response_format' and its "
            "type, or 'tool_choice' (`request_params.constrained_output_error`). Other servers and other "
            "requests are unchanged.",
        removal="Upstream refusing grammar-constrained output for dLLM algorithms in the OpenAI layer.",
    ),
    Patch(
        module="entrypoints_openai_serving_completions", hook="refuse_grammar_constrained_output",
        target="sglang.srt.entrypoints.openai.serving_completions.OpenAIServingCompletion._validate_request",
        kind="AROUND", scope="dllm",
        why="As for chat completions: /v1/completions turns a grammar `response_format` into `json_schema` too.",
        how="As for chat completions.",
        removal="As for chat completions.",
    ),
    Patch(
        module="entrypoints_http_server", hook="clean_validation_errors",
        target="sglang.srt.entrypoints.http_server.launch_server",
        kind="BEFORE", scope="dllm",
        why="A malformed body (NaN or Infinity, truncated JSON, a wrong type) gets a 400 whose message is "
            "`str(RequestValidationError)`, which names an SGLang source file path and line.",
        how="Before the server starts, on a dLLM server, replaces the RequestValidationError handler of SGLang's "
            "FastAPI app by one that renders the errors as one line naming the field or the JSON position, in "
            "SGLang's envelope; /v1/messages and /v1/systemone keep SGLang's own (already clean) rendering.",
        removal="Upstream rendering validation errors without the endpoint context on every route (as it does "
                "for /v1/messages).",
    ),
    Patch(
        module="dllm_mixin_scheduler", hook="record_focus_stats",
        target="sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin.process_batch_result_dllm",
        kind="BEFORE", scope="observe",
        why="FOCUS stats (forwards, processed/kept/evicted rows, tokens per forward) per request in the response "
            "metadata and as Prometheus counters; the dLLM result path never fills `req.customized_info`.",
        how="When the result's `logits_output.customized_info` holds FOCUS step stats, adds each request's delta "
            "to its totals in `req.customized_info[\"focus_stats\"]` before the method streams, and increments the "
            "sglang:focus_* counters (created lazily) where SGLang's scheduler metrics are on.",
        removal="An upstream per-request stats channel for dLLM algorithms (filling customized_info from "
                "logits_output as the autoregressive path does).",
    ),
    Patch(
        module="dllm_mixin_scheduler", hook="keep_carried_budget",
        target="sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin.process_batch_result_dllm",
        kind="AFTER", scope="focus",
        why="`budget_reset: request` carries FOCUS's budget counters (S, N) from one block of a request to the "
            "next, but SGLang drops `req.dllm_algo_state` whenever a block resolves.",
        how="After the method, gives every unfinished request whose state SGLang cleared the FocusReqState FOCUS "
            "returned for it (a fresh block state carrying the request's counters). FOCUS returns None there "
            "with `budget_reset: block`, and other algorithms never return a FocusReqState, so "
            "nothing changes for them.",
        removal="Upstream keeping the algorithm's returned state across a block switch (or a per-request "
                "algorithm state that outlives the block).",
    ),
    Patch(
        module="managers_scheduler_components_output_streamer", hook="focus_stats_are_request_level",
        target="sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
               ".is_request_level_customized_info_key",
        kind="AROUND", scope="observe",
        why="SGLang slices customized_info per token unless the key is request-level; `focus_stats` is one "
            "summary per request.",
        how="Returns True for \"focus_stats\", else the original answer.",
        removal="Upstream letting an algorithm declare request-level keys (or a subclass via "
                "Scheduler.get_output_streamer_class, which the scheduler hooks of a plugin cannot reach cleanly).",
    ),
    Patch(
        module="managers_scheduler_components_output_streamer", hook="refresh_streamed_focus_stats",
        target="sglang.srt.managers.scheduler_components.output_streamer._GenerationStreamAccumulator.accept",
        kind="AFTER", scope="observe",
        why="A request-level key reaches a stream only with its first chunk, so streamed responses would show "
            "the totals after one forward.",
        how="When the accepted request is streamed and has FOCUS stats, puts its current summary in this chunk's "
            "`focus_stats` entry.",
        removal="Upstream re-sending request-level keys with every stream chunk.",
    ),
    Patch(
        module="managers_tokenizer_manager", hook="keep_latest_focus_stats",
        target="sglang.srt.managers.tokenizer_manager.TokenizerManager.update_request_meta_info",
        kind="AFTER", scope="observe",
        why="SGLang extends one list per request and key with every chunk's customized_info values (so the "
            "scheduler sends the summary as a one-element list): a response would show a list instead of the "
            "summary, a stream one running total per chunk, and --incremental-streaming-output slices the list "
            "by token offset (leaving none).",
        how="Removes `focus_stats` from the request's accumulated customized_info and sets "
            "`meta_info[\"focus_stats\"]` to the newest summary, a plain dict (left out of a chunk that brought "
            "none). No-op unless the key is present.",
        removal="Same as the streamer patch: upstream replacing, not appending, request-level values and passing "
                "them through as sent.",
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
