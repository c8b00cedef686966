"""TransformerLens' own head-type scoring (head_detector), the reference for circuits.heads."""
import torch
from transformer_lens import head_detector as hd


def tl_head_scores(model, tokens: torch.Tensor, kind: str, exclude_bos: bool, exclude_current_token: bool) -> torch.Tensor:
    """TransformerLens' own scoring on token ids: its detection pattern and its similarity score on
    each sequence's eager pattern, averaged over sequences like detect_head on a list. [layer, head]"""
    make = getattr(hd, f"get_{kind}_head_detection_pattern")
    per_seq = []
    for row in tokens:
        _, cache = model.run_with_cache(row[None], remove_batch_dim=True, names_filter=lambda n: n.endswith("hook_pattern"))
        detection = make(row[None].cpu())
        per_seq.append(torch.tensor([[hd.compute_head_attention_similarity_score(
            cache["pattern", l][h], detection, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
            error_measure="mul") for h in range(model.cfg.n_heads)] for l in range(model.cfg.n_layers)], dtype=torch.float64))
    return torch.stack(per_seq).mean(0)
