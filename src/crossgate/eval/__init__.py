"""Measuring TGATE's quality on the embedded scene model.

* :mod:`crossgate.eval.judge`: an analytic judge that reads a scene image back into coloured shapes
  and decides whether its caption holds (strict relations, always next to a flipped control).
* :mod:`crossgate.eval.metrics`: PSNR, SSIM and the Frechet distance, in numpy/torch.
* :mod:`crossgate.eval.sampling`: seeded batched generation and the null-text intervention.
* :mod:`crossgate.eval.runner` / :mod:`crossgate.eval.report`: ``crossgate eval``'s engine and outputs.
"""
