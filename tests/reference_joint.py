"""An independent reference of joint-attention TGATE, written against the stock diffusers code paths.

It shares nothing with crossgate's implementation (crossgate re-runs each block's image side alone).
Here every block runs its own stock forward, and the text stream is frozen where attention happens:

* at the step before the gate, the ``scaled_dot_product_attention`` call made inside block ``i``'s
  joint attention module records the text slice of its keys and values,
  and a forward hook on each block records the text output it hands on;
* after the gate, each attention call gets its text key/value slice replaced by the recorded one (of
  the fed CFG half, or the mean of both halves), and each block's text output is replaced by the
  recorded one. Text query rows are still computed and thrown away: the reference checks values,
  not compute;
* the CFG drop is a wrapper on the transformer: batched CFG feeds the cond half and hands the output
  back twice; sequential CFG (named ``cache_context`` calls) returns the cond output for the uncond
  call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


def _caption_rows(captions: list) -> int:
    """Z-Image's text rows: the longest caption, padded to a multiple of 32 (``SEQ_MULTI_OF``)."""
    return max(len(c) + (-len(c)) % 32 for c in captions)


class JointReference:
    """Run ``pipe`` with the reference semantics: ``with JointReference(pipe, gate, ...): pipe(...)``."""

    def __init__(
        self,
        pipe: Any,
        gate: int,
        text_first: bool,
        sequential: bool,
        mean: bool = False,
        live: bool = False,
        keep_cfg: bool = False,
        text_output: int = 0,
        named: bool = True,
        cond_first: bool = False,
    ) -> None:
        self.pipe, self.gate = pipe, gate
        self.text_first, self.sequential = text_first, sequential
        self.mean, self.live, self.keep_cfg = mean, live, keep_cfg
        self.text_output = text_output  # where a block's output tuple has the text stream
        self.named = named  # sequential calls named by cache_context; else cond first, then uncond
        self.cond_first = cond_first  # batched CFG as [cond; uncond] (Z-Image)
        self.calls_in_step = 0
        self.step = 0
        self.branch = "cond"
        self.kv: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.outputs: dict[str, list[torch.Tensor | None]] = {}
        self.cond_output: Any = None
        self.text_len = 0
        self.block_index = 0
        self.cfg = False
        self.rows = 0  # the rows of the running pass
        self.first_rows: int | None = None  # of the call's first pass (Z-Image: 2B under CFG)

    # --- pieces ----------------------------------------------------------------------------------

    def _text_slice(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, :, : self.text_len] if self.text_first else t[:, :, t.shape[2] - self.text_len :]

    def _with_text(self, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.text_first:
            return torch.cat([text, t[:, :, self.text_len :]], dim=2)
        return torch.cat([t[:, :, : t.shape[2] - self.text_len], text], dim=2)

    def _fed(self, t: torch.Tensor, halved: bool) -> torch.Tensor:
        """The frozen tensor for the rows of this pass (batched: [uncond; cond] rows at capture)."""
        if self.sequential or not self.cfg or t.shape[0] == self.rows:
            return t  # (Z-Image: captured in a pass its pipeline ran without CFG, `cfg_truncation`)
        uncond, cond = t.chunk(2)[::-1] if self.cond_first else t.chunk(2)
        if self.mean:
            mean = (uncond + cond) / 2
            return mean if halved else torch.cat([mean, mean])
        return cond if halved else t

    def _frozen(self, store: str, index: int) -> Any:
        if self.sequential:
            if self.mean and self.cfg:
                a, b = store["cond"][index], store["uncond"][index]
                if isinstance(a, tuple):
                    return tuple((x + y) / 2 for x, y in zip(a, b))
                return None if a is None else (a + b) / 2
            return store[self.branch if self.keep_cfg else "cond"][index]
        return store["batch"][index]

    # --- the patches -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        original = F.scaled_dot_product_attention
        ref = self

        def sdpa(query, key, value, *args, **kwargs):
            i = ref.current
            if i is None:  # not a joint attention (SD3.5's image-only attn2, a text encoder)
                return original(query, key, value, *args, **kwargs)
            if ref.step == ref.gate - 1 and ref.capturing:
                ref.kv.setdefault(ref.store_key, []).append((ref._text_slice(key), ref._text_slice(value)))
            elif ref.step >= ref.gate and not ref.live:
                k, v = ref._frozen(ref.kv, i)
                # this pass's text rows: Z-Image's cond half alone pads its captions to fewer
                k, v = (
                    ref._fed(k, ref.halved)[:, :, : ref.text_len],
                    ref._fed(v, ref.halved)[:, :, : ref.text_len],
                )
                key, value = ref._with_text(key, k), ref._with_text(value, v)
            return original(query, key, value, *args, **kwargs)

        F.scaled_dot_product_attention = sdpa
        try:
            yield
        finally:
            F.scaled_dot_product_attention = original

    def _block_hook(self, index: int):
        def hook(module, args, kwargs, output):
            t = self.text_output
            if isinstance(output, torch.Tensor):  # one sequence (Chroma's single blocks; Z-Image: text last)
                cut = self.text_len if self.text_first else output.shape[1] - self.text_len
                if self.step == self.gate - 1 and self.capturing:
                    text = output[:, :cut] if self.text_first else output[:, cut:]
                    self.outputs.setdefault(self.store_key, []).append(text)
                elif self.step >= self.gate and not self.live:
                    text = self._fed(self._frozen(self.outputs, index), self.halved)[:, : self.text_len]
                    if self.text_first:
                        return torch.cat([text, output[:, cut:]], dim=1)
                    return torch.cat([output[:, :cut], text], dim=1)
                return None
            if self.step == self.gate - 1 and self.capturing:
                self.outputs.setdefault(self.store_key, []).append(output[t])
            elif self.step >= self.gate and not self.live:
                text = self._frozen(self.outputs, index)
                text = None if text is None else self._fed(text, self.halved)
                return (text, output[1]) if t == 0 else (output[0], text)
            return None

        return hook

    def __enter__(self) -> JointReference:
        pipe = self.pipe
        transformer = pipe.transformer
        double = (
            getattr(transformer, "transformer_blocks", None)
            or getattr(transformer, "joint_transformer_blocks", None)  # AuraFlow
            or getattr(transformer, "double_stream_blocks", None)  # HiDream
            or transformer.layers  # Lumina2's unified layers (its refiners are text or image alone)
        )
        single = getattr(transformer, "single_transformer_blocks", None)
        blocks = [*double, *(getattr(transformer, "single_stream_blocks", []) if single is None else single)]
        self.handles = [
            b.register_forward_hook(self._block_hook(i), with_kwargs=True) for i, b in enumerate(blocks)
        ]
        self.current: int | None = None
        for i, block in enumerate(blocks):  # which joint attention an SDPA call belongs to
            # CogVideoX: attn1; Z-Image: attention; HiDream: its wrapped block's attn1
            inner = getattr(block, "block", block)
            attn = next(getattr(inner, n) for n in ("attn", "attn1", "attention") if hasattr(inner, n))
            self.handles.append(attn.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "current", i)))
            self.handles.append(attn.register_forward_hook(lambda m, a, o: setattr(self, "current", None)))
        original_forward = transformer.forward
        ref = self

        def forward(*args, **kwargs):
            # Z-Image: latents and captions as lists of per-sample tensors, positional
            captions = args[2] if args and isinstance(args[0], list) else None
            llama = kwargs.get("encoder_hidden_states_llama3")  # HiDream: layers first, then the batch
            if captions is not None:
                text = args[0]  # its batch
            else:
                text = kwargs["encoder_hidden_states" if llama is None else "encoder_hidden_states_t5"]
            registers = getattr(transformer, "register_tokens", None)  # AuraFlow puts 8 before the text
            if ref.sequential and not ref.named:
                ref.branch = ("cond", "uncond")[ref.calls_in_step]
                ref.calls_in_step += 1
            if captions is None:
                ref.text_len = text.shape[1] + (0 if registers is None else registers.shape[1])
            if llama is not None:  # every HiDream block's text: T5, the last LLaMA layer, its own LLaMA layer
                ref.text_len = text.shape[1] + 2 * llama.shape[2]
            if hasattr(transformer, "context_refiner") and captions is None:  # Lumina2: prompt unpadded
                ref.text_len = int(kwargs["encoder_attention_mask"].sum())
            if captions is not None:
                ref.text_len = _caption_rows(captions)
                ref.first_rows = len(text) if ref.first_rows is None else ref.first_rows
            ref.rows = len(text) if captions is not None else 0
            ref.capturing = True
            ref.halved = False
            ref.store_key = ref.branch if ref.sequential else "batch"
            if ref.sequential and ref.branch == "uncond":
                ref.cfg = True
            if not ref.sequential:
                flag = getattr(ref.pipe, "do_classifier_free_guidance", None)  # CogVideoX has none
                ref.cfg = bool(ref.pipe.guidance_scale > 1 if flag is None else flag)
            with ref._attention():
                if ref.step < ref.gate or ref.keep_cfg:
                    return original_forward(*args, **kwargs)
                if ref.sequential:
                    if ref.branch == "uncond" and ref.cfg:
                        return ref.cond_output
                    out = original_forward(*args, **kwargs)
                    ref.cond_output = out
                    return out
                if not ref.cfg:
                    return original_forward(*args, **kwargs)
                if captions is not None and 2 * len(text) == ref.first_rows:
                    ref.halved, ref.rows = True, len(text)  # the pipeline left CFG out: the cond half
                    return original_forward(*args, **kwargs)
                ref.halved = True
                ref.rows = len(text) // 2 if captions is not None else 0

                rows = len(text)

                def cond_half(v):
                    if isinstance(v, list) and len(v) == rows:  # Z-Image's per-sample lists
                        return v[: rows // 2] if ref.cond_first else v[rows // 2 :]
                    if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,):
                        return v.chunk(2)[0 if ref.cond_first else 1]
                    if isinstance(v, (list, tuple)):  # a ControlNet's block residuals
                        return type(v)(cond_half(x) for x in v)
                    return v

                # rotary tables are per token, not per sample (their rows can equal the batch)
                half = {k: v if k == "image_rotary_emb" else cond_half(v) for k, v in kwargs.items()}
                if llama is not None:
                    half["encoder_hidden_states_llama3"] = llama.chunk(2, dim=1)[1]
                args = tuple(cond_half(a) for a in args)  # AuraFlow, Z-Image: latents positional
                if captions is not None:
                    ref.text_len = _caption_rows(args[2])
                out = original_forward(*args, **half)

                def twice(o):
                    return torch.cat([o, o]) if isinstance(o, torch.Tensor) else o + o  # Z-Image: a list

                if isinstance(out, dict):  # an output dataclass (Z-Image img2img's)
                    return type(out)(**{k: twice(v) for k, v in out.items()})
                return tuple(twice(o) for o in out)

        transformer.forward = forward
        self.named_calls = self.sequential and hasattr(transformer, "cache_context")  # Lumina2: none
        if self.named_calls:
            original_context = transformer.cache_context

            @contextlib.contextmanager
            def cache_context(name: str):
                ref.branch = name
                with original_context(name):
                    yield

            transformer.cache_context = cache_context
        return self

    def __exit__(self, *exc: Any) -> None:
        transformer = self.pipe.transformer
        for h in self.handles:
            h.remove()
        del transformer.forward
        if self.named_calls:
            del transformer.cache_context

    def on_step_end(self, pipe: Any, i: int, t: Any, kwargs: dict) -> dict:
        self.step = i + 1
        self.calls_in_step = 0
        return {}
