"""REINFORCE pieces as pure functions: returns, the loss and its gradient, baselines."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax import rl


def test_discounted_returns_match_a_loop(strict_ranks):
    r = jnp.array([1.0, 2.0, 0.5, 3.0])
    d = jnp.array([0.9, 0.9, 0.0, 0.9])
    g = rl.discounted_returns(r, d, jnp.float32(10.0))
    expected, acc = [], 10.0
    for r_i, d_i in zip(r[::-1], d[::-1], strict=True):
        acc = float(r_i) + float(d_i) * acc
        expected.append(acc)
    np.testing.assert_allclose(g, expected[::-1], rtol=1e-6)
    np.testing.assert_allclose(rl.discounted_returns(jnp.ones(3), 0.5), [1.75, 1.5, 1.0])


def test_rank_checks_name_the_argument(strict_ranks):
    with pytest.raises(ValueError, match="discounted_returns: r_t must have rank 1.*vmap"):
        rl.discounted_returns(jnp.ones((2, 3)), 0.9)
    with pytest.raises(ValueError, match="reinforce_loss: logp_t must have rank 1"):
        rl.reinforce_loss(jnp.ones((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="leave_one_out_baseline: returns_et must have rank 2"):
        rl.leave_one_out_baseline(jnp.ones(3))
    with pytest.raises(ValueError, match="at least 2 episodes"):
        rl.leave_one_out_baseline(jnp.ones((1, 3)))


def test_reinforce_loss_gradient_is_the_score_function_term(strict_ranks):
    logits = jnp.array([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]])
    actions = jnp.array([1, 0, 1])
    g = jnp.array([3.0, 2.0, 1.0])
    b = jnp.array([1.5, 0.5, 2.0])
    m = jnp.array([1.0, 1.0, 0.0])

    def logp(lg):
        return jnp.take_along_axis(jax.nn.log_softmax(lg), actions[:, None], axis=1)[:, 0]

    loss, grad = jax.value_and_grad(lambda lg: rl.reinforce_loss(logp(lg), g, b, m))(logits)
    expected = -jax.jacobian(logp)(logits)
    expected = jnp.einsum("t,tij->ij", (g - b) * m, expected)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    np.testing.assert_allclose(loss, -jnp.sum(g * m), rtol=1e-6)  # value: −Σ G (baseline term 0)
    # without a baseline the gradient is −Σ G ∇log π
    grad0 = jax.grad(lambda lg: rl.reinforce_loss(logp(lg), g, mask_t=m))(logits)
    np.testing.assert_allclose(
        grad0, jnp.einsum("t,tij->ij", -g * m, jax.jacobian(logp)(logits)), rtol=1e-6
    )


def test_leave_one_out_baseline_values(strict_ranks):
    g = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    m = jnp.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    b = rl.leave_one_out_baseline(g, m)
    np.testing.assert_allclose(b, [[4.0, 3.0], [3.0, 4.0], [2.0, 1.0]])


def test_moving_average_uses_old_state(strict_ranks):
    state = rl.moving_average_init(2)
    b0, state = rl.moving_average_baseline(state, jnp.array([[2.0, 4.0]]), decay=0.5)
    np.testing.assert_allclose(b0, [0.0, 0.0])  # nothing seen yet: not the current batch
    b1, state = rl.moving_average_baseline(state, jnp.array([[10.0, 10.0]]), decay=0.5)
    np.testing.assert_allclose(b1, [2.0, 4.0])  # bias-corrected first batch only
    b2, _ = rl.moving_average_baseline(state, jnp.array([[0.0, 0.0]]), decay=0.5)
    # (0.25·2 + 0.5·10)/(1 − 0.25) etc.
    np.testing.assert_allclose(b2, [(0.25 * 2 + 5) / 0.75, (0.25 * 4 + 5) / 0.75], rtol=1e-6)
    with pytest.raises(ValueError, match="decay must be in"):
        rl.moving_average_baseline(state, jnp.zeros((1, 2)), decay=1.0)
    with pytest.raises(ValueError, match="moving_average_init"):
        rl.moving_average_baseline(state, jnp.zeros((1, 3)))


def test_normalize_advantages_and_entropy(strict_ranks):
    a = jnp.array([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0]])
    m = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    n = rl.normalize_advantages(a, m)
    valid = n[m > 0]
    np.testing.assert_allclose(jnp.mean(valid), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.std(valid), 1.0, rtol=1e-5)
    assert float(jnp.abs(n[:, 2]).max()) == 0.0
    np.testing.assert_allclose(rl.entropy_loss(jnp.array([0.5, 0.7]), jnp.array([1.0, 0.0])), -0.5)
    np.testing.assert_allclose(rl.value_loss(jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0])), 0.5)


@pytest.mark.parametrize("baseline", ["none", "leave_one_out", "moving_average"])
def test_reinforce_gradient_is_unbiased_on_a_bandit(baseline):
    """Per batch of E one-step episodes, the mean REINFORCE gradient ≈ the exact gradient.

    Bandit: three arms with rewards (1, 2, 5), softmax policy; J = Σ π_a r_a.
    """
    rewards = jnp.array([1.0, 2.0, 5.0])
    theta = jnp.array([0.2, -0.1, 0.3])
    exact = jax.grad(lambda th: jnp.sum(jax.nn.softmax(th) * rewards))(theta)
    E = 8
    ma_state = rl.MovingAverageState(jnp.array([2.5]), jnp.int32(3))

    def grad_one(key):
        a = jax.random.categorical(key, theta, shape=(E,))
        r = rewards[a][:, None]  # (E, T=1)

        def loss(th):
            logp = jax.nn.log_softmax(th)[a][:, None]
            if baseline == "leave_one_out":
                b = rl.leave_one_out_baseline(r)
            elif baseline == "moving_average":
                b = jnp.broadcast_to(rl.moving_average_baseline(ma_state, r)[0], r.shape)
            else:
                b = jnp.zeros_like(r)
            return jnp.mean(jax.vmap(rl.reinforce_loss)(logp, r, b))

        return -jax.grad(loss)(theta)

    grads = jax.vmap(grad_one)(jax.random.split(jax.random.key(0), 4000))
    mean = grads.mean(0)
    se = grads.std(0) / np.sqrt(grads.shape[0])
    assert np.all(np.abs(mean - exact) < 5 * se), (mean, exact, se)


def test_equal_returns_give_exactly_zero_advantages(strict_ranks):
    """Acrobot's all −500 batches: 8 equal returns-to-go. Summing the raw returns left
    rounding residue (~1e-5) that normalisation blew up to a unit-size random gradient."""
    G = jax.vmap(rl.discounted_returns, in_axes=(0, None))(-jnp.ones((8, 500)), 0.99)
    m = jnp.ones_like(G)
    old = (jnp.sum(G, 0, keepdims=True) - G) / 7  # the old formula, for the record
    assert float(jnp.max(jnp.abs(G - old))) > 0.0
    adv = G - rl.leave_one_out_baseline(G, m)
    assert float(jnp.max(jnp.abs(adv))) == 0.0
    assert float(jnp.max(jnp.abs(rl.normalize_advantages(adv, m)))) == 0.0
    # residue below eps is no signal: 0, not standardised to ±1
    residue = G - old
    assert float(jnp.max(jnp.abs(rl.normalize_advantages(residue, m, eps=1e-5 * 500)))) == 0.0
    # the shifted formula is still the leave-one-out mean for unequal returns
    R = jnp.array([[1.0, 2.0], [4.0, 0.0], [7.0, 3.0]])
    want = jnp.array([[5.5, 1.5], [4.0, 2.5], [2.5, 1.0]])
    np.testing.assert_allclose(rl.leave_one_out_baseline(R), want, rtol=1e-6)


def test_discounted_returns_inside_shard_map():
    """The scan's carry varies over the mesh axis as the rewards do (a replicated initial
    carry is an error inside shard_map), also for an empty trajectory."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("e",))
    per_device = jax.vmap(rl.losses.discounted_returns, in_axes=(0, None))
    f = jax.shard_map(lambda r: per_device(r, 0.5), mesh=mesh, in_specs=P("e"), out_specs=P("e"))
    np.testing.assert_allclose(f(jnp.ones((2, 3))), [[1.75, 1.5, 1.0]] * 2)
    assert rl.losses.discounted_returns(jnp.ones(0), 0.5).shape == (0,)


def test_losses_under_vmap_give_grad_of_jit_equal_to_jit_of_grad():
    # the losses' magic box under a vmap broke jax.grad(jax.jit(...)) with a TypeError from
    # inside JAX (fixed in the core's magic box); both orders must give the same numbers
    w = jax.random.normal(jax.random.key(0), (4, 6))
    x = jax.random.normal(jax.random.key(1), (2, 3, 5, 4))  # groups, completions, tokens
    acts = jax.random.randint(jax.random.key(2), (2, 3, 5), 0, 6)
    adv = jax.random.normal(jax.random.key(3), (2, 3))

    def logp(w):
        lg = jax.nn.log_softmax(x @ w, -1)
        return jnp.take_along_axis(lg, acts[..., None], -1)[..., 0]

    losses = {
        "sequence": lambda w: jnp.mean(
            jax.vmap(lambda lp, a: rl.sequence_policy_loss(lp[None], a[None]))(logp(w), adv)
        ),
        "reinforce": lambda w: jnp.mean(
            jax.vmap(lambda lp: rl.reinforce_loss(lp, jnp.ones(5)))(logp(w).reshape(6, 5))
        ),
    }
    for loss in losses.values():
        np.testing.assert_allclose(
            jax.jit(jax.grad(loss))(w), jax.grad(jax.jit(loss))(w), rtol=1e-5, atol=1e-6
        )
