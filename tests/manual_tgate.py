"""A second, independent TGATE for any pipeline that batches CFG: a hand-patched forward.

It uses none of crossgate's machinery: the denoiser's ``forward`` is replaced by a closure that
counts calls (one call per step for first-order schedulers), slices one CFG half by hand and
duplicates the result; plain torch forward hooks record and replay cross-attention outputs.

ControlNets get the same treatment (:class:`ManualControlGate`): their own call count, one half in
after the gate, every output duplicated, their cross-attention cached and replayed.

Which modules are cross-attention is decided without crossgate's finder (which would share its blind
spots): the names measured in plain calls (``text_modules``, from :func:`families.text_attention`), or
by default, during the call itself, the attention modules whose key projection (``to_k``) receives
the very tensor the denoiser was given as ``encoder_hidden_states`` (UNet2DConditionModel and
ControlNetModel hand it through unchanged; models that project the text need ``text_modules``).

Panorama (MultiDiffusion) calls the UNet ``passes`` times per step, one call per batch of view windows,
CFG interleaved per view (``[u0, c0, u1, c1, ...]``): call ``k`` is pass ``k % passes`` of step
``k // passes``, each pass keeps its own cross-attention cache (the mean of its even and odd rows),
and after the gate it runs the even (uncond) or odd (cond) rows and hands each output row back twice.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from families import attention_key_projections


def _take(tree, batch, second: bool, interleaved: bool = False):
    """One half of every batch-shaped tensor; rotary tables (never per sample) pass whole."""
    if isinstance(tree, dict) and "image_rotary_emb" in tree:
        rest = _take({k: v for k, v in tree.items() if k != "image_rotary_emb"}, batch, second, interleaved)
        return {**rest, "image_rotary_emb": tree["image_rotary_emb"]}
    half = batch // 2
    if isinstance(tree, torch.Tensor):
        if not (tree.dim() and tree.shape[0] == batch):
            return tree
        if interleaved:
            return tree[1::2] if second else tree[0::2]
        return tree[half:] if second else tree[:half]
    if isinstance(tree, dict):
        return {key: _take(value, batch, second, interleaved) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(value, batch, second, interleaved) for value in tree)
    return tree


def _doubled(tree):
    if isinstance(tree, torch.Tensor):
        return torch.cat([tree, tree])
    if isinstance(tree, dict):
        return type(tree)(**{key: _doubled(value) for key, value in tree.items()})
    if isinstance(tree, (list, tuple)):
        return type(tree)(_doubled(value) for value in tree)
    return tree


class ManualTGate:
    def __init__(
        self,
        denoiser: torch.nn.Module,
        gate: int,
        cfg: bool,
        half: str = "uncond",
        guess_mode: bool = False,
        cond_first: bool = False,
        passes: int = 1,
        interleaved: bool = False,
        text_modules: Collection[str] | None = None,
    ) -> None:
        self.denoiser, self.gate, self.cfg = denoiser, gate, cfg
        self.second = (half == "cond") != cond_first  # the half fed after the gate is the batch's second
        self.guess_mode = guess_mode  # a guess-mode ControlNet's residuals live in the cond half only
        self.passes, self.interleaved = passes, interleaved
        self.calls = 0
        self.step = self.slot = 0  # of the running call: calls // passes, calls % passes
        self.cache: dict[tuple[str, int], torch.Tensor] = {}
        self.text_modules = None if text_modules is None else set(text_modules)
        self._text = None  # the encoder_hidden_states of the running denoiser call
        self._key_is_text: dict[str, bool] = {}
        self._original = denoiser.forward
        self._own_forward = "forward" in denoiser.__dict__  # e.g. accelerate's offload wrapper
        denoiser.forward = self._forward
        self._handles = []
        projections = attention_key_projections(denoiser)
        unknown = (self.text_modules or set()) - set(projections)
        assert not unknown, f"not attention modules of {type(denoiser).__name__}: {sorted(unknown)}"
        for name, to_k in projections.items():
            self._handles.append(to_k.register_forward_pre_hook(self._key_hook(name)))
            self._handles.append(denoiser.get_submodule(name).register_forward_hook(self._hook(name)))

    def _key_hook(self, name):
        def hook(module, args):
            self._key_is_text[name] = args[0] is self._text

        return hook

    def attends_to_text(self, name: str) -> bool:
        if self.text_modules is not None:
            return name in self.text_modules
        return self._key_is_text.get(name, False)

    def _run(self, args, kwargs):
        self._text = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        return self._original(*args, **kwargs)

    def _hook(self, name):
        def hook(module, inputs, output):
            if not self.attends_to_text(name):
                return output
            key = (name, self.slot)
            if self.step >= self.gate:
                return self.cache[key]
            if self.step == self.gate - 1:
                if not self.cfg:
                    self.cache[key] = output
                elif self.interleaved:
                    self.cache[key] = 0.5 * (output[0::2] + output[1::2])
                else:
                    self.cache[key] = 0.5 * (output[: len(output) // 2] + output[len(output) // 2 :])
            return output

        return hook

    def _forward(self, *args, **kwargs):
        self.step, self.slot = divmod(self.calls, self.passes)
        self.calls += 1
        if self.step < self.gate or not self.cfg:
            return self._run(args, kwargs)
        full = (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).shape[0]
        taken = _take(kwargs, full, self.second, self.interleaved)
        if self.guess_mode:
            for key in ("down_block_additional_residuals", "mid_block_additional_residual"):
                if key in kwargs:
                    taken[key] = _take(kwargs[key], full, second=True)
        out = self._run(_take(args, full, self.second, self.interleaved), taken)
        tensor = out[0] if isinstance(out, tuple) else out.sample
        doubled = tensor.repeat_interleave(2, dim=0) if self.interleaved else torch.cat([tensor, tensor])
        return (doubled,) if isinstance(out, tuple) else type(out)(sample=doubled)

    def close(self) -> None:
        if self._own_forward:
            self.denoiser.forward = self._original
        else:
            del self.denoiser.forward
        for handle in self._handles:
            handle.remove()


class ManualControlGate(ManualTGate):
    """The same for a ControlNet: one CFG half in after the gate, all of its outputs duplicated.

    In guess mode it runs on the cond half alone (batch B) at every step: nothing to slice, and its
    cross-attention cache is its own (cond) output.
    """

    def __init__(
        self,
        control: torch.nn.Module,
        gate: int,
        cfg: bool,
        half: str,
        guess_mode: bool,
        text_modules: Collection[str] | None = None,
    ) -> None:
        super().__init__(control, gate, cfg and not guess_mode, half, text_modules=text_modules)

    def _forward(self, *args, **kwargs):
        self.step = self.calls
        self.calls += 1
        if self.step < self.gate or not self.cfg:
            return self._run(args, kwargs)
        full = (args[0] if args else kwargs["sample"]).shape[0]
        return _doubled(self._run(_take(args, full, self.second), _take(kwargs, full, self.second)))
