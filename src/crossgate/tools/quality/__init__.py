"""Measuring TGATE's quality on the embedded scene model, and where a model's cross-attention converges.

* :mod:`.judge`: an analytic judge that reads a scene image back into coloured shapes and decides
  whether its caption holds (strict relations, always next to a flipped control).
* :mod:`.metrics`: PSNR, SSIM and the Frechet distance, in numpy/torch.
* :mod:`.sampling`: seeded batched generation and the null-text intervention.
* :mod:`.runner` / :mod:`.report`: ``crossgate eval``'s engine and outputs.
* :mod:`.convergence` / :mod:`.null_text`: ``crossgate analyze`` (the paper's Figure 2, the
  null-text ablation); :mod:`.calibration`: ``crossgate calibrate`` (a curve -> a gate profile).
* :mod:`.outputs`: what all of them write (JSON without inf/nan, figures, image grids).

Import order (no cycles): outputs, metrics, judge <- sampling <- convergence, null_text, runner <- report.
"""
