"""The parity check run at every conversion: does the HookedTransformer compute what transformers computes?

The HF model (float32, eager attention) is in memory when a model is converted. Both models run
the same token ids of a few fixed prompts; the measured difference is the largest absolute
difference of next-token log-probabilities, over every prompt, position and vocabulary entry, in
nats. One prompt is longer than every length threshold the config names (the rope-scaling
`original_max_position_embeddings`, a sliding window), so position handling beyond them is
compared too (capped at `MAX_TOKENS`, recorded in `prompt_lengths`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

TOLERANCE = 1e-3   # nats; above it a conversion is refused unless check=False
MAX_TOKENS = 2048  # longest parity prompt (an eager [head, pos, pos] pattern per layer must fit in memory)
PROMPTS = (
    "When Mary and John went to the store, John gave a drink to",
    "The Eiffel Tower is located in the city of",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
)


@dataclass
class Parity:
    """Measured agreement of a converted model with transformers' eager float32 forward.

    max_logprob_diff: max |log p_TL − log p_HF| in nats over prompts × positions × vocabulary.
    prompt_lengths: tokens of each prompt compared. unhandled: config features the converted
    config does not reflect (e.g. "rope_scaling.rope_type=yarn"), a diagnosis, not a measurement.
    enforced: False when the model was loaded with check=False (the refusal bypassed).
    """

    max_logprob_diff: float
    prompt_lengths: list[int]
    unhandled: list[str] = field(default_factory=list)
    tolerance: float = TOLERANCE
    reference: str = "transformers, eager attention, float32"
    enforced: bool = True

    @property
    def passed(self) -> bool:
        return self.max_logprob_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), passed=self.passed)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Parity:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def line(self) -> str:
        """One human line, e.g. for a report header."""
        verdict = "within" if self.passed else "ABOVE"
        extra = "" if self.enforced or self.passed else " (loaded with the parity check off)"
        return (f"parity vs {self.reference}: max |Δ log p| {self.max_logprob_diff:.2g} nats over "
                f"{len(self.prompt_lengths)} prompts, {verdict} tolerance {self.tolerance:g}{extra}")


def thresholds(hf_config: Any) -> list[int]:
    """Token lengths at which the config's position handling changes (rope scaling, sliding windows)."""
    found = []
    for params in _rope_dicts(hf_config):
        if params.get("original_max_position_embeddings"):
            found.append(int(params["original_max_position_embeddings"]))
    for name in ("sliding_window", "window_size"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value > 0:
            found.append(value)
    return found


def parity_prompts(tokenizer: Any, hf_config: Any, n_ctx: int) -> list[torch.Tensor]:
    """Token ids [pos] of the fixed prompts plus one real-text prompt longer than every threshold."""
    from interp.texts import sample_texts

    prompts = [torch.tensor(tokenizer(p).input_ids, dtype=torch.long) for p in PROMPTS]
    want = min(max(thresholds(hf_config) + [48]) + 16, n_ctx, MAX_TOKENS)
    ids: list[int] = []
    texts = iter(sample_texts(400, seed=11))
    while len(ids) < want:
        ids += tokenizer(" " + next(texts) if ids else next(texts)).input_ids
    prompts.append(torch.tensor(ids[:want], dtype=torch.long))
    return [p[:n_ctx] for p in prompts if len(p) > 0]


@torch.no_grad()
def measure(model: Any, hf_model: Any, tokenizer: Any) -> Parity:
    """Compare next-token log-probs of the HookedTransformer `model` and the HF model on the parity prompts."""
    prompts = parity_prompts(tokenizer, hf_model.config, model.cfg.n_ctx)
    worst = 0.0
    for ids in prompts:
        ours = model(ids[None].to(model.cfg.device)).double().log_softmax(-1)
        ref = hf_model(ids[None].to(hf_model.device)).logits.double().log_softmax(-1)
        gap = (ours.cpu() - ref.cpu()).abs().max().item()
        worst = max(worst, gap if gap == gap else float("inf"))  # NaN counts as a failure
    return Parity(max_logprob_diff=worst, prompt_lengths=[len(p) for p in prompts],
                  unhandled=unhandled_features(hf_model.config, model.cfg))


def unhandled_features(hf_config: Any, cfg: Any) -> list[str]:
    """Config features the converted TransformerLens config does not express."""
    out = []
    for where, params in _named_rope_dicts(hf_config):
        kind = params.get("rope_type") or params.get("type") or "default"
        handled = (kind == "default" or (kind == "llama3" and cfg.use_NTK_by_parts_rope)
                   or (kind == "yarn" and cfg.use_yarn_rope) or (kind == "dynamic" and cfg.use_dynamic_ntk_rope)
                   or (kind == "linear" and getattr(cfg, "rotary_scaling_factor", 1.0) != 1.0))
        extra = sorted({"mscale", "mscale_all_dim"} & set(params)) if kind == "yarn" else []
        if not handled or extra:
            out.append(f"{where}.rope_type={kind}" + (f" with {'/'.join(extra)}" if extra else ""))
    window = getattr(hf_config, "sliding_window", None)
    if window and getattr(hf_config, "use_sliding_window", True) and not cfg.use_local_attn:
        out.append(f"sliding_window={window}")
    if getattr(hf_config, "attn_logit_softcapping", None) and not (cfg.attn_scores_soft_cap or 0) > 0:
        out.append(f"attn_logit_softcapping={hf_config.attn_logit_softcapping}")
    if getattr(hf_config, "final_logit_softcapping", None) and not (cfg.output_logits_soft_cap or 0) > 0:
        out.append(f"final_logit_softcapping={hf_config.final_logit_softcapping}")
    return out


def _named_rope_dicts(hf_config: Any) -> list[tuple[str, dict]]:
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return []
    if all(isinstance(v, dict) for v in params.values()) and params:  # per layer type (Gemma 3, OLMo 3)
        return [(f"rope_parameters.{k}", v) for k, v in params.items()]
    return [("rope_scaling", params)]


def _rope_dicts(hf_config: Any) -> list[dict]:
    return [d for _, d in _named_rope_dicts(hf_config)]
