r"""The models of the ELBO gallery: plain numpyro models and guides, no expectax inside.

Each is written as a numpyro user would write it; the guides' discrete or
non-reparameterised sites are what the gallery's ELBOs differ on.

1. ``coin``: Pyro's "SVI Part III" coin. A Beta(10, 10) prior on a coin's fairness, ten
   Bernoulli flips (six heads); the guide is a Beta with positive parameters that is *not*
   reparameterised (``NonreparameterizedBeta``), so its gradient comes from the score function.
   The exact ELBO is known in closed form (:func:`coin_exact_neg_elbo`).
2. ``dpm``: Pyro's Dirichlet-process mixture tutorial, ported: stick-breaking with
   ``T = 6`` Beta sticks, ``T`` Gaussian cluster means, and one Categorical assignment per point
   in a plate of 200 points. Guide: Beta sticks (reparameterised in numpyro), Gaussian means,
   ``Categorical(probs=phi_i)`` per point.
3. ``sbn``: the two-layer sigmoid belief network of :mod:`expectax.vi.sbn` (64 binary pixels,
   32 and 16 Bernoulli latents per image) on all 1,797 binarised digits, full batch; Bernoulli
   guide layers.
4. ``coal``: the coal-mining-disasters change point (the PyMC classic): Poisson counts per
   year with an early and a late rate and an unknown switch year; the guide is a Categorical
   over the 111 years and log-normal rates.
5. ``spike``: spike-and-slab logistic regression on scikit-learn's breast-cancer data: a
   Bernoulli inclusion indicator and a Normal slab coefficient per feature; the guide has a
   Bernoulli per indicator and Gaussians for the coefficients.
6. ``gmm``: a Gaussian mixture (3 components, diagonal covariances) on scikit-learn's iris
   measurements, 150 x 4 standardised: Dirichlet weights, Normal means, log-normal scales, a
   Categorical assignment per flower. Guide: Dirichlet weights, Gaussian means, log-normal
   scales, ``Categorical(probs=phi_i)`` per flower.
7. ``bmm``: a mixture of multivariate Bernoullis (10 components, the classic latent-class model)
   on all 1,797 binarised digits: Dirichlet weights, Normal(0, 3) pixel logits per component, a
   Categorical assignment per image. Guide: Dirichlet weights, Gaussian logits,
   ``Categorical(probs=phi_i)`` per image.

8. ``mixreg``: a mixture of two linear regressions (latent-class regression) on
   scikit-learn's diabetes data, 442 x 10 standardised features and target: Dirichlet weights,
   Normal(0, 1) coefficients and intercepts, log-normal noise scales per component, a
   Categorical assignment per patient. Guide: Dirichlet weights, Gaussian coefficients and
   intercepts, log-normal noise scales, ``Categorical(logits=z_logits_i)`` per patient with
   free logits (no ``simplex`` param, so both libraries optimise the same parameters).

9. ``outlier``: linear regression with an outlier indicator per point (the mixture model for
   outliers of Hogg, Bovy & Lang, "Data analysis recipes: fitting a model to data") on the same
   diabetes data: Normal(0, 1) coefficients and intercept, a LogNormal(0, 1) inlier noise
   scale, a Beta(1, 9) outlier fraction, per patient a Bernoulli outlier indicator whose
   outliers have noise scale 3. Guide: Gaussians, log-normal, a Beta (reparameterised), and
   ``Bernoulli(logits=o_logits_i)`` per patient with free logits.

10. ``hmm``: a two-state Poisson hidden Markov model of the coal-mining disasters (the data of
    model 4; Poisson HMMs of count series as in Zucchini & MacDonald's "Hidden Markov Models
    for Time Series"): a Gamma(2, 1) rate and a Beta(4, 1) probability of staying per state,
    and one Bernoulli state per year, each drawn given the year before (a Python loop of 111
    sites, as a Pyro or numpyro user writes a Markov chain without enumeration). Guide:
    log-normal rates, Beta stay probabilities (reparameterised), and a mean-field
    ``Bernoulli(logits=z_logits_t)`` per year with free logits. The only gallery model whose
    discrete sites depend on each other in the model: the downstream cost of a year's state is
    its count and the next year's state.

11. ``amix``: model 7's Bernoulli mixture on the digits trained on minibatches, as a VAE with a
    discrete latent is: the data plate subsampled (100 of the 1,797 images per step), and an
    amortised guide, ``Categorical(logits=x_i W + b)`` per image (a linear encoder shared by
    all images) instead of a free assignment per image. The final −ELBO is evaluated on all
    images (``Spec.eval_args``).

12. ``ssvae``: the semi-supervised VAE of Kingma et al. ("Semi-supervised learning with deep
    generative models", 2014; model M2, Pyro's SS-VAE tutorial) on the digits: 100 images
    keep their labels (ten per digit), 1,697 do not. Per image a Normal(0, I) style ``z`` (8
    dimensions), a uniform Categorical digit ``y`` (observed when labelled) and Bernoulli
    pixels from a decoder network of ``(z, y)``. Guide: a classifier network's
    ``Categorical`` for an unlabelled image's ``y`` (the only non-reparameterised site) and an
    encoder network's Normal for ``z`` given the image and its digit, drawn or known. The
    unlabelled plate is subsampled (100 images per step); the labelled one is whole. Every
    network has one softplus hidden layer of 64 units. The ELBO alone is optimised (no
    auxiliary classification loss), so the classifier learns only through the score function.

Models 6 and 7 were added after expectax's default had been chosen on models 1-5 (they are
held out: nothing was tuned on them); models 8 and 9 after that, again held out; model 10
after those, the same way; model 11 in a later session, the same way; model 12 in the session
after that, the same way.

The assignment probabilities ``phi`` of the three mixtures are a ``simplex``-constrained
``numpyro.param``, which numpyro optimises through its stick-breaking bijection. Pyro's
parameter store maps a simplex through a softmax instead (``torch``'s ``transform_to``), a
different parameterisation of the same guide, so Adam takes different steps. With
:data:`SIMPLEX` set to ``"softmax"`` (``elbo_gallery.py --simplex softmax``) the guides hold
``phi_logits`` and use ``softmax(phi_logits)``, initialised at the log of the same draw: Pyro's
parameterisation, to compare estimators without it.
"""

from __future__ import annotations

import gallery_data as data
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

# ---------------------------------------------------------------------------------------------
# 1. The coin (Pyro's SVI Part III)
# ---------------------------------------------------------------------------------------------


class NonreparameterizedBeta(dist.Beta):
    """A Beta whose samples carry no gradient: ELBOs must use the score function for it."""

    reparametrized_params = []

    def sample(self, key, sample_shape=()):
        return jax.lax.stop_gradient(super().sample(key, sample_shape))


def coin_model(flips):
    fairness = numpyro.sample("latent_fairness", dist.Beta(*data.COIN_PRIOR))
    with numpyro.plate("data", flips.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(probs=fairness), obs=flips)


def coin_guide(flips):
    alpha_q = numpyro.param("alpha_q", data.COIN_INIT[0], constraint=constraints.positive)
    beta_q = numpyro.param("beta_q", data.COIN_INIT[1], constraint=constraints.positive)
    numpyro.sample("latent_fairness", NonreparameterizedBeta(alpha_q, beta_q))


def coin_exact_neg_elbo(params, flips):
    """``−ELBO = KL(q ‖ posterior) − log p(flips)``, in closed form (Beta-Bernoulli)."""
    from jax.scipy.special import betaln, digamma

    a0, b0 = data.COIN_PRIOR
    heads = jnp.sum(flips)
    tails = flips.shape[0] - heads
    a_n, b_n = a0 + heads, b0 + tails
    log_evidence = betaln(a_n, b_n) - betaln(a0, b0)
    a, b = params["alpha_q"], params["beta_q"]
    kl = (
        betaln(a_n, b_n)
        - betaln(a, b)
        + (a - a_n) * digamma(a)
        + (b - b_n) * digamma(b)
        + (a_n - a + b_n - b) * digamma(a + b)
    )
    return kl - log_evidence


# ---------------------------------------------------------------------------------------------
# 2. The Dirichlet-process mixture (Pyro's tutorial, stick-breaking, T = 6)
# ---------------------------------------------------------------------------------------------


def mix_weights(beta):
    """Stick-breaking: T − 1 fractions in (0, 1) -> T mixture weights that sum to one."""
    remaining = jnp.cumprod(1.0 - beta, axis=-1)
    return jnp.pad(beta, (0, 1), constant_values=1.0) * jnp.pad(
        remaining, (1, 0), constant_values=1.0
    )


def dpm_model(points):
    t = data.DPM_T
    with numpyro.plate("beta_plate", t - 1):
        beta = numpyro.sample("beta", dist.Beta(1.0, data.DPM_ALPHA))
    with numpyro.plate("mu_plate", t):
        mu = numpyro.sample("mu", dist.MultivariateNormal(jnp.zeros(2), 5.0 * jnp.eye(2)))
    with numpyro.plate("data", points.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=mix_weights(beta)))
        numpyro.sample("obs", dist.MultivariateNormal(mu[z], jnp.eye(2)), obs=points)


#: how the mixtures' guides parameterise ``phi``: ``"stickbreaking"`` (numpyro's ``simplex``
#: param) or ``"softmax"`` (Pyro's: free logits through a softmax); see the module doc
SIMPLEX = "stickbreaking"


def _simplex_param(name: str, init):
    """``phi`` of shape ``(n, k)`` drawn by ``init(key)``, parameterised as :data:`SIMPLEX`."""
    if SIMPLEX == "softmax":
        logits = numpyro.param(name + "_logits", lambda key: jnp.log(init(key)))
        return jax.nn.softmax(logits, axis=-1)
    if SIMPLEX != "stickbreaking":
        raise ValueError(f"SIMPLEX must be 'stickbreaking' or 'softmax', got {SIMPLEX!r}")
    return numpyro.param(name, init, constraint=constraints.simplex)


def dpm_guide(points):
    t, n = data.DPM_T, points.shape[0]
    kappa = numpyro.param(
        "kappa",
        lambda key: jax.random.uniform(key, (t - 1,), maxval=2.0),
        constraint=constraints.positive,
    )
    tau = numpyro.param("tau", lambda key: jnp.sqrt(3.0) * jax.random.normal(key, (t, 2)))
    phi = _simplex_param("phi", lambda key: jax.random.dirichlet(key, jnp.full(t, 1.0 / t), (n,)))
    with numpyro.plate("beta_plate", t - 1):
        numpyro.sample("beta", dist.Beta(jnp.ones(t - 1), kappa))
    with numpyro.plate("mu_plate", t):
        numpyro.sample("mu", dist.MultivariateNormal(tau, jnp.eye(2)))
    with numpyro.plate("data", n):
        numpyro.sample("z", dist.Categorical(probs=phi))


# ---------------------------------------------------------------------------------------------
# 3. The sigmoid belief network on all digits
# ---------------------------------------------------------------------------------------------


def sbn(pixels):
    """``(model, guide)`` of :func:`expectax.vi.sbn.make_sbn` (64 → 32 → 16), each called as
    ``f(x, num_data)``; here full batch, ``num_data = 1797``."""
    from expectax.vi.sbn import make_sbn

    return make_sbn(64, data.SBN_HIDDEN, pixel_logits=data.sbn_pixel_logits(pixels))


# ---------------------------------------------------------------------------------------------
# 4. Coal-mining disasters: a Poisson change point
# ---------------------------------------------------------------------------------------------


def coal_model(counts):
    years = counts.shape[0]
    switch = numpyro.sample("switch", dist.Categorical(logits=jnp.zeros(years)))
    early = numpyro.sample("early_rate", dist.Exponential(1.0))
    late = numpyro.sample("late_rate", dist.Exponential(1.0))
    rate = jnp.where(jnp.arange(years) < switch, early, late)
    with numpyro.plate("years", years):
        numpyro.sample("disasters", dist.Poisson(rate), obs=counts)


def coal_guide(counts):
    years = counts.shape[0]
    logits = numpyro.param("switch_logits", jnp.zeros(years))
    numpyro.sample("switch", dist.Categorical(logits=logits))
    for name in ("early", "late"):
        loc = numpyro.param(f"{name}_loc", 0.0)
        scale = numpyro.param(f"{name}_scale", 0.5, constraint=constraints.positive)
        numpyro.sample(f"{name}_rate", dist.LogNormal(loc, scale))


# ---------------------------------------------------------------------------------------------
# 5. Spike-and-slab logistic regression (breast cancer)
# ---------------------------------------------------------------------------------------------


def spike_model(x, y):
    n, d = x.shape
    with numpyro.plate("features", d):
        included = numpyro.sample("included", dist.Bernoulli(probs=data.SPIKE_PRIOR_INCLUSION))
        coef = numpyro.sample("coef", dist.Normal(0.0, data.SPIKE_SLAB_SCALE))
    bias = numpyro.sample("bias", dist.Normal(0.0, 5.0))
    logits = bias + x @ (included * coef)
    with numpyro.plate("data", n):
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def spike_guide(x, y):
    d = x.shape[1]
    incl_logits = numpyro.param("incl_logits", jnp.zeros(d))
    coef_loc = numpyro.param("coef_loc", jnp.zeros(d))
    coef_scale = numpyro.param("coef_scale", 0.5 * jnp.ones(d), constraint=constraints.positive)
    with numpyro.plate("features", d):
        numpyro.sample("included", dist.Bernoulli(logits=incl_logits))
        numpyro.sample("coef", dist.Normal(coef_loc, coef_scale))
    bias_loc = numpyro.param("bias_loc", 0.0)
    bias_scale = numpyro.param("bias_scale", 0.5, constraint=constraints.positive)
    numpyro.sample("bias", dist.Normal(bias_loc, bias_scale))


# ---------------------------------------------------------------------------------------------
# 6. A Gaussian mixture on iris (held out)
# ---------------------------------------------------------------------------------------------


def _mixture_guide_common(n: int, k: int):
    conc = numpyro.param("weights_conc", jnp.ones(k), constraint=constraints.positive)
    numpyro.sample("weights", dist.Dirichlet(conc))
    return _simplex_param("phi", lambda key: jax.random.dirichlet(key, jnp.ones(k), (n,)))


def gmm_model(x):
    n, d = x.shape
    k = data.GMM_K
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    with numpyro.plate("components", k):
        locs = numpyro.sample("locs", dist.Normal(jnp.zeros(d), 2.0).to_event(1))
        scales = numpyro.sample("scales", dist.LogNormal(jnp.zeros(d), 1.0).to_event(1))
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Categorical(probs=weights))
        numpyro.sample("obs", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)


def gmm_guide(x):
    n, d = x.shape
    k = data.GMM_K
    phi = _mixture_guide_common(n, k)
    pos = constraints.positive
    locs_loc = numpyro.param("locs_loc", lambda key: jax.random.normal(key, (k, d)))
    locs_scale = numpyro.param("locs_scale", jnp.full((k, d), 0.1), constraint=pos)
    scales_loc = numpyro.param("scales_loc", jnp.zeros((k, d)))
    scales_scale = numpyro.param("scales_scale", jnp.full((k, d), 0.1), constraint=pos)
    with numpyro.plate("components", k):
        numpyro.sample("locs", dist.Normal(locs_loc, locs_scale).to_event(1))
        numpyro.sample("scales", dist.LogNormal(scales_loc, scales_scale).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("z", dist.Categorical(probs=phi))


# ---------------------------------------------------------------------------------------------
# 7. A mixture of multivariate Bernoullis on the digits (held out)
# ---------------------------------------------------------------------------------------------


def _bmm_prior(d):
    """The Bernoulli mixture's weights and per-component pixel logits (bmm and amix)."""
    k = data.BMM_K
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    with numpyro.plate("components", k):
        logits = numpyro.sample(
            "logits", dist.Normal(jnp.zeros(d), data.BMM_LOGIT_SCALE).to_event(1)
        )
    return weights, logits


def bmm_model(pixels):
    n, d = pixels.shape
    weights, logits = _bmm_prior(d)
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Categorical(probs=weights))
        numpyro.sample("obs", dist.Bernoulli(logits=logits[z]).to_event(1), obs=pixels)


def bmm_guide(pixels):
    n, d = pixels.shape
    k = data.BMM_K
    phi = _mixture_guide_common(n, k)
    loc = numpyro.param("logits_loc", lambda key: 0.5 * jax.random.normal(key, (k, d)))
    scale = numpyro.param("logits_scale", jnp.full((k, d), 0.1), constraint=constraints.positive)
    with numpyro.plate("components", k):
        numpyro.sample("logits", dist.Normal(loc, scale).to_event(1))
    with numpyro.plate("data", n):
        numpyro.sample("z", dist.Categorical(probs=phi))


# ---------------------------------------------------------------------------------------------
# 8. A mixture of linear regressions on the diabetes data (held out)
# ---------------------------------------------------------------------------------------------


def mixreg_model(x, y):
    n, d = x.shape
    k = data.MIXREG_K
    weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(k)))
    with numpyro.plate("components", k):
        coef = numpyro.sample("coef", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
        icpt = numpyro.sample("icpt", dist.Normal(0.0, 1.0))
        noise = numpyro.sample("noise", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Categorical(probs=weights))
        mean = jnp.sum(x * coef[z], axis=-1) + icpt[z]
        numpyro.sample("obs", dist.Normal(mean, noise[z]), obs=y)


def mixreg_guide(x, y):
    n, d = x.shape
    k = data.MIXREG_K
    pos = constraints.positive
    conc = numpyro.param("weights_conc", jnp.ones(k), constraint=pos)
    numpyro.sample("weights", dist.Dirichlet(conc))
    z_logits = numpyro.param("z_logits", lambda key: jax.random.normal(key, (n, k)))
    coef_loc = numpyro.param("coef_loc", lambda key: 0.5 * jax.random.normal(key, (k, d)))
    coef_scale = numpyro.param("coef_scale", jnp.full((k, d), 0.1), constraint=pos)
    icpt_loc = numpyro.param("icpt_loc", lambda key: 0.5 * jax.random.normal(key, (k,)))
    icpt_scale = numpyro.param("icpt_scale", jnp.full(k, 0.1), constraint=pos)
    noise_loc = numpyro.param("noise_loc", jnp.zeros(k))
    noise_scale = numpyro.param("noise_scale", jnp.full(k, 0.1), constraint=pos)
    with numpyro.plate("components", k):
        numpyro.sample("coef", dist.Normal(coef_loc, coef_scale).to_event(1))
        numpyro.sample("icpt", dist.Normal(icpt_loc, icpt_scale))
        numpyro.sample("noise", dist.LogNormal(noise_loc, noise_scale))
    with numpyro.plate("data", n):
        numpyro.sample("z", dist.Categorical(logits=z_logits))


# ---------------------------------------------------------------------------------------------
# 9. Linear regression with an outlier indicator per point (held out)
# ---------------------------------------------------------------------------------------------


def outlier_model(x, y):
    n, d = x.shape
    coef = numpyro.sample("coef", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
    icpt = numpyro.sample("icpt", dist.Normal(0.0, 1.0))
    noise = numpyro.sample("noise", dist.LogNormal(0.0, 1.0))
    frac = numpyro.sample("frac", dist.Beta(1.0, 9.0))
    with numpyro.plate("data", n):
        o = numpyro.sample("o", dist.Bernoulli(probs=frac))
        scale = jnp.where(o > 0.5, data.OUTLIER_SCALE, noise)
        numpyro.sample("obs", dist.Normal(x @ coef + icpt, scale), obs=y)


def outlier_guide(x, y):
    n, d = x.shape
    pos = constraints.positive
    o_logits = numpyro.param("o_logits", lambda key: -1.0 + 0.5 * jax.random.normal(key, (n,)))
    coef_loc = numpyro.param("coef_loc", lambda key: 0.5 * jax.random.normal(key, (d,)))
    coef_scale = numpyro.param("coef_scale", jnp.full(d, 0.1), constraint=pos)
    icpt_loc = numpyro.param("icpt_loc", 0.0)
    icpt_scale = numpyro.param("icpt_scale", 0.1, constraint=pos)
    noise_loc = numpyro.param("noise_loc", 0.0)
    noise_scale = numpyro.param("noise_scale", 0.1, constraint=pos)
    frac_a = numpyro.param("frac_a", 1.0, constraint=pos)
    frac_b = numpyro.param("frac_b", 9.0, constraint=pos)
    numpyro.sample("coef", dist.Normal(coef_loc, coef_scale).to_event(1))
    numpyro.sample("icpt", dist.Normal(icpt_loc, icpt_scale))
    numpyro.sample("noise", dist.LogNormal(noise_loc, noise_scale))
    numpyro.sample("frac", dist.Beta(frac_a, frac_b))
    with numpyro.plate("data", n):
        numpyro.sample("o", dist.Bernoulli(logits=o_logits))


# ---------------------------------------------------------------------------------------------
# 10. A two-state Poisson hidden Markov model of the coal-mining disasters (held out)
# ---------------------------------------------------------------------------------------------


def hmm_model(counts):
    with numpyro.plate("states", 2):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 1.0))
        stay = numpyro.sample("stay", dist.Beta(4.0, 1.0))
    z = numpyro.sample("z_0", dist.Bernoulli(probs=0.5)).astype(jnp.int32)
    numpyro.sample("y_0", dist.Poisson(rate[z]), obs=counts[0])
    for t in range(1, counts.shape[0]):
        to_1 = jnp.where(z == 1, stay[1], 1.0 - stay[0])  # P(state 1 this year | last year's)
        z = numpyro.sample(f"z_{t}", dist.Bernoulli(probs=to_1)).astype(jnp.int32)
        numpyro.sample(f"y_{t}", dist.Poisson(rate[z]), obs=counts[t])


def hmm_guide(counts):
    years = counts.shape[0]
    pos = constraints.positive
    z_logits = numpyro.param("z_logits", jnp.zeros(years))
    rate_loc = numpyro.param("rate_loc", jnp.zeros(2))
    rate_scale = numpyro.param("rate_scale", jnp.full(2, 0.1), constraint=pos)
    stay_a = numpyro.param("stay_a", jnp.full(2, 4.0), constraint=pos)
    stay_b = numpyro.param("stay_b", jnp.full(2, 1.0), constraint=pos)
    with numpyro.plate("states", 2):
        numpyro.sample("rate", dist.LogNormal(rate_loc, rate_scale))
        numpyro.sample("stay", dist.Beta(stay_a, stay_b))
    for t in range(years):
        numpyro.sample(f"z_{t}", dist.Bernoulli(logits=z_logits[t]))


# ---------------------------------------------------------------------------------------------
# 11. The Bernoulli mixture on minibatches with an amortised guide (held out)
# ---------------------------------------------------------------------------------------------


def amix_model(pixels, batch=None):
    n, d = pixels.shape
    weights, logits = _bmm_prior(d)
    with numpyro.plate("data", n, subsample_size=batch) as idx:
        z = numpyro.sample("z", dist.Categorical(probs=weights))
        numpyro.sample("obs", dist.Bernoulli(logits=logits[z]).to_event(1), obs=pixels[idx])


def amix_guide(pixels, batch=None):
    n, d = pixels.shape
    k = data.BMM_K
    conc = numpyro.param("weights_conc", jnp.ones(k), constraint=constraints.positive)
    numpyro.sample("weights", dist.Dirichlet(conc))
    loc = numpyro.param("logits_loc", lambda key: 0.5 * jax.random.normal(key, (k, d)))
    scale = numpyro.param("logits_scale", jnp.full((k, d), 0.1), constraint=constraints.positive)
    with numpyro.plate("components", k):
        numpyro.sample("logits", dist.Normal(loc, scale).to_event(1))
    enc_w = numpyro.param("enc_w", lambda key: 0.01 * jax.random.normal(key, (d, k)))
    enc_b = numpyro.param("enc_b", jnp.zeros(k))
    with numpyro.plate("data", n, subsample_size=batch) as idx:
        numpyro.sample("z", dist.Categorical(logits=pixels[idx] @ enc_w + enc_b))


# ---------------------------------------------------------------------------------------------
# 12. The semi-supervised VAE (Kingma et al. 2014's M2) on the digits (held out)
# ---------------------------------------------------------------------------------------------


def _ssvae_net(prefix: str, x):
    """A one-hidden-layer softplus network whose params are ``{prefix}_w1`` ... ``{prefix}_b2``
    (initial values from ``gallery_data.initial_params``; the zeros only give their shapes)."""
    h = data.SSVAE_HIDDEN
    out = data.SSVAE_OUT[prefix]
    w1 = numpyro.param(f"{prefix}_w1", jnp.zeros((x.shape[-1], h)))
    b1 = numpyro.param(f"{prefix}_b1", jnp.zeros(h))
    w2 = numpyro.param(f"{prefix}_w2", jnp.zeros((h, out)))
    b2 = numpyro.param(f"{prefix}_b2", jnp.zeros(out))
    return jax.nn.softplus(x @ w1 + b1) @ w2 + b2


def _with_label(x, y):
    return jnp.concatenate([x, jax.nn.one_hot(y, data.SSVAE_CLASSES)], axis=-1)


def ssvae_model(xs_l, ys_l, xs_u, batch=None):
    zeros = jnp.zeros(data.SSVAE_Z)
    uniform = dist.Categorical(logits=jnp.zeros(data.SSVAE_CLASSES))
    with numpyro.plate("labelled", xs_l.shape[0]):
        z = numpyro.sample("z_l", dist.Normal(zeros, 1.0).to_event(1))
        numpyro.sample("y_l", uniform, obs=ys_l)
        logits = _ssvae_net("dec", _with_label(z, ys_l))
        numpyro.sample("x_l", dist.Bernoulli(logits=logits).to_event(1), obs=xs_l)
    with numpyro.plate("unlabelled", xs_u.shape[0], subsample_size=batch) as idx:
        y = numpyro.sample("y_u", uniform)
        z = numpyro.sample("z_u", dist.Normal(zeros, 1.0).to_event(1))
        logits = _ssvae_net("dec", _with_label(z, y))
        numpyro.sample("x_u", dist.Bernoulli(logits=logits).to_event(1), obs=xs_u[idx])


def _ssvae_encode(x, y):
    out = _ssvae_net("enc", _with_label(x, y))
    return dist.Normal(out[..., : data.SSVAE_Z], jnp.exp(out[..., data.SSVAE_Z :])).to_event(1)


def ssvae_guide(xs_l, ys_l, xs_u, batch=None):
    with numpyro.plate("labelled", xs_l.shape[0]):
        numpyro.sample("z_l", _ssvae_encode(xs_l, ys_l))
    with numpyro.plate("unlabelled", xs_u.shape[0], subsample_size=batch) as idx:
        x = xs_u[idx]
        y = numpyro.sample("y_u", dist.Categorical(logits=_ssvae_net("cls", x)))
        numpyro.sample("z_u", _ssvae_encode(x, y))


def ssvae_accuracy(params, xs_u, ys_u):
    """The fraction of unlabelled images whose most probable digit under the guide's
    classifier is their true label (what a user of M2 reads; never trained on)."""
    with numpyro.handlers.substitute(data=params):
        logits = _ssvae_net("cls", xs_u)
    return jnp.mean(jnp.argmax(logits, axis=-1) == ys_u)
