"""Tools built on crossgate's public API: accounting, benchmarks, batch generation, quality studies.

The engine (the modules at the top of the package) never imports from here.
"""
