"""Attention with per-head statistics: Triton kernels for CUDA, a fused C kernel for CPU
(``cpu_fused``, compiled on first use), a chunked PyTorch reference with identical semantics for
every device, and a thin dispatching interface.

Public API: ``attention_with_stats``, ``attention_received`` and the ``AttentionStats``
container. Imports only torch and, lazily, triton (and ctypes for the CPU kernel); knows nothing
about transformers. Named ``interp_kernels``: ``kernels`` is Hugging Face's distribution, which
transformers imports.
"""
from .dispatch import attention_received, attention_with_stats
from .stats import AttentionStats

__all__ = ["attention_with_stats", "attention_received", "AttentionStats"]
