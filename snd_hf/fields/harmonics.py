"""Real spherical harmonics of a direction, with Ref-NeRF's roughness attenuation.

The view-dependent parts of a feature field (specular colour and ``f_dep``) are, per Gaussian,
a linear combination of the real spherical harmonics ``Y_lm`` of the reflected view direction,
up to degree :data:`MAX_DEGREE`. Index ``l² + l + m`` holds ``Y_lm`` (``m = -l..l``), the
ordering and signs of 3DGS / gsplat, so the basis of degree ``L`` has ``(L + 1)²`` functions
that are orthonormal on the unit sphere.

Roughness follows Ref-NeRF's integrated directional encoding (Verbin et al., CVPR 2022, eq. 7):
the expectation of ``Y_lm`` under a von Mises–Fisher lobe of concentration ``κ`` around the
reflected direction is approximately ``exp(-l (l + 1) / (2 κ)) Y_lm``. With roughness
``ρ = 1 / κ``, :func:`roughness_attenuation` gives these factors; ``ρ = 0`` leaves the basis as it
is, larger ``ρ`` damps the higher bands, i.e. widens and dims a highlight.
"""

from __future__ import annotations

import torch

MAX_DEGREE = 3

# Normalisation constants of the real spherical harmonics, band by band.
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_coefficients(degree: int) -> int:
    """Basis functions of degree ``degree``: ``(degree + 1)²``."""
    _check_degree(degree)
    return (degree + 1) ** 2


def band_of_coefficients(degree: int) -> torch.Tensor:
    """The band ``l`` of every basis function, in basis order. [(degree + 1)²]"""
    _check_degree(degree)
    return torch.cat([torch.full((2 * band + 1,), band) for band in range(degree + 1)])


def spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Evaluate the real spherical harmonics of unit directions.

    Args:
        directions: unit vectors (x, y, z), world frame. [..., 3]
        degree: highest band, 0 to :data:`MAX_DEGREE`.

    Returns:
        ``Y_lm(directions)`` in basis order. [..., (degree + 1)²]
    """
    _check_degree(degree)
    if directions.shape[-1] != 3:
        raise ValueError(f"`directions` must have shape [..., 3], got {list(directions.shape)}.")
    x, y, z = directions.unbind(-1)
    values = [torch.full_like(x, _C0)]
    if degree >= 1:
        values += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        values += [
            _C2[0] * x * y,
            _C2[1] * y * z,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * x * z,
            _C2[4] * (xx - yy),
        ]
    if degree >= 3:
        values += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(values, dim=-1)


def roughness_attenuation(roughness: torch.Tensor, degree: int) -> torch.Tensor:
    """Ref-NeRF's band attenuation ``exp(-l (l + 1) ρ / 2)`` for roughness ``ρ >= 0``.

    Args:
        roughness: ``ρ = 1 / κ`` of the von Mises–Fisher lobe, 0 = the sharp basis. [...]
        degree: highest band.

    Returns:
        one factor per basis function (1 for the constant band). [..., (degree + 1)²]
    """
    bands = band_of_coefficients(degree).to(roughness)
    return torch.exp(-0.5 * bands * (bands + 1) * roughness[..., None])


def reflect(directions: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Mirror unit directions about unit normals: ``2 (n·d) n - d`` (both pointing away from the surface). [..., 3]"""
    return 2.0 * (normals * directions).sum(-1, keepdim=True) * normals - directions


def _check_degree(degree: int) -> None:
    if not isinstance(degree, int) or not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"spherical-harmonics `degree` must be an int in [0, {MAX_DEGREE}], got {degree!r}.")
