"""Measuring TGATE's quality on the embedded scene model.

* :mod:`crossgate.tools.quality.judge`: an analytic judge that reads a scene image back into coloured shapes
  and decides whether its caption holds (strict relations, always next to a flipped control).
* :mod:`crossgate.tools.quality.metrics`: PSNR, SSIM and the Frechet distance, in numpy/torch.
* :mod:`crossgate.tools.quality.sampling`: seeded batched generation and the null-text intervention.
* :mod:`crossgate.tools.quality.runner` / :mod:`crossgate.tools.quality.report`: ``crossgate eval``'s engine and outputs.
"""
