"""Variational-inference applications built on the public expectax API.

- :mod:`expectax.vi.blr`: Bayesian logistic regression on the breast-cancer data
  (``expectax blr``), the setup of Mohamed et al. (2020), section 8.3.
- :mod:`expectax.vi.vae`: a discrete VAE (``expectax vae``): the command line; the model and
  its estimators in :mod:`expectax.vi.vae_model`, training in :mod:`expectax.vi.vae_train`,
  data in :mod:`expectax.vi.digits`.

Submodules are imported on demand (``from expectax.vi import blr``), so importing this package
loads neither scikit-learn nor matplotlib.
"""

__all__: list[str] = []
