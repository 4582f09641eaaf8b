"""`Focus`: the dLLM algorithm SGLang runs when FOCUS is selected (spec §4.10, one FDFO step per round)."""

from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Optional

import torch
from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
from sglang.srt.dllm.config import DllmConfig

from sglang_focus.compat import assert_hooks_active
from sglang_focus.config import SUPPORTED_ARCHITECTURES, parse_focus_config
from sglang_focus.forward.attention import check_paged_plan
from sglang_focus.forward.contract import (FOCUS_AUDIT_KEY, FOCUS_AUDIT_RESULT_KEY, FOCUS_INPUT_KEY,
                                           FOCUS_RESULT_KEY)
from sglang_focus.forward.plan import StepPlan, plan_step
from sglang_focus.forward.sub_batch import rows_batch
from sglang_focus.stats import AUDIT_FIELDS, AUDIT_KEY, COUNT_FIELDS, STEP_KEY
from sglang_focus.step_timing import STEP_TIMES
from sglang_focus.structs import FocusReqState
from sglang_focus.unmasking.delayed_cache import apply_caching_rule, next_block_state, record_step
from sglang_focus.unmasking.low_confidence import unmask_kept_rows

class RequestSettings(NamedTuple):
    """One step's per-request settings, in batch order."""

    alphas: list[float]  # α (inf: no eviction)
    carry_budget: list[bool]  # budget counters carry over blocks (budget_reset: request)
    as_stock: list[bool]  # opted out (enabled: false): decoded exactly as stock


class Focus(LowConfidence):
    """LowConfidence unmasking with the delayed cache and FOCUS token eviction.

    The unmasking rule is the host's (for both arms of any comparison), so FOCUS changes only which block tokens
    are processed and which run through layers 2..L.
    """

    supported_architectures = SUPPORTED_ARCHITECTURES
    # torch_native for the CPU engine (SGLang would otherwise force FlashInfer), FlashInfer on GPUs.
    supported_attention_backends = ("flashinfer", "torch_native")
    # Any other backend chosen on a GPU is replaced by FlashInfer (the compacted batch needs its paged plan).
    required_attention_backend = "flashinfer"

    def __init__(self, config: DllmConfig):
        super().__init__(config)
        assert_hooks_active()
        self.focus_config = parse_focus_config(config.algorithm_config)
        self.threshold = self.focus_config.threshold
        self.evicting_steps = 0  # evicting steps planned so far: the audit schedule (`_audit_due`)

    @classmethod
    def configure_server_args(cls, server_args) -> None:
        """Launch-time settings and refusals (`sglang_focus.launch`): runs once, in the launching process."""
        from sglang_focus.launch import configure_focus_launch

        configure_focus_launch(server_args)

    @classmethod
    def validate_request(cls, req) -> Optional[str]:
        from sglang_focus.request_params import validate_request

        return validate_request(req)

    def run(self, model_runner, forward_batch, algo_states: Optional[List[Any]] = None):
        """One denoising forward for the batch. Host synchronisations: the block mask before the forward, the keep
        mask inside layer 1 (evictable steps only; an audited step has the same one, after its forward), and the new
        ids after it, which SGLang needs as lists."""
        if not self.fdfo:
            raise RuntimeError("FOCUS needs FDFO scheduling (do not pass --no-dllm-fdfo)")
        with STEP_TIMES.section("step"):
            result, evictable = self._step(model_runner, forward_batch, algo_states)
        STEP_TIMES.end_step(evictable=evictable)
        return result

    def _step(self, model_runner, forward_batch, algo_states):
        bs, block = forward_batch.batch_size, self.block_size
        states = [s if isinstance(s, FocusReqState) else FocusReqState.fresh(block)
                  for s in (algo_states or [None] * bs)]
        ids = forward_batch.input_ids.view(bs, block)
        masked_dev = self._to_decode(forward_batch, ids)
        masked = masked_dev.cpu()
        settings = self._request_settings(forward_batch)
        with STEP_TIMES.section("plan"):
            plan = plan_step(states, masked, torch.tensor(forward_batch.extend_prefix_lens_cpu),
                             settings.alphas, delayed_cache=self.focus_config.delayed_cache,
                             device=ids.device, min_batch_tokens=self.focus_config.min_batch_tokens,
                             as_stock=settings.as_stock)
            audited = self._audit_due(plan)
            batch = self._step_batch(forward_batch, plan, audited=audited)
        with STEP_TIMES.section("model_forward"):
            out = model_runner.forward(batch, pp_proxy_tensors=None)
        if batch is not forward_batch:
            check_paged_plan(model_runner.attn_backend)
        kept_rows, kept_counts, rightmost = self._retained(batch, plan, audited=audited)
        new_ids = unmask_kept_rows(ids, masked_dev, out.logits_output.full_logits, plan.rows[kept_rows],
                                   mask_id=self.mask_id, threshold=self.threshold)
        forward_batch.input_ids.copy_(new_ids.view(-1))
        new_ids_host = new_ids.cpu()
        # A decoded position never holds the mask id (the LM head's mask column is -inf).
        decoded = masked & (new_ids_host != self.mask_id)
        newly = decoded.sum(dim=1)
        deltas = _step_deltas(plan, kept_counts, newly)
        if self.focus_config.audit_every:
            keep = batch.model_specific_states[FOCUS_AUDIT_RESULT_KEY] if audited else None
            _add_audit_deltas(deltas, plan, keep, decoded)
        out.logits_output.customized_info = {STEP_KEY: deltas}
        apply_caching_rule(states, masked)
        for state, unmasked, right in zip(states, newly.tolist(), rightmost.tolist()):
            record_step(state, newly_unmasked=unmasked, rightmost_kept=right)
        done = (masked.sum(dim=1) == 0).tolist()
        # A finished block hands SGLang the next block's state (None = fresh; patches/dllm_mixin_scheduler.py keeps
        # a carried one across the block switch).
        states_out = [next_block_state(states[r], carry_budget=settings.carry_budget[r]) if done[r] else states[r]
                      for r in range(bs)]
        result = (out.logits_output, new_ids_host.tolist(), [block if d else 0 for d in done], states_out,
                  out.can_run_graph)
        return result, plan.eviction is not None

    def _to_decode(self, forward_batch, ids: torch.Tensor) -> torch.Tensor:
        """[bs, B] positions still to decode: mask ids, except literal mask ids of the prompt (SGLang marks those
        in dllm_prompt_mask when a prompt contains the mask token)."""
        masked = ids == self.mask_id
        if forward_batch.dllm_prompt_mask is not None:
            masked &= ~forward_batch.dllm_prompt_mask
        return masked

    def _request_settings(self, forward_batch) -> "RequestSettings":
        """Per request in batch order, each the request's own override or the server's setting."""
        from sglang_focus.request_params import batch_request_params

        params = batch_request_params(forward_batch)
        cfg = self.focus_config
        return RequestSettings(alphas=[p.resolve_alpha(cfg.alpha) for p in params],
                               carry_budget=[p.resolve_budget_reset(cfg.budget_reset) == "request" for p in params],
                               as_stock=[p.decodes_as_stock for p in params])

    def _audit_due(self, plan: StepPlan) -> bool:
        """Whether this step is audited: the `audit_every`-th, 2·`audit_every`-th, ... evicting step (one in which
        some request may evict) this algorithm object has planned since the server started. Counts the step; every
        attention-TP rank plans the same steps, so all ranks audit the same ones. Never with `audit_every` 0."""
        every = self.focus_config.audit_every
        if not every or plan.eviction is None:
            return False
        self.evicting_steps += 1
        return self.evicting_steps % every == 0

    @staticmethod
    def _step_batch(forward_batch, plan: StepPlan, *, audited: bool = False):
        """SGLang's batch when every row runs and nothing is evicted; otherwise a batch of the processing rows
        (planned paged, like every batch of a FOCUS server: `sglang_focus.launch`).

        An audited step runs the batch a step without eviction runs (the delayed-cache-only arm's), carrying the
        eviction input under FOCUS_AUDIT_KEY so the model scores and selects without evicting (`forward.audit`);
        when that batch is SGLang's own, a field-for-field copy carries it, so SGLang's batch is not mutated.
        """
        if plan.processes_everything and (plan.eviction is None or audited):
            if plan.eviction is None:
                return forward_batch
            batch = dataclasses.replace(forward_batch,
                                        model_specific_states=dict(forward_batch.model_specific_states or {}))
        else:
            batch = rows_batch(forward_batch, plan.rows, plan.row_counts, plan.window)
        if plan.eviction is not None:
            batch.model_specific_states[FOCUS_AUDIT_KEY if audited else FOCUS_INPUT_KEY] = plan.eviction
        return batch

    @staticmethod
    def _retained(batch, plan: StepPlan, *, audited: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept rows of the step batch (device), kept count and rightmost kept block position per request (host);
        every processing row when nothing was evicted (no eviction input, or an audited step)."""
        evicting = plan.eviction is not None and not audited
        retained = batch.model_specific_states.get(FOCUS_RESULT_KEY) if evicting else None
        if retained is None:
            all_rows = torch.arange(plan.rows.shape[0], device=plan.rows.device)
            return all_rows, plan.row_counts, plan.rightmost
        return retained.kept_rows, retained.kept_counts, retained.rightmost


def _add_audit_deltas(deltas: list[dict], plan: StepPlan, keep: torch.Tensor | None, decoded: torch.Tensor) -> None:
    """Add each request's AuditStats delta (stats.AUDIT_KEY) to its step delta, zeros unless the step was audited.

    `keep` [n] bool (host): the keep mask FOCUS selected over the processing rows of an audited step (None if the
    step was not audited); `decoded` [bs, B] bool (host): the positions this step decoded. Counted for the requests
    FOCUS would have evicted from (`EvictionInput.evict_cpu`): their decoded tokens, and those outside `keep`.
    """
    bs, block = decoded.shape
    counts = torch.zeros(bs, len(AUDIT_FIELDS), dtype=torch.int64)
    if keep is not None:
        inp = plan.eviction
        evicted = torch.zeros(bs * block, dtype=torch.bool)
        evicted[(inp.row_req * block + inp.row_pos)[~keep]] = True
        audited = inp.evict_cpu.to(torch.int64)
        counts[:, 0] = audited
        counts[:, 1] = decoded.sum(dim=1) * audited
        counts[:, 2] = (decoded & evicted.view(bs, block)).sum(dim=1) * audited
    for delta, row in zip(deltas, counts.tolist()):
        delta[AUDIT_KEY] = dict(zip(AUDIT_FIELDS, row))


def _step_deltas(plan: StepPlan, kept: torch.Tensor, unmasked: torch.Tensor) -> list[dict[str, int]]:
    """Each request's FocusStats for one forward, as the plain dicts the scheduler hook sums."""
    processed = plan.row_counts
    columns = {"forwards": torch.ones_like(processed), "processed": processed, "kept": kept,
               "evicted": processed - kept, "masked": plan.masked, "unmasked": unmasked}
    rows = torch.stack([columns[name].to(torch.int64) for name in COUNT_FIELDS], dim=1).tolist()
    return [dict(zip(COUNT_FIELDS, row)) for row in rows]
