"""expectax.integrations.tunix: registration, advantages equal expectax's, a GRPO run on CPU.

Needs tunix (``pip install "expectax[tunix]"``); CI does not install it, so this file skips
there. Locally: ``python3 -m venv .venv-tunix && .venv-tunix/bin/pip install -e ".[test,tunix]"
&& .venv-tunix/bin/python -m pytest tests/test_tunix.py``.
"""

import functools

import numpy as np
import pytest

pytest.importorskip(
    "tunix.rl.function_registry",
    reason='tunix is not installed (pip install "expectax[tunix]"; CI does not install it)',
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from tunix.rl import function_registry  # noqa: E402

from expectax.integrations import tunix as ex_tunix  # noqa: E402
from expectax.rl import sequence as seq  # noqa: E402


@pytest.fixture(scope="module")
def names():
    return ex_tunix.register()


def _expected(name, rewards_gk):
    if name == "gdpo":
        r = rewards_gk if rewards_gk.ndim == 3 else rewards_gk[..., None]
        return seq.gdpo_advantages(r)
    return seq.advantages(name, rewards_gk)


def test_register_names(names):
    want_adv = [f"expectax_{n}" for n in ex_tunix.ADVANTAGE_ESTIMATORS]
    want_loss = [f"expectax_{n}" for n in ex_tunix.POLICY_LOSSES]
    assert names == {"advantage_estimator": want_adv, "policy_loss_fn": want_loss}
    listed_adv = function_registry.default_registry.list_functions("advantage_estimator")
    listed_loss = function_registry.default_registry.list_functions("policy_loss_fn")
    assert set(want_adv) <= set(listed_adv)
    assert set(want_loss) <= set(listed_loss)
    # tunix's own entries are untouched
    assert {"grpo", "rloo"} <= set(listed_adv)
    assert "grpo" in listed_loss


@pytest.mark.parametrize("name", ex_tunix.ADVANTAGE_ESTIMATORS)
def test_advantages_equal_expectax(names, name):
    g, k = 3, 4
    rewards = np.random.default_rng(0).normal(size=g * k).astype(np.float32)
    fn = function_registry.get_advantage_estimator(f"expectax_{name}")
    got = fn(rewards=rewards, num_generations=k)
    assert isinstance(got, np.ndarray) and got.shape == (g * k,)
    # tunix's layout: the K completions of prompt g are rewards[g*K:(g+1)*K]
    want = np.asarray(_expected(name, rewards.reshape(g, k))).reshape(-1)
    np.testing.assert_array_equal(got, want)
    # JAX in, JAX out
    got_jax = fn(rewards=jnp.asarray(rewards), num_generations=k)
    np.testing.assert_allclose(np.asarray(got_jax), want, rtol=1e-6, atol=1e-6)


def test_expectax_rloo_equals_tunix_rloo(names):
    # the same estimator in both libraries: the layouts agree
    rewards = np.random.default_rng(1).normal(size=12).astype(np.float32)
    ours = function_registry.get_advantage_estimator("expectax_rloo")(rewards, 4)
    theirs = function_registry.get_advantage_estimator("rloo")(jnp.asarray(rewards), 4)
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-6)


def test_gdpo_several_rewards(names):
    r = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
    got = function_registry.get_advantage_estimator("expectax_gdpo")(r, 4)
    np.testing.assert_array_equal(got, np.asarray(seq.gdpo_advantages(r.reshape(2, 4, 3))).ravel())


def test_errors(names):
    fn = function_registry.get_advantage_estimator("expectax_rloo")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        fn(rewards=np.zeros(7, np.float32), num_generations=4)
    with pytest.raises(ValueError, match="K=1 completion"):
        fn(rewards=np.zeros(4, np.float32), num_generations=1)
    with pytest.raises(ValueError, match="'remax'.*greedy"):
        ex_tunix.register(advantage_estimators=["remax"])
    with pytest.raises(TypeError, match="does not take"):
        ex_tunix.register(policy_losses=["cispo"], loss_options={"cispo": {"tau_pos": 1.0}})


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name", list(ex_tunix.POLICY_LOSSES))
def test_policy_loss_equals_expectax(names, name, beta):
    import inspect

    from flax import nnx
    from tunix.rl import common
    from tunix.rl.grpo import grpo_learner
    from tunix.tests import test_common as tc

    vocab = tc.MockVocab()
    model = tc.ToyTransformer(
        config=tc.ModelConfig(vocab_size=vocab.GetPieceSize()), rngs=nnx.Rngs(0)
    )
    rng = np.random.default_rng(3)
    n, p, t = 4, 3, 5
    prompt = jnp.asarray(rng.integers(3, 20, size=(n, p)), jnp.int32)
    completion = np.asarray(rng.integers(3, 20, size=(n, t)), np.int32)
    completion[0, 3:] = 0  # padding
    completion = jnp.asarray(completion)
    mask = jnp.asarray(completion != 0, jnp.float32)
    adv = jnp.asarray(rng.normal(size=n), jnp.float32)
    graphdef, state = nnx.split(model)
    logp = common.compute_per_token_logps(
        graphdef,
        state,
        prompt_tokens=prompt,
        completion_tokens=completion,
        pad_id=0,
        eos_id=2,
        stop_gradient=False,
    )
    # old and reference policies a little away from the current one
    old = logp + jnp.asarray(rng.normal(size=(n, t)) * 0.1, jnp.float32)
    ref = logp + jnp.asarray(rng.normal(size=(n, t)) * 0.1, jnp.float32)
    example = common.TrainExample(
        prompt_ids=prompt,
        prompt_mask=prompt != 0,
        completion_ids=completion,
        completion_mask=completion != 0,
        advantages=adv,
        ref_per_token_logps=ref if beta else None,
        old_per_token_logps=old,
    )
    config = grpo_learner.GRPOConfig(
        num_generations=2, beta=beta, loss_agg_mode="sequence-mean-token-mean"
    )
    config.temperature = 1.0
    loss_fn = function_registry.get_policy_loss_fn(f"expectax_{name}")
    got, aux = loss_fn(model, example, config, pad_id=0, eos_id=2)

    expectax_loss = ex_tunix.POLICY_LOSSES[name]
    kw = {}
    if "loss_agg_mode" in inspect.signature(expectax_loss).parameters:
        kw["loss_agg_mode"] = "seq-mean-token-mean"
    if name == "sequence_policy":
        kw.update(clip_eps=0.2, clip_eps_high=0.2)  # tunix's epsilon
    want = expectax_loss(
        logp_gkt=logp[None],
        old_logp_gkt=old[None],
        advantages=adv[None],
        mask_gkt=mask[None],
        **kw,
    )
    np.testing.assert_allclose(float(aux["pg_loss"]), float(want), rtol=1e-6)
    if beta:  # tunix's default kl_loss_mode "kl" is k1
        kl = seq.kl_loss(
            logp[None], ref[None], mask[None], estimator="k1", loss_agg_mode="seq-mean-token-mean"
        )
        want = want + beta * kl
        np.testing.assert_allclose(float(aux["kl_loss"]), float(kl), rtol=1e-6)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    grads = nnx.grad(lambda m: loss_fn(m, example, config, pad_id=0, eos_id=2)[0])(model)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(bool(jnp.any(g != 0)) for g in leaves)


# tunix 0.1.7's own deprecations, errors under this project's filterwarnings = error: it enters
# meshes with `with mesh:` (deprecated since JAX 0.8.2), and its sampler warns that its own test
# model (tunix.tests.test_common.ToyTransformer) has no init_cache
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_grpo_learner_uses_expectax(names, monkeypatch, request):
    """tunix's GRPOLearner, a toy transformer on CPU, 3 steps: expectax_rloo, expectax_cispo."""
    import optax
    from flax import nnx
    from grain import python as grain
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout
    from tunix.tests import test_common as tc

    calls = []
    real = seq.advantages

    def spy(name, rewards_gk, **kw):
        calls.append((name, np.asarray(rewards_gk).copy()))
        return real(name, rewards_gk, **kw)

    monkeypatch.setattr(seq, "advantages", spy)
    traced = []
    real_loss = ex_tunix.POLICY_LOSSES["cispo"]

    @functools.wraps(real_loss)  # keeps the signature the adapter inspects
    def loss_spy(*args, **kwargs):
        traced.append(kwargs.get("loss_agg_mode"))
        return real_loss(*args, **kwargs)

    monkeypatch.setitem(ex_tunix.POLICY_LOSSES, "cispo", loss_spy)
    ex_tunix.register(advantage_estimators=["rloo"], policy_losses=["cispo"])

    def unspy():  # put the real functions back in tunix's registry
        monkeypatch.undo()
        ex_tunix.register(advantage_estimators=["rloo"], policy_losses=["cispo"])

    request.addfinalizer(unspy)

    vocab = tc.MockVocab()
    cfg = tc.ModelConfig(vocab_size=vocab.GetPieceSize())
    model = tc.ToyTransformer(config=cfg, rngs=nnx.Rngs(0))
    ref_model = tc.ToyTransformer(config=cfg, rngs=nnx.Rngs(0))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tp"))
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={
            rl_cluster_lib.Role.ACTOR: mesh,
            rl_cluster_lib.Role.REFERENCE: mesh,
            rl_cluster_lib.Role.ROLLOUT: mesh,
        },
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.sgd(1e-2), eval_every_n_steps=100, max_steps=3
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=6, max_prompt_length=16, kv_cache_size=64, temperature=1.0
        ),
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=model, reference=ref_model, tokenizer=vocab, cluster_config=cluster_config
    )
    actor = cluster.actor_trainer.model  # the cluster reshards (copies) the model onto the mesh
    before = jax.tree.map(jnp.copy, nnx.state(actor, nnx.Param))
    k = 4
    config = grpo_learner.GRPOConfig(
        num_generations=k,
        num_iterations=1,
        beta=0.04,
        advantage_estimator="expectax_rloo",
        policy_loss_fn="expectax_cispo",
    )
    seen = []

    def capture(prompts, completions, rewards, advantages, **kw):
        seen.append((np.asarray(rewards).copy(), np.asarray(advantages).copy()))
        return {}

    def reward(prompts, completions, **kw):
        # a reward that varies within a group: the number of distinct tokens
        return [float(len(set(c.split()))) for c in completions]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster, reward_fns=reward, algo_config=config, metric_fns=[capture]
    )
    data = ["input string", "hello world", "My name", "hello there"] * 3
    ds = grain.MapDataset.source(data).batch(2).map(lambda x: {"prompts": x, "answer": x})
    learner.train(ds)

    assert learner.rl_cluster.global_steps == 3
    assert len(calls) >= 3 and all(name == "rloo" for name, _ in calls)
    assert all(r.shape == (2, k) for _, r in calls)
    assert traced and all(mode == "seq-mean-token-mean" for mode in traced)
    assert len(seen) >= 3
    informative = 0
    for rewards, advantages in seen:
        want = np.asarray(seq.rloo_advantages(rewards.reshape(-1, k))).reshape(-1)
        np.testing.assert_allclose(advantages, want, rtol=1e-6, atol=1e-6)
        informative += np.any(advantages != 0)
    assert informative > 0, "every group had equal rewards: the check above is vacuous"
    after = nnx.state(cluster.actor_trainer.model, nnx.Param)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after))
    assert any(changed), "the policy did not move"
