"""A second, independent TGATE for any pipeline that batches CFG: a hand-patched forward.

It uses none of crossgate's machinery: the denoiser's ``forward`` is replaced by a closure that
counts calls (one call per step for first-order schedulers), slices one CFG half by hand and
duplicates the result; plain torch forward hooks record and replay cross-attention outputs.
"""

from __future__ import annotations

import torch

from crossgate.adapters import cross_attention_modules


def _take(tree, batch, cond: bool):
    half = batch // 2
    if isinstance(tree, torch.Tensor):
        if not (tree.dim() and tree.shape[0] == batch):
            return tree
        return tree[half:] if cond else tree[:half]
    if isinstance(tree, dict):
        return {key: _take(value, batch, cond) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(value, batch, cond) for value in tree)
    return tree


class ManualTGate:
    def __init__(self, denoiser: torch.nn.Module, gate: int, cfg: bool, half: str = "uncond") -> None:
        self.denoiser, self.gate, self.cfg, self.cond = denoiser, gate, cfg, half == "cond"
        self.calls = 0
        self.cache: dict[str, torch.Tensor] = {}
        self._original = denoiser.forward
        self._own_forward = "forward" in denoiser.__dict__  # e.g. accelerate's offload wrapper
        denoiser.forward = self._forward
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in cross_attention_modules(denoiser)]

    def _hook(self, name):
        def hook(module, inputs, output):
            step = self.calls - 1
            if step >= self.gate:
                return self.cache[name]
            if step == self.gate - 1:
                self.cache[name] = (
                    0.5 * (output[: len(output) // 2] + output[len(output) // 2 :]) if self.cfg else output
                )
            return output

        return hook

    def _forward(self, *args, **kwargs):
        step = self.calls
        self.calls += 1
        if step < self.gate or not self.cfg:
            return self._original(*args, **kwargs)
        full = (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).shape[0]
        out = self._original(*_take(args, full, self.cond), **_take(kwargs, full, self.cond))
        tensor = out[0] if isinstance(out, tuple) else out.sample
        doubled = torch.cat([tensor, tensor])
        return (doubled,) if isinstance(out, tuple) else type(out)(sample=doubled)

    def close(self) -> None:
        if self._own_forward:
            self.denoiser.forward = self._original
        else:
            del self.denoiser.forward
        for handle in self._handles:
            handle.remove()
