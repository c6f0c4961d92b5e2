"""Seeded batched generation and the null-text intervention, shared by ``eval`` and ``analyze``.

Every image gets its own ``torch.Generator`` (diffusers draws each sample's initial noise from its
own generator when given a list), so image ``i`` has the same starting noise whatever batch it is
generated in and whatever configuration runs: comparisons "at the same seed" are meaningful.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from crossgate.adapters import ModelAdapter, UnsupportedPipelineError, resolve_adapter
from crossgate.tensors import latent_batch, map_batch

NullWindow = Literal["before", "after"]


class StepTracker:
    """A ``callback_on_step_end`` that counts completed denoising steps and notifies listeners.

    The pipeline calls it once per step (after the scheduler step), also for second-order
    schedulers whose steps call the denoiser twice, so ``step`` is the index of the running step.
    """

    def __init__(self) -> None:
        self.step = 0
        self.prompts = 0  # prompts in the running call (set by generate_images)
        self.listeners: list[Callable[[int], None]] = []

    def reset(self) -> None:
        self.step = 0

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        for listener in self.listeners:
            listener(step_index)
        self.step = step_index + 1
        return callback_kwargs


def cfg_active(pipe: Any, batch: int, prompts: int = 0, adapter: ModelAdapter | None = None) -> bool:
    """Whether a denoiser call of ``batch`` samples is a ``[uncond; cond]`` CFG batch.

    The engine's rule (:meth:`ModelAdapter.cfg_active`: the pipeline's own
    ``do_classifier_free_guidance``, set during the call) wherever the pipeline states it. A pipeline
    that decides inside ``__call__`` (PixArt) tells the engine through its ``encode_prompt``, which
    these tools do not watch; for it the batch being twice the prompt count decides. Pass the
    ``adapter`` when calling per denoiser pass (resolving one reads the pipeline's source).
    """
    adapter = adapter or resolve_adapter(pipe)
    try:
        flag = adapter.cfg_active(pipe, None)
    except UnsupportedPipelineError:  # the pipeline does not say (no property, encode_prompt unseen)
        return prompts > 0 and batch == 2 * prompts
    return flag and batch % 2 == 0


def check_step_callback(pipe: Any) -> None:
    """Refuse pipelines whose ``__call__`` has no ``callback_on_step_end`` (we count steps with it)."""
    if "callback_on_step_end" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(
            f"{type(pipe).__name__}.__call__ has no callback_on_step_end argument, which crossgate's "
            "measuring tools use to count denoising steps; use a current diffusers pipeline."
        )


@dataclass
class Generation:
    """Images ``(N, H, W, 3)`` uint8 in prompt order, and the wall time of the pipeline calls."""

    images: np.ndarray
    seconds: float
    calls: int
    stats: list[Any] = field(default_factory=list)


def generate_images(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    batch_size: int = 16,
    tracker: StepTracker | None = None,
    after_call: Callable[[], Any] | None = None,
) -> Generation:
    """Generate one image per (prompt, seed), ``batch_size`` prompts per pipeline call.

    ``tracker`` (reset before each call) is passed as ``callback_on_step_end``; ``after_call`` is
    invoked after every call and its results are collected in ``Generation.stats`` (e.g. to read
    crossgate's ``last_call``).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if not prompts:
        raise ValueError("no prompts to generate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks: list[np.ndarray] = []
    stats: list[Any] = []
    seconds = 0.0
    calls = 0
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        kwargs: dict[str, Any] = dict(
            prompt=batch, generator=generators, num_inference_steps=num_inference_steps, output_type="np"
        )
        if guidance_scale is not None:
            kwargs["guidance_scale"] = guidance_scale
        if tracker is not None:
            tracker.reset()
            tracker.prompts = len(batch)
            kwargs["callback_on_step_end"] = tracker
        began = time.perf_counter()
        with torch.inference_mode():
            output = pipe(**kwargs).images
        seconds += time.perf_counter() - began
        calls += 1
        if after_call is not None:
            stats.append(after_call())
        array = np.asarray(output)
        chunks.append(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8))
    return Generation(images=np.concatenate(chunks), seconds=seconds, calls=calls, stats=stats)


def _uncond_twice(tensor: torch.Tensor) -> torch.Tensor:
    """``[uncond; cond] -> [uncond; uncond]``."""
    uncond = tensor[: tensor.shape[0] // 2]
    return torch.cat([uncond, uncond], dim=0)


@contextlib.contextmanager
def null_text(pipe: Any, window: NullWindow, gate: int, tracker: StepTracker) -> Iterator[StepTracker]:
    """Replace the text condition by the null text in steps ``< gate`` ("before") or ``>= gate`` ("after").

    Under classifier-free guidance the pipeline batches ``[uncond; cond]`` and, with no negative
    prompt, the uncond half IS the empty-prompt ("null text") embedding. A forward pre-hook on the
    denoiser copies the uncond half over the cond half of ``encoder_hidden_states`` (and of
    ``added_cond_kwargs`` / ``encoder_attention_mask`` tensors, e.g. SDXL's pooled embeds), so the
    guided prediction in those steps is the unconditional one. ``tracker`` must be the call's
    ``callback_on_step_end`` (it says which step runs). The hook is removed on exit.
    """
    if window not in ("before", "after"):
        raise ValueError(f"window must be 'before' or 'after', got {window!r}")
    if gate < 0:
        raise ValueError(f"gate must be >= 0, got {gate}")
    check_step_callback(pipe)
    adapter = resolve_adapter(pipe)
    denoiser = adapter.denoiser(pipe)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        step = tracker.step
        if (step < gate) != (window == "before"):
            return args, kwargs
        batch = latent_batch(args, kwargs)
        if not cfg_active(pipe, batch, tracker.prompts, adapter):
            raise ValueError(
                "the null-text ablation needs classifier-free guidance (guidance_scale > 1): the "
                "null-text embedding is the uncond half of the CFG batch."
            )
        args = list(args)
        if "encoder_hidden_states" in kwargs:
            kwargs["encoder_hidden_states"] = map_batch(kwargs["encoder_hidden_states"], batch, _uncond_twice)
        elif len(args) > 2:
            args[2] = map_batch(args[2], batch, _uncond_twice)
        else:
            raise ValueError("could not find encoder_hidden_states in the denoiser call")
        for key in ("added_cond_kwargs", "encoder_attention_mask"):
            if kwargs.get(key) is not None:
                kwargs[key] = map_batch(kwargs[key], batch, _uncond_twice)
        return tuple(args), kwargs

    handle = denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield tracker
    finally:
        handle.remove()
