"""Attention with per-head statistics: Triton kernels for CUDA, a chunked PyTorch reference
with identical semantics for every other device, and a thin dispatching interface.

Public API: ``attention_with_stats``, ``attention_received`` and the ``AttentionStats``
container. Imports only torch and, lazily, triton; knows nothing about transformers.
"""
from .dispatch import attention_received, attention_with_stats
from .stats import AttentionStats

__all__ = ["attention_with_stats", "attention_received", "AttentionStats"]
