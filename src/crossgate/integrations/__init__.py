"""Composition with other accelerators that keep caches of their own."""

from crossgate.integrations.deepcache import compose_deepcache

__all__ = ["compose_deepcache"]
