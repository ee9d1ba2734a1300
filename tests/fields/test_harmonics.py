"""Spherical harmonics against their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from snd_hf.fields.harmonics import (
    MAX_DEGREE,
    band_of_coefficients,
    num_coefficients,
    reflect,
    roughness_attenuation,
    spherical_harmonics,
)


def _sphere_quadrature(count: int = 200_000) -> torch.Tensor:
    """Fibonacci-lattice directions: equal-area samples of the unit sphere. [N, 3]"""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = math.pi * (1.0 + 5.0**0.5) * index
    radius = (1.0 - z * z).sqrt()
    return torch.stack([radius * azimuth.cos(), radius * azimuth.sin(), z], dim=-1)


def test_basis_is_orthonormal_on_the_sphere():
    directions = _sphere_quadrature()
    basis = spherical_harmonics(directions, MAX_DEGREE)  # [N, 16]
    gram = 4.0 * math.pi * basis.T @ basis / len(directions)
    torch.testing.assert_close(gram, torch.eye(num_coefficients(MAX_DEGREE), dtype=torch.float64), atol=1e-4, rtol=0)


def test_bands_are_closed_under_rotation():
    # A rotated band-l function is a band-l function: the band-2 values at rotated directions are
    # an exact linear combination of band-2 values at the original directions.
    directions = torch.nn.functional.normalize(torch.randn(500, 3, dtype=torch.float64), dim=-1)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    bands = band_of_coefficients(2)
    original = spherical_harmonics(directions, 2)[:, bands == 2]
    rotated = spherical_harmonics(directions @ rotation.T, 2)[:, bands == 2]
    solution = torch.linalg.lstsq(original, rotated).solution
    torch.testing.assert_close(original @ solution, rotated, atol=1e-10, rtol=0)


def test_roughness_attenuation_is_refnerf_per_band():
    factors = roughness_attenuation(torch.tensor([0.0, 0.5]), 3)
    bands = band_of_coefficients(3).double()
    torch.testing.assert_close(factors[0], torch.ones(16))
    torch.testing.assert_close(factors[1], torch.exp(-0.25 * bands * (bands + 1)).float())


def test_reflect_mirrors_about_the_normal():
    normal = torch.tensor([0.0, 0.0, 1.0])
    direction = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 3.0]), dim=0)
    torch.testing.assert_close(reflect(direction, normal), direction * torch.tensor([-1.0, -1.0, 1.0]))


@pytest.mark.parametrize("degree", [-1, MAX_DEGREE + 1, 1.5])
def test_rejects_unsupported_degrees(degree):
    with pytest.raises(ValueError, match="degree"):
        spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]), degree)
