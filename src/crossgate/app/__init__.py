"""``crossgate app``: a local web page that runs the plain pipeline and crossgate side by side.

Three rooms, so that everything but the page itself is tested without a browser:

* :mod:`.runner`: one comparison (validate, warm up, time both calls, count MACs, read the gate and
  the convergence curve) -> a :class:`~.runner.Comparison`; no Gradio.
* :mod:`.views`: what the page shows of a comparison (tables, the curve, history entries); no Gradio.
* :mod:`.ui`: the Gradio layout and its event handlers (imports Gradio, ``pip install crossgate[app]``).
"""

from __future__ import annotations
