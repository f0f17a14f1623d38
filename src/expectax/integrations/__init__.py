"""Adapters to other frameworks' registries, each behind its own extra.

- :mod:`expectax.integrations.tunix` (``pip install "expectax[tunix]"``): registers expectax's
  advantage estimators and policy losses in tunix's ``function_registry``.

Nothing here is imported by ``import expectax``; each adapter imports its framework lazily.
"""
