"""Training attention-output SAEs on `blocks.{l}.attn.hook_z` through sae_lens' training runner.

sae_lens does the work (`LanguageModelSAETrainingRunner` with our HookedTransformer and our packed
token dataset passed in, so nothing touches the hub; wandb off). What is added here:

- the input is hook_z concatenated over heads (d_in = n_heads * d_head; sae_lens' activation store
  flattens the head axis), and the saved cfg.json says `reshape_activations: "hook_z"`, so the SAE
  that `sae_lens.SAE.load_from_disk` returns splices straight back into hook_z;
- a progress bar with the running L0, explained variance and dead-feature count;
- a fixed directory layout with checkpoints during training and resume from the newest one (sae_lens'
  own interrupt handler saves only the data position, not the weights or optimiser; here an
  interrupt saves a full checkpoint).

Layout of a training directory (default `cache_root()/saes/<model>/L<layer>-<arch>-<d_sae>/`, where
`interp atlas` looks for SAEs):
  cfg.json, sae_weights.safetensors, sparsity.safetensors, runner_cfg.json  the final SAE
  training.json                                                              our summary
  checkpoints/run/<n_training_samples>/                                      sae_lens checkpoints
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from interp.errors import InputError
from interp.progress import progress_enabled

ARCHITECTURES = ("topk", "standard", "jumprelu", "batchtopk")
CHECKPOINT_RUN = "run"


def hook_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def default_sae_dir(model_name: str, layer: int, architecture: str, d_sae: int) -> Path:
    """Where `interp sae train` stores an SAE unless told otherwise (and where the atlas looks)."""

    return saes_root(model_name) / f"L{layer}-{architecture}-{d_sae}"


def saes_root(model_name: str) -> Path:
    from interp.loading import cache_root

    return cache_root() / "saes" / re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)


def sae_config(architecture: str, d_in: int, d_sae: int, *, k: int = 24, l1_coefficient: float = 5.0,
               l0_coefficient: float = 1.0, warm_up_steps: int = 0, normalize: bool = True):
    """The sae_lens training config of one architecture (hook_z reshaping recorded for inference)."""
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    common = {"d_in": d_in, "d_sae": d_sae, "reshape_activations": "hook_z",
              "normalize_activations": "expected_average_only_in" if normalize else "none"}
    # sae_lens' default rescale_acts_by_decoder_norm=True multiplies each pre-activation by its decoder row's
    # norm; on SmolLM2 L15 hook_z that left 67 % of 9216 latents dead after 200k tokens, against 28 % without
    # (the same run otherwise). The final SAE is the same kind of object either way.
    if architecture == "topk":
        return TopKTrainingSAEConfig(k=k, rescale_acts_by_decoder_norm=False, **common)
    if architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=k, rescale_acts_by_decoder_norm=False, **common)
    if architecture == "standard":
        return StandardTrainingSAEConfig(l1_coefficient=l1_coefficient, l1_warm_up_steps=warm_up_steps, **common)
    if architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(l0_coefficient=l0_coefficient, l0_warm_up_steps=warm_up_steps, **common)
    raise InputError(f"--architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint under `out/checkpoints/run/` (most training samples), or None."""
    root = out / "checkpoints" / CHECKPOINT_RUN
    best, best_n = None, -1
    for path in root.glob("*") if root.is_dir() else []:
        n = re.findall(r"\d+", path.name)
        complete = (path / "trainer_state.pt").is_file() and (path / "sae_weights.safetensors").is_file()
        if n and complete and int(n[-1]) > best_n:
            best, best_n = path, int(n[-1])
    return best


def train_sae(
    model, layer: int, *, architecture: str = "topk", expansion: int = 16, k: int = 24,
    l1_coefficient: float = 5.0, l0_coefficient: float = 1.0, tokens: int = 2_000_000, context_size: int = 128,
    corpus: str | Any = "bible", held_out: float = 0.02, batch_tokens: int = 1024, lr: float = 2e-3,
    out: str | Path | None = None, n_checkpoints: int = 4, resume: bool = True, seed: int = 0,
    lm_dtype: str = "auto", autocast: bool | None = None, store_batch_prompts: int = 16, buffer_factor: int = 16,
    progress: bool | None = None, stop_after_steps: int | None = None, on_step: Callable | None = None,
) -> Path:
    """Train an SAE on hook_z of `layer` (all heads concatenated) and return its directory.

    corpus: a corpus name/path (see saes.corpus) or an int64 tensor [n, context_size] of tokens.
    held_out: fraction of corpus contexts kept out of training (for `evaluate_sae`).
    lr: Adam's learning rate, after a warm-up of 5 % of the steps, decayed linearly to 0 over the last 20 %.
      On SmolLM2 L15 (top-k, 9216 latents, 200k tokens) 2e-3 left 3 % of latents dead, 1e-3 28 %, 3e-4 51 %.
    lm_dtype: "bfloat16" runs the model's forward passes in bf16 (a copy; about 3.5x faster on a CPU with
      AVX512-BF16); "auto": bfloat16 where the device computes it natively (see `native_bf16`), else float32.
    autocast: run the SAE's matmuls in bf16 under torch.autocast (weights and Adam state stay float32);
      about 2x faster on such a CPU. None: where the device computes bf16 natively.
    resume: continue from the newest checkpoint in `out` if there is one.
    buffer_factor: the shuffling buffer holds this many training batches of activations (half kept for mixing).
    stop_after_steps: interrupt after that many steps, as Ctrl-C would (a full checkpoint is saved).
    """
    from saes.corpus import as_dataset, split_ids, token_contexts

    n_layers, n_heads, d_head = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head
    if not 0 <= layer < n_layers:
        raise InputError(f"--layer {layer} is out of range; {model.cfg.model_name} has layers 0-{n_layers - 1}")
    if tokens < batch_tokens:
        raise InputError(f"--tokens {tokens} is fewer than one batch ({batch_tokens} tokens)")
    d_in = n_heads * d_head
    d_sae = expansion * d_in
    sae_cfg = sae_config(architecture, d_in, d_sae, k=k, l1_coefficient=l1_coefficient,
                         l0_coefficient=l0_coefficient, warm_up_steps=max(1, tokens // batch_tokens // 20))
    out = Path(out) if out is not None else default_sae_dir(model.cfg.model_name, layer, architecture, d_sae)
    contexts = corpus if isinstance(corpus, torch.Tensor) else token_contexts(model, corpus, context_size=context_size)
    out.mkdir(parents=True, exist_ok=True)  # only once the corpus has given its contexts
    context_size = contexts.shape[1]
    train_ids, held_ids = split_ids(contexts.shape[0], held_out, seed=seed)
    train_rows = contexts[train_ids]
    data = {"corpus": corpus_name(corpus), "corpus_fingerprint": contexts_fingerprint(contexts),
            "n_contexts": int(contexts.shape[0]), "context_size": context_size, "seed": seed,
            "held_out_fraction": held_out, "held_out_ids": held_ids.tolist()}
    checkpoint = latest_checkpoint(out) if resume else None
    if checkpoint is not None:
        _check_same_data(out, data)
    fast_bf16 = native_bf16(model.cfg.device)
    lm_dtype = ("bfloat16" if fast_bf16 else "float32") if lm_dtype == "auto" else lm_dtype
    autocast = fast_bf16 if autocast is None else autocast
    runner_cfg = _runner_config(model, layer, sae_cfg, out, tokens=tokens, context_size=context_size,
                                batch_tokens=batch_tokens, lr=lr, n_checkpoints=n_checkpoints, seed=seed,
                                store_batch_prompts=store_batch_prompts, buffer_factor=buffer_factor,
                                checkpoint=checkpoint, autocast=autocast)
    _quiet_sae_lens_logs()
    lm = _lm_copy(model, lm_dtype)
    started = time.time()
    runner_cls, _ = _runner_classes()
    status, runner = "interrupted", None
    try:
        with warnings.catch_warnings(), seeded(seed):
            # sae_lens compares dataset rows with tokens, and copies token rows with torch.tensor: both harmless
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            runner = runner_cls(runner_cfg, override_dataset=as_dataset(train_rows), override_model=lm,
                                progress=progress_enabled(progress), stop_after_steps=stop_after_steps, on_step=on_step)
            runner.run()
        status = "complete"
    finally:
        if getattr(runner, "trainer", None) is not None:
            _write_summary(out, runner, model, layer, architecture, tokens, context_size, len(train_rows), lm_dtype,
                           time.time() - started, checkpoint, status, data)
    return out


@contextlib.contextmanager
def seeded(seed: int):
    """Inside the block torch (CPU and CUDA), numpy and random start from `seed`: the SAE's initialisation,
    the data-based latent init and sae_lens' activation shuffling are then the same on every run. The
    callers' random states are restored after."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _check_same_data(out: Path, data: dict) -> None:
    """A resumed run must train on the same contexts as the run it continues (else it would train on the
    earlier run's held-out set): same corpus, seed and held-out split, or an InputError."""
    try:
        before = json.loads((out / "training.json").read_text()).get("data")
    except (OSError, json.JSONDecodeError):
        return
    keys = ("corpus_fingerprint", "seed", "held_out_fraction")
    if before and any(before.get(k) != data[k] for k in keys):
        raise InputError(f"{out} holds a checkpoint trained with corpus {before.get('corpus')!r}, seed "
                         f"{before.get('seed')} and held-out fraction {before.get('held_out_fraction')}; resume with "
                         "the same ones, or pass --no-resume (or another --out) to start afresh")


def corpus_name(corpus) -> str:
    """What training.json calls the corpus: its name or path, or "tensor" for contexts passed in."""
    return "tensor" if isinstance(corpus, torch.Tensor) else str(corpus)


def contexts_fingerprint(contexts: torch.Tensor) -> str:
    """sha256 of the packed contexts (shape and int64 values): evaluation checks it sees the same corpus."""
    import hashlib

    data = contexts.to(torch.int64).contiguous().cpu().numpy().tobytes()
    return hashlib.sha256(repr(tuple(contexts.shape)).encode() + data).hexdigest()[:20]


def native_bf16(device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a CUDA GPU of compute capability 8+, or a CPU
    with AVX512-BF16 or AMX (Linux flags). Elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _DropKnownNoise:
    """sae_lens logs an error for every batch of GQA hook_z (a view fails, it falls back to reshape, which
    is correct) and warns that an overriding model/dataset is not reproducible from its config alone."""

    NOISE = ("Error during view operation", "Attempting to use reshape", "You just passed in a")

    def filter(self, record) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def _quiet_sae_lens_logs() -> None:
    from sae_lens import logger

    if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
        logger.addFilter(_DropKnownNoise())


def _lm_copy(model, lm_dtype: str):
    if lm_dtype in ("float32", "fp32", None):
        return model
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16}.get(lm_dtype)
    if dtype is None:
        raise InputError(f"--lm-dtype {lm_dtype!r} is not float32, bfloat16 or float16")
    lm = copy.deepcopy(model)
    lm.cfg.dtype = dtype
    return lm.to(dtype)


def _runner_config(model, layer: int, sae_cfg, out: Path, *, tokens, context_size, batch_tokens, lr, n_checkpoints,
                   seed, store_batch_prompts, buffer_factor, checkpoint, autocast=False):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    steps = max(1, tokens // batch_tokens)
    # a latent is "dead" after `window` steps without firing; for top-k that is when AuxK starts training it.
    # sae_lens' 1000 steps is longer than a whole short run (a first 2M-token run had 96 % dead at 223k tokens)
    window = max(5, min(1000, steps // 40))
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name=model.cfg.model_name, hook_name=hook_name(layer), dataset_path="interp-corpus",
        is_dataset_tokenized=True, streaming=False, context_size=context_size, training_tokens=tokens,
        train_batch_size_tokens=batch_tokens, store_batch_size_prompts=store_batch_prompts,
        n_batches_in_buffer=-(-buffer_factor * batch_tokens // context_size),  # sae_lens: buffer = this x context
        # the contexts are already packed (a BOS starts each row exactly when the model prepends one), so this
        # only records in cfg.json whether the SAE saw a BOS at position 0
        prepend_bos=bool(model.cfg.default_prepend_bos), device=str(model.cfg.device), seed=seed,
        lr=lr, lr_warm_up_steps=max(1, steps // 20), lr_scheduler_name="constant", lr_decay_steps=steps // 5,
        autocast=autocast,
        dead_feature_window=window, feature_sampling_window=window, n_batches_for_norm_estimate=min(5, steps),
        n_checkpoints=n_checkpoints, model_from_pretrained_kwargs={}, checkpoint_path=str(out / "checkpoints"), output_path=str(out),
        resume_from_checkpoint=None if checkpoint is None else str(checkpoint),
        logger=LoggingConfig(log_to_wandb=False, wandb_id=CHECKPOINT_RUN), verbose=False,
    )


def _runner_classes():
    """sae_lens' runner and trainer, extended with our progress bar and a full checkpoint on interrupt."""
    from sae_lens import LanguageModelSAETrainingRunner
    from sae_lens.training._interruption import InterruptedException
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm.auto import tqdm

    class Trainer(SAETrainer):
        progress, stop_after_steps, on_step = True, None, None
        running: dict[str, float]
        history: list[dict[str, float]]

        def fit(self):
            if self.n_training_steps == 0:
                self._init_from_data()
            return super().fit()

        @torch.no_grad()
        def _init_from_data(self, n_mean_batches: int = 4):
            """Start b_dec at the (scaled) mean activation, as sae_lens' older `b_dec_init_method="mean"` did:
            hook_z has a large mean, and a zero b_dec learns it at lr per step, far too slowly for short runs.
            For the top-k family also point each latent at one centred training activation (decoder row, and
            the encoder column as its transpose, at sae_lens' initial norm): random directions mostly never
            win the top-k (SmolLM2 L15, 200k tokens: 70 % dead from random, 28 % from data)."""
            if self.sae.cfg.normalize_activations == "expected_average_only_in" and self.activation_scaler.scaling_factor is None:
                self.activation_scaler.estimate_scaling_factor(
                    d_in=self.sae.cfg.d_in, data_provider=self.data_provider,
                    n_batches_for_norm_estimate=self.cfg.n_batches_for_norm_estimate)
            sae = self.sae
            top_k = sae.cfg.architecture() in ("topk", "batchtopk")
            rows, n = [], 0
            while len(rows) < n_mean_batches or (top_k and n < sae.cfg.d_sae):
                rows.append(self.activation_scaler(next(self.data_provider).to(sae.device)).float())
                n += rows[-1].shape[0]
            acts = torch.cat(rows)
            mean = acts[: n_mean_batches * rows[0].shape[0]].mean(0)
            sae.b_dec.data.copy_(mean.to(sae.b_dec.dtype))
            if top_k:
                picked = acts[torch.randperm(len(acts), device=acts.device)[: sae.cfg.d_sae]] - mean
                picked = picked / picked.norm(dim=-1, keepdim=True).clamp_min(1e-8)
                W_dec = picked * sae.W_dec.norm(dim=-1, keepdim=True)
                sae.W_dec.data.copy_(W_dec.to(sae.W_dec.dtype))
                sae.W_enc.data.copy_(W_dec.T.to(sae.W_enc.dtype))

        def load_trainer_state(self, checkpoint_path):
            super().load_trainer_state(checkpoint_path)
            self.checkpoint_thresholds = [t for t in self.checkpoint_thresholds if t > self.n_training_samples]

        @torch.no_grad()
        def _update_pbar(self, step_output, pbar: tqdm, update_interval: int = 100):
            stats = _step_stats(step_output)
            stats["dead"] = float(self.dead_neurons.sum())
            for key, value in stats.items():  # exponential moving average over ~20 steps
                old = self.running.get(key)
                self.running[key] = value if old is None or key == "dead" else 0.9 * old + 0.1 * value
            pbar.update(self.cfg.train_batch_size_samples)
            pbar.set_postfix(L0=f"{self.running['l0']:.1f}", EV=f"{self.running['explained_variance']:.3f}",
                             dead=int(self.running["dead"]), refresh=False)
            if self.n_training_steps % 10 == 0 or self.n_training_samples >= self.cfg.total_training_samples:
                self.history.append({"step": self.n_training_steps, "tokens": self.n_training_samples, **self.running})
            if self.on_step is not None:
                self.on_step(self.n_training_steps, dict(self.running))
            if self.stop_after_steps is not None and self.n_training_steps >= self.stop_after_steps:
                raise InterruptedException()

    class Runner(LanguageModelSAETrainingRunner):
        def __init__(self, cfg, *, progress, stop_after_steps, on_step, **kwargs):
            super().__init__(cfg, **kwargs)
            self.trainer_options = {"progress": progress, "stop_after_steps": stop_after_steps, "on_step": on_step}

        def run(self):
            self._set_sae_metadata()
            trainer = Trainer(sae=self.sae, data_provider=self.activations_store, evaluator=None,
                              save_checkpoint_fn=self.save_checkpoint, cfg=self.cfg.to_sae_trainer_config())
            trainer.running, trainer.history = {}, []
            for key, value in self.trainer_options.items():
                setattr(trainer, key, value)
            if self.cfg.resume_from_checkpoint is not None:
                trainer.load_trainer_state(self.cfg.resume_from_checkpoint)
                self.sae.load_weights_from_checkpoint(self.cfg.resume_from_checkpoint)
                self.activations_store.load_from_checkpoint(self.cfg.resume_from_checkpoint)
            self.trainer = trainer
            try:
                with _quiet_tqdm(not trainer.progress), _checkpoint_on_sigterm():
                    sae = trainer.fit()
            except (KeyboardInterrupt, InterruptedException):
                trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
                raise
            self.save_final_sae(sae=sae, output_path=self.cfg.output_path,
                                log_feature_sparsity=trainer.log_feature_sparsity)
            return sae

    return Runner, InterruptedException


@contextlib.contextmanager
def _checkpoint_on_sigterm():
    """Inside the block SIGTERM (a scheduler stopping the job) interrupts like Ctrl-C, so a full checkpoint
    is saved; the previous handler is restored after."""
    import signal

    from sae_lens.training._interruption import interrupt_callback

    try:
        previous = signal.signal(signal.SIGTERM, interrupt_callback)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _quiet_tqdm:
    """Silence sae_lens' tqdm bars (training, norm estimate) inside the block when `quiet`."""

    MODULES = ("sae_lens.training.sae_trainer", "sae_lens.training.activation_scaler")

    def __init__(self, quiet: bool):
        self.quiet, self.saved = quiet, {}

    def __enter__(self):
        if self.quiet:
            import importlib

            for name in self.MODULES:
                module = importlib.import_module(name)
                original = self.saved[name] = module.tqdm
                module.tqdm = lambda *a, _t=original, **kw: _t(*a, **{**kw, "disable": True})

    def __exit__(self, *exc):
        import importlib

        for name, original in self.saved.items():
            importlib.import_module(name).tqdm = original


@torch.no_grad()
def _step_stats(step_output) -> dict[str, float]:
    """L0 and explained variance (sae_lens' definitions) of one training batch."""
    sae_in = step_output.sae_in.float()
    err = (step_output.sae_out.float() - sae_in).pow(2).sum(-1).mean()
    var = (sae_in - sae_in.mean(0)).pow(2).sum(-1).mean()
    l0 = (step_output.feature_acts != 0).float().sum(-1).mean()
    return {"l0": float(l0), "explained_variance": float(1 - err / var), "loss": float(step_output.loss)}


def _write_summary(out: Path, runner, model, layer, architecture, tokens, context_size, n_train_rows, lm_dtype,
                   seconds, checkpoint, status, data: dict) -> None:
    trainer = runner.trainer
    summary = {
        "schema": "interp.sae_training/1", "model": model.cfg.model_name, "layer": layer,
        "hook_name": hook_name(layer), "architecture": architecture, "d_in": runner.sae.cfg.d_in,
        "d_sae": runner.sae.cfg.d_sae, "training_tokens": tokens, "trained_samples": trainer.n_training_samples,
        "steps": trainer.n_training_steps, "context_size": context_size, "train_contexts": n_train_rows,
        "status": status, "lm_dtype": lm_dtype,
        "autocast": runner.cfg.autocast, "lr": runner.cfg.lr, "batch_tokens": runner.cfg.train_batch_size_tokens, "seconds": round(seconds, 1), "resumed_from": None if checkpoint is None else str(checkpoint),
        "final": dict(trainer.running), "history": trainer.history,
        "device": str(model.cfg.device), "threads": torch.get_num_threads(),
        "data": data,  # corpus, seed, held-out fraction and the held-out context ids (what `interp sae eval` uses)
    }
    previous = out / "training.json"
    if checkpoint is not None and previous.is_file():  # add the time spent before the resume
        try:
            before = json.loads(previous.read_text())
            summary["seconds_total"] = round(seconds + before.get("seconds_total", before.get("seconds", 0)), 1)
        except json.JSONDecodeError:
            pass
    previous.write_text(json.dumps(summary, indent=1, default=float))
