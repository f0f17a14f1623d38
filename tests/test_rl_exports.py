"""``expectax.rl`` re-exports the sequence losses and the vocabulary-chunked losses.

The guide (docs/sequence-policy-gradients.md) says "All are exported from expectax.rl too":
every public name of :mod:`expectax.rl.sequence`, and the chunked losses of
:mod:`expectax.rl.vocab`, are the same objects in ``expectax.rl`` and listed in its
``__all__``; ``expectax.rl`` still imports without the apps extra (optax, gymnasium).
"""

import subprocess
import sys

import expectax.rl as rl
from expectax.rl import sequence, vocab

VOCAB_NAMES = (
    "chunked_kl_loss",
    "chunked_log_probs",
    "chunked_policy_loss",
    "chunked_sequence_policy_loss",
)


def test_every_sequence_name_is_reachable_from_expectax_rl():
    for name in (*sequence.__all__, *VOCAB_NAMES):
        module = vocab if name in VOCAB_NAMES else sequence
        assert getattr(rl, name) is getattr(module, name), name
        assert name in rl.__all__, name
    assert rl.__all__ == sorted(rl.__all__) and len(set(rl.__all__)) == len(rl.__all__)
    for name in rl.__all__:  # nothing listed that is not there (the trainer's names lazily)
        assert hasattr(rl, name), name


def test_expectax_rl_imports_without_optax_or_gymnasium():
    code = (
        "import sys\n"
        "sys.modules['optax'] = None\n"
        "sys.modules['gymnasium'] = None\n"
        "import expectax.rl as rl\n"
        "assert rl.gspo_loss is rl.sequence.gspo_loss\n"
        "assert rl.chunked_policy_loss is rl.vocab.chunked_policy_loss\n"
        "assert 'expectax.rl.train' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
