"""Variational-inference applications built on the public expectax API.

- :mod:`expectax.vi.blr`: Bayesian logistic regression on the breast-cancer data
  (``expectax blr``), the setup of Mohamed et al. (2020), section 8.3.
- :mod:`expectax.vi.vae`: a discrete VAE (``expectax vae``).

Submodules are imported on demand (``from expectax.vi import blr``), so importing this package
loads neither scikit-learn nor matplotlib.
"""

__all__: list[str] = []
