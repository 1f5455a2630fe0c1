import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The suite's networks are small: one thread is faster than two, and far faster when the
# machine is busy (thread oversubscription).
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def run_cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``bridge argv``; argparse's exits included."""
    from bridge.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
