"""The random Hadamard transform (SPEC §4): bit-exact order, orthogonality, default signs.

Why bit-exact: the RHT output feeds the quantizer, so two backends that sum the butterfly in a
different order would quantize differently; the docstring fixes the order and this checks it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nvfp4 import random_hadamard_transform
from nvfp4.formats.hadamard import DEFAULT_SIGNS_16, default_signs, hadamard_matrix
from tests.formats import oracle as O

SIZES = [2, 4, 8, 16, 32, 64, 128]


def bits(y: torch.Tensor) -> np.ndarray:
    assert y.dtype == torch.bfloat16
    return y.view(torch.int16).numpy().view(np.uint16)


def random_signs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1.0, 1.0], n).astype(np.float32)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_bit_exact_against_butterfly_oracle(size: int, inverse: bool) -> None:
    r = np.random.default_rng(size)
    x = (r.standard_t(3, (5, size * 3)) * 10.0 ** r.uniform(-3, 3, (5, 1))).astype(np.float32)
    s = random_signs(size, size + 1)
    y = random_hadamard_transform(torch.from_numpy(x), size=size, signs=torch.from_numpy(s), inverse=inverse)
    assert y.shape == x.shape
    np.testing.assert_array_equal(bits(y), O.rht_butterfly_bf16_bits(x, size, s, inverse))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [0, 1, -1, 2])
def test_bit_exact_along_any_dim_and_dtype(dim: int, dtype: torch.dtype) -> None:
    r = np.random.default_rng(7)
    x = torch.from_numpy(r.standard_normal((32, 16, 48)).astype(np.float32)).to(dtype)
    y = random_hadamard_transform(x, dim=dim)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    moved = x.float().movedim(dim, -1).numpy()
    expected = O.rht_butterfly_bf16_bits(moved, 16, O.SPEC_SIGNS_16)
    np.testing.assert_array_equal(bits(y.movedim(dim, -1).contiguous()), expected)


def test_default_signs_are_the_spec_vector() -> None:
    assert list(DEFAULT_SIGNS_16) == O.SPEC_SIGNS_16.tolist()
    assert default_signs(16).tolist() == O.SPEC_SIGNS_16.tolist()
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((4, 64)).astype(np.float32))
    y = random_hadamard_transform(x)  # signs=None
    np.testing.assert_array_equal(bits(y), O.rht_butterfly_bf16_bits(x.numpy(), 16, O.SPEC_SIGNS_16))
    flipped = O.SPEC_SIGNS_16.copy()
    flipped[5] *= -1
    assert not np.array_equal(bits(y), O.rht_butterfly_bf16_bits(x.numpy(), 16, flipped))


@pytest.mark.parametrize("size", [2, 4, 8, 32, 64, 128])
def test_default_signs_for_other_sizes_are_the_documented_rng_bits(size: int) -> None:
    """Documented: bit 0 of the counter RNG's byte at index i, seed 0x5EED, gives sign 1 − 2·bit."""
    expected = 1.0 - 2.0 * (O.rng_bytes(np.arange(size), 0x5EED) & 1)
    assert default_signs(size).tolist() == expected.tolist()
    assert 0 < (expected < 0).sum() < size or size == 2  # genuinely random-looking, not all one sign


@pytest.mark.parametrize("size", SIZES)
def test_hadamard_matrix_is_sylvester(size: int) -> None:
    h = hadamard_matrix(size).double().numpy()
    np.testing.assert_array_equal(h, O.sylvester(size))
    np.testing.assert_array_equal(h @ h.T, size * np.eye(size))


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_close_to_exact_matrix_product(size: int, inverse: bool) -> None:
    """|y − x·M| <= 2^-8·|x·M| (BF16 rounding, 8-bit significand) + the FP32 butterfly error
    (log2(n)+1 roundings of partial sums bounded by the chunk's L1 norm / √n)."""
    r = np.random.default_rng(100 + size)
    x = (r.standard_normal((6, size * 2)) * 10.0 ** r.uniform(-5, 5, (6, 1))).astype(np.float32)
    s = random_signs(size, size)
    y = random_hadamard_transform(torch.from_numpy(x), size=size, signs=torch.from_numpy(s), inverse=inverse)
    exact = O.rht_exact(x, size, s, inverse)
    l1 = np.repeat(np.abs(x.astype(np.float64)).reshape(6, -1, size).sum(-1), size, axis=1) / math.sqrt(size)
    bound = 2.0**-8 * np.abs(exact) + (math.log2(size) + 2) * 2.0**-24 * l1 * (1 + 2.0**-7)
    err = np.abs(y.double().numpy() - exact)
    assert (err <= bound).all()
    # and the transform is not the identity: it mixes the chunk
    assert np.abs(exact - x).max() > 0.1 * np.abs(x).max()


@st.composite
def token_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    size = draw(st.sampled_from([4, 16, 32]))
    t = size * draw(st.integers(1, 4))
    elements = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)
    a = draw(hnp.arrays(np.float32, (t, draw(st.integers(1, 5))), elements=elements))
    b = draw(hnp.arrays(np.float32, (t, draw(st.integers(1, 5))), elements=elements))
    return a, b, size


@settings(max_examples=60, deadline=None)
@given(data=token_pairs())
def test_transform_cancels_in_the_wgrad_product(data: tuple[np.ndarray, np.ndarray, int]) -> None:
    """(AᵀH)(HᵀB) = AᵀB along the token dim (SPEC §4), up to the BF16 rounding of the two operands.

    A' = Ã(1+δ), |δ| <= 2^-8 per element, so |A'ᵀB' − ÃᵀB̃| <= (2^-7 + 2^-16)·|A'|ᵀ|B'| (+ the FP32
    butterfly error, far smaller); ÃᵀB̃ = AᵀB exactly since diag(s)H/√n is orthogonal.
    """
    a, b, size = data
    at = random_hadamard_transform(torch.from_numpy(a), dim=0, size=size).double().numpy()
    bt = random_hadamard_transform(torch.from_numpy(b), dim=0, size=size).double().numpy()
    exact = a.astype(np.float64).T @ b.astype(np.float64)
    got = at.T @ bt
    bound = (2.0**-7 + 2.0**-16) * (np.abs(at).T @ np.abs(bt)) * 1.01
    # FP32 butterfly: |Ã_t − exact_t| <= (log2 n + 1)·2^-24·‖A_chunk‖₁/√n and |B̃_t| <= ‖B_chunk‖₁/√n,
    # summed over the n tokens of a chunk and both operands
    l1a = np.abs(a.astype(np.float64)).reshape(-1, size, a.shape[1]).sum(1)
    l1b = np.abs(b.astype(np.float64)).reshape(-1, size, b.shape[1]).sum(1)
    fp32_slack = 2 * (math.log2(size) + 2) * 2.0**-24 * (l1a.T @ l1b)
    assert (np.abs(got - exact) <= bound + fp32_slack).all()


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([16, 32, 64])),
        elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
    ),
    size=st.sampled_from([2, 8, 16]),
)
def test_inverse_undoes_the_transform(x: np.ndarray, size: int) -> None:
    """z = inv(fwd(x)): per chunk ‖z − x‖₂ <= (2·2^-8 + 2^-16)·‖x‖₂ (two BF16 roundings, orthogonal M)."""
    y = random_hadamard_transform(torch.from_numpy(x), size=size)
    z = random_hadamard_transform(y, size=size, inverse=True).double().numpy()
    xd = x.astype(np.float64)
    err = np.linalg.norm((z - xd).reshape(x.shape[0], -1, size), axis=-1)
    norm = np.linalg.norm(xd.reshape(x.shape[0], -1, size), axis=-1)
    assert (err <= (2.0**-7 + 2.0**-16) * norm * 1.01).all()


def test_bf16_oracle_cross_check() -> None:
    """The oracle's bit-level BF16 RNE agrees with ml_dtypes and torch (incl. exact ties)."""
    import ml_dtypes  # a dev dependency: a missing one must fail, not skip

    r = np.random.default_rng(9)
    x = (r.standard_normal(4000) * 10.0 ** r.uniform(-30, 30, 4000)).astype(np.float32)
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exactly half a BF16 ulp
    x = np.concatenate([x, ties, -ties])
    ours = O.bf16_rne_bits(x)
    np.testing.assert_array_equal(ours, x.astype(ml_dtypes.bfloat16).view(np.uint16))
    np.testing.assert_array_equal(ours, bits(torch.from_numpy(x).to(torch.bfloat16)))
