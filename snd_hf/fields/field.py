"""A disentangled feature field: per-scene 3D Gaussians with view-independent and view-dependent parts.

Follows "Structurally Disentangled Feature Fields Distillation for 3D Understanding and Editing"
(Levy, Shavin, Lang, Benaim, 2025, arXiv 2502.14789) on 3D Gaussians instead of the paper's
Ref-NeRF-style SDF/NeRF (see ``docs/fields.md`` for every difference). Each Gaussian ``g`` carries

- geometry: ``means`` [G, 3], standard deviations ``scales`` (stored as logs) [G, 3], ``rotations``
  (unit quaternions x, y, z, w) [G, 4] and opacities (stored as logits) [G];
- colour = ``diffuse`` [G, 3] (view-independent) + ``specular`` (view-dependent);
- features = ``f_ind`` [G, k] (view-independent) + ``f_dep`` (view-dependent).

The view-dependent parts have one form: per Gaussian, a linear combination of the real spherical
harmonics (degree ``sh_degree``, at least 2) of the *reflected* view direction ``ω_r = 2 (n·ω_o) n -
ω_o``, where ``ω_o`` points from the Gaussian to the camera and ``n`` is the Gaussian's shortest axis
turned towards the camera (the paper's Ref-NeRF parametrisation), with every band ``l`` damped by
Ref-NeRF's roughness factor ``exp(-l (l + 1) ρ / 2)``:

    specular_g(ω_o) = Σ_lm a_l(ρ_g) Y_lm(ω_r) · specular[g, lm]   [3]
    f_dep_g(ω_o)    = Σ_lm a_l(ρ_g) Y_lm(ω_r) · features_dep[g, lm]   [k]

The roughness ``ρ`` [G] is an editing control, not fitted: the per-Gaussian coefficients already
carry the shape of each lobe, so ``ρ = 0`` after fitting and raising it blurs and dims highlights.

Rendering evaluates the view-dependent parts per Gaussian for every camera and splats all
channels (diffuse, specular, ``f_ind``, ``f_dep`` and any extra channel such as a selection) in
one :func:`~snd_hf.splatting.render.render_features` pass: gsplat on CUDA, the exact torch twin on
CPU. Compositing is linear in the channels, so the rendered ``full`` colour or feature is exactly
the sum of its rendered ``ind`` and ``dep`` parts.

The 2D teacher's C-channel features are distilled in a k-dimensional PCA space of the training
views' features (:class:`FeatureSpace`), which remembers the model it came from.

A field is saved as a folder holding ``field.safetensors`` (tensors) and ``field.json``
(configuration, names, the SHA-256 of the tensors file), written beside the destination and moved
into place complete (:func:`snd_hf.run_folder.replace_folder`, with the folder's ``snd_run.json``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from snd_hf.cameras import Cameras, matrix_to_quaternion_xyzw, quaternion_xyzw_to_matrix
from snd_hf.files import restore_interrupted, sha256_file
from snd_hf.run_folder import replace_folder
from snd_hf.schema import MIN_SH_DEGREE, FieldConfigSchema, SchemaError
from snd_hf.schema import load as load_json
from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.render import Backend, render_features

from .harmonics import (
    num_coefficients,
    reflect,
    roughness_attenuation,
    spherical_harmonics,
)

FORMAT_VERSION = 1
CONFIG_NAME = "field.json"
WEIGHTS_NAME = "field.safetensors"
# The keys of field.json that describe the tensors: a copy is kept in the safetensors header (which
# the checksum covers), so a hand-edited field.json that would render wrongly is refused on load.
_STRUCTURE_KEY = "field_structure"
_STRUCTURE = ("num_gaussians", "sh_degree", "feature_dim", "disentangled", "image_size", "view_names", "feature_space")

Component = Literal["ind", "dep", "full"]
COMPONENTS: tuple[str, ...] = ("ind", "dep", "full")

_PARAMETERS = ("means", "log_scales", "rotations", "opacity_logits", "diffuse", "specular", "features_ind", "features_dep")
_CAMERA_TENSORS = ("extrinsics", "intrinsics", "near", "far")


@dataclass
class FeatureSpace:
    """The k-dimensional space the teacher's C-channel features are distilled in.

    ``project(f) = basis.T (f - mean) / scale``: the first k principal components of the training
    views' features, scaled so that the projected features have unit variance per channel on average.

    Attributes:
        mean: feature mean. [C]
        basis: orthonormal principal directions as columns. [C, k]
        scale: common divisor of the projected features.
        source_name: the feature model, as named when fitting.
        source_id: fingerprint of the feature model (SHA-256 of its architecture and weights, or of
            the feature tensor), compared by :meth:`check`.
    """

    mean: torch.Tensor
    basis: torch.Tensor
    scale: float
    source_name: str
    source_id: str

    @property
    def channels(self) -> int:
        """C, the teacher's channels."""
        return self.basis.shape[0]

    @property
    def dim(self) -> int:
        """k, the field's feature channels."""
        return self.basis.shape[1]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher features → field features. [..., C, h, w] → [..., k, h, w]"""
        if features.shape[-3] != self.channels:
            raise ValueError(f"features must have {self.channels} channels (the field's teacher), got {features.shape[-3]}.")
        centred = features.movedim(-3, -1) - self.mean.to(features)
        return (centred @ self.basis.to(features) / self.scale).movedim(-1, -3)

    def unproject(self, features: torch.Tensor) -> torch.Tensor:
        """Field features → the teacher's space (exact inverse of :meth:`project` when k = C). [..., k, h, w] → [..., C, h, w]"""
        if features.shape[-3] != self.dim:
            raise ValueError(f"features must have {self.dim} channels (the field's), got {features.shape[-3]}.")
        restored = features.movedim(-3, -1) * self.scale @ self.basis.to(features).T + self.mean.to(features)
        return restored.movedim(-1, -3)

    def check(self, source_name: str, source_id: str, channels: int) -> None:
        """Raise ``ValueError`` unless the features come from the model this field was distilled from."""
        if source_id != self.source_id or channels != self.channels:
            raise ValueError(
                f"the field was distilled from {self.source_name!r} ({self.channels} channels, fingerprint "
                f"{self.source_id[:12]}), but the features come from {source_name!r} ({channels} channels, "
                f"fingerprint {source_id[:12]}); use the same feature model or refit the field with this one"
            )


@dataclass
class FieldRender:
    """What :meth:`FeatureField.render` returns for V cameras (None for parts not rendered).

    Attributes:
        diffuse: view-independent colour. [V, 3, H, W]
        specular: view-dependent colour. [V, 3, H, W]
        features_ind: view-independent features ``f_ind``. [V, k, H, W]
        features_dep: view-dependent features ``f_dep`` (zeros for a field that is not disentangled). [V, k, H, W]
        extra: the extra per-Gaussian channels given to ``render``. [V, E, H, W]
        alpha: accumulated opacity. [V, 1, H, W]
        depth: expected z-depth. [V, 1, H, W]
    """

    diffuse: torch.Tensor | None
    specular: torch.Tensor | None
    features_ind: torch.Tensor | None
    features_dep: torch.Tensor | None
    extra: torch.Tensor | None
    alpha: torch.Tensor
    depth: torch.Tensor

    def color(self, component: Component = "full") -> torch.Tensor:
        """Rendered colour: ``"ind"`` diffuse, ``"dep"`` specular, ``"full"`` their sum. [V, 3, H, W]"""
        return _component(self.diffuse, self.specular, component, "color")

    def features(self, component: Component = "full") -> torch.Tensor:
        """Rendered features: ``"ind"`` f_ind, ``"dep"`` f_dep, ``"full"`` their sum. [V, k, H, W]"""
        return _component(self.features_ind, self.features_dep, component, "features")


def _component(independent: torch.Tensor | None, dependent: torch.Tensor | None, component: str, flag: str) -> torch.Tensor:
    if component not in COMPONENTS:
        raise ValueError(f"`component` must be one of {list(COMPONENTS)}, got {component!r}.")
    if independent is None:
        raise ValueError(f"this part was not rendered; call render(..., {flag}=True).")
    if component == "ind":
        return independent
    return dependent if component == "dep" else independent + dependent


class FeatureField(nn.Module):
    """Per-scene Gaussians with disentangled colour and features (see the module docstring).

    Build one with :func:`snd_hf.fields.fit.fit_field` (or :meth:`from_gaussians` and the fitting
    stages), or :meth:`load` a saved one.

    Args:
        means: centres. [G, 3]
        log_scales: log standard deviations along the rotation's axes. [G, 3]
        rotations: quaternions (x, y, z, w), normalised when used. [G, 4]
        opacity_logits: logits of the opacities. [G]
        diffuse: view-independent colour. [G, 3]
        specular: spherical-harmonic coefficients of the specular colour. [G, (sh_degree + 1)², 3]
        features_ind: view-independent features. [G, k]
        features_dep: spherical-harmonic coefficients of the view-dependent features. [G, (sh_degree + 1)², k]
        roughness: Ref-NeRF roughness of the view-dependent parts, >= 0. [G]
        sh_degree: degree of the view-dependent parts (>= 2).
        disentangled: False for a single view-independent feature field (``f_dep`` stays 0).
        cameras: the training cameras (kept so that saved fields render their views), or None.
        view_names: one name per training camera.
        feature_space: how the teacher's features map to ``f_ind``/``f_dep``, None before distillation.
        info: free-form provenance (scene, fitting configuration), saved with the field.
    """

    def __init__(
        self,
        means: torch.Tensor,
        log_scales: torch.Tensor,
        rotations: torch.Tensor,
        opacity_logits: torch.Tensor,
        diffuse: torch.Tensor,
        specular: torch.Tensor,
        features_ind: torch.Tensor,
        features_dep: torch.Tensor,
        roughness: torch.Tensor,
        *,
        sh_degree: int,
        disentangled: bool = True,
        cameras: Cameras | None = None,
        view_names: list[str] | None = None,
        feature_space: FeatureSpace | None = None,
        info: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(sh_degree, int) or sh_degree < MIN_SH_DEGREE:
            raise ValueError(f"`sh_degree` must be an int >= {MIN_SH_DEGREE}, got {sh_degree!r}.")
        count, basis, dim = means.shape[0], num_coefficients(sh_degree), features_ind.shape[-1]
        expected = {
            "means": (means, (count, 3)),
            "log_scales": (log_scales, (count, 3)),
            "rotations": (rotations, (count, 4)),
            "opacity_logits": (opacity_logits, (count,)),
            "diffuse": (diffuse, (count, 3)),
            "specular": (specular, (count, basis, 3)),
            "features_ind": (features_ind, (count, dim)),
            "features_dep": (features_dep, (count, basis, dim)),
            "roughness": (roughness, (count,)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"FeatureField.{name} must have shape {list(shape)}, got {list(tensor.shape)}.")
        if feature_space is not None and feature_space.dim != dim:
            raise ValueError(f"the feature space has {feature_space.dim} channels but the features have {dim}.")
        for name in _PARAMETERS:
            setattr(self, name, nn.Parameter(expected[name][0].detach().clone()))
        self.register_buffer("roughness", roughness.detach().clone())
        self.sh_degree = sh_degree
        self.disentangled = bool(disentangled)
        self.cameras = cameras
        self.view_names = list(view_names) if view_names is not None else None
        self.feature_space = feature_space
        self.info = dict(info or {})

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_gaussians(
        cls,
        gaussians: Gaussians,
        colors: torch.Tensor,
        *,
        sh_degree: int = 3,
        cameras: Cameras | None = None,
        view_names: list[str] | None = None,
        info: dict | None = None,
    ) -> FeatureField:
        """A field without features from lifted Gaussians (batch of one) and their colours.

        Covariances become scales and rotations by an eigen-decomposition (a reflection is turned
        into a rotation by flipping one axis, which leaves the Gaussian unchanged); opacities are
        kept inside [0.01, 0.99] so that their logits stay finite; the specular colour starts at 0.

        Args:
            gaussians: ``means`` [1, G, 3], ``covariances`` [1, G, 3, 3], ``opacities`` [1, G].
            colors: the colour of each Gaussian's pixel, the initial diffuse colour. [G, 3]
        """
        if gaussians.means.shape[0] != 1:
            raise ValueError(f"`gaussians` must hold one batch element, got {gaussians.means.shape[0]}.")
        means, covariances, opacities = gaussians.means[0], gaussians.covariances[0], gaussians.opacities[0]
        count = means.shape[0]
        if tuple(colors.shape) != (count, 3):
            raise ValueError(f"`colors` must have shape {[count, 3]}, got {list(colors.shape)}.")
        variances, axes = torch.linalg.eigh(covariances.double())
        axes[torch.linalg.det(axes) < 0, :, 0] *= -1.0  # a reflection: flip one axis, same Gaussian
        scales = variances.clamp_min(1e-12).sqrt()
        opacities = opacities.clamp(0.01, 0.99)
        basis = num_coefficients(sh_degree)
        dtype = means.dtype
        return cls(
            means=means,
            log_scales=scales.log().to(dtype),
            rotations=matrix_to_quaternion_xyzw(axes).to(dtype),
            opacity_logits=torch.logit(opacities),
            diffuse=colors.to(dtype),
            specular=means.new_zeros(count, basis, 3),
            features_ind=means.new_zeros(count, 0),
            features_dep=means.new_zeros(count, basis, 0),
            roughness=means.new_zeros(count),
            sh_degree=sh_degree,
            cameras=cameras,
            view_names=view_names,
            info=info,
        )

    def with_feature_space(self, feature_space: FeatureSpace, disentangled: bool = True) -> FeatureField:
        """A copy with zero features in ``feature_space`` (``disentangled`` chooses whether ``f_dep`` exists)."""
        field = copy.deepcopy(self)
        count, basis = self.num_gaussians, num_coefficients(self.sh_degree)
        field.features_ind = nn.Parameter(self.means.new_zeros(count, feature_space.dim))
        field.features_dep = nn.Parameter(self.means.new_zeros(count, basis, feature_space.dim))
        field.feature_space = feature_space
        field.disentangled = bool(disentangled)
        return field

    # -- geometry -----------------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def feature_dim(self) -> int:
        """k, the field's feature channels (0 before distillation)."""
        return self.features_ind.shape[-1]

    @property
    def opacities(self) -> torch.Tensor:
        """Opacities in (0, 1). [G]"""
        return torch.sigmoid(self.opacity_logits)

    def rotation_matrices(self) -> torch.Tensor:
        """Rotation of every Gaussian, columns = its axes in world space. [G, 3, 3]"""
        return quaternion_xyzw_to_matrix(self.rotations)

    def covariances(self) -> torch.Tensor:
        """World-space covariances ``R diag(s²) Rᵀ``. [G, 3, 3]"""
        rotation = self.rotation_matrices()
        return rotation @ torch.diag_embed(torch.exp(2.0 * self.log_scales)) @ rotation.transpose(-1, -2)

    def normals(self) -> torch.Tensor:
        """The shortest axis of every Gaussian (the normal of a flat splat), unoriented. [G, 3]"""
        rotation = self.rotation_matrices()
        shortest = self.log_scales.argmin(-1)
        return rotation.gather(-1, shortest[:, None, None].expand(-1, 3, 1)).squeeze(-1)

    # -- view dependence ----------------------------------------------------------------------

    def directional_basis(self, camera_centres: torch.Tensor) -> torch.Tensor:
        """Roughness-damped spherical harmonics of every Gaussian's reflected view direction.

        Args:
            camera_centres: world-space camera centres. [V, 3]

        Returns:
            ``a_l(ρ_g) Y_lm(ω_r)`` per camera and Gaussian. [V, G, (sh_degree + 1)²]
        """
        to_camera = F.normalize(camera_centres[:, None, :] - self.means[None], dim=-1)  # ω_o [V, G, 3]
        normals = self.normals()[None]
        facing = torch.where((normals * to_camera).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        reflected = reflect(to_camera, normals * facing)
        return spherical_harmonics(reflected, self.sh_degree) * roughness_attenuation(self.roughness, self.sh_degree)

    def view_dependent(self, camera_centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Specular colour and ``f_dep`` of every Gaussian seen from every camera.

        Returns:
            specular [V, G, 3], ``f_dep`` [V, G, k] (zeros when the field is not disentangled).
        """
        basis = self.directional_basis(camera_centres)
        specular = torch.einsum("vgb,gbc->vgc", basis, self.specular)
        if not self.disentangled:
            return specular, basis.new_zeros(*basis.shape[:2], self.feature_dim)
        return specular, torch.einsum("vgb,gbc->vgc", basis, self.features_dep)

    # -- rendering ----------------------------------------------------------------------------

    def render(
        self,
        cameras: Cameras | None = None,
        *,
        color: bool = True,
        features: bool = True,
        extra: torch.Tensor | None = None,
        backend: Backend = "auto",
    ) -> FieldRender:
        """Render colour, features and extra channels at V cameras in one splatting pass.

        Args:
            cameras: where to render; the training cameras when None.
            color: render the diffuse and specular colour.
            features: render ``f_ind`` and ``f_dep`` (needs distilled features).
            extra: more per-Gaussian channels to splat with the rest (e.g. a selection). [G, E] or [V, G, E]
            backend: :func:`~snd_hf.splatting.render.render_features` backend (``"auto"``: gsplat
                on CUDA, torch otherwise).

        Returns:
            :class:`FieldRender` (colours [V, 3, H, W], features [V, k, H, W], alpha/depth [V, 1, H, W]).
        """
        cameras = self._cameras(cameras)
        if features and self.feature_space is None:
            raise ValueError("this field has no features yet (fit_appearance only); distil them with fit_features.")
        views, count = len(cameras), self.num_gaussians
        parts: list[tuple[str, torch.Tensor]] = []
        if color or (features and self.disentangled):
            specular, features_dep = self.view_dependent(cameras.centres)
        if color:
            parts += [("diffuse", self.diffuse.expand(views, count, 3)), ("specular", specular)]
        if features:
            parts.append(("features_ind", self.features_ind.expand(views, count, self.feature_dim)))
            if self.disentangled:
                parts.append(("features_dep", features_dep))
        if extra is not None:
            extra = extra.to(self.means)
            if extra.ndim == 2:
                extra = extra.expand(views, *extra.shape)
            if extra.ndim != 3 or extra.shape[:2] != (views, count):
                raise ValueError(f"`extra` must have shape [G, E] or [V, G, E] with G = {count}, V = {views}, got {list(extra.shape)}.")
            parts.append(("extra", extra))
        if not parts:  # alpha and depth only
            parts.append(("", self.means.new_zeros(views, count, 1)))

        gaussians = Gaussians(
            means=self.means.expand(views, count, 3),
            covariances=self.covariances().expand(views, count, 3, 3),
            opacities=self.opacities.expand(views, count),
            features=torch.cat([tensor for _, tensor in parts], dim=-1),
        )
        # The views are the batch, one camera each: [V] → [V, 1].
        out = render_features(gaussians, cameras.unsqueeze(1), backend=backend)
        rendered = out.features[:, 0].split([tensor.shape[-1] for _, tensor in parts], dim=1)
        result = dict(zip([name for name, _ in parts], rendered))
        if features and not self.disentangled:
            result["features_dep"] = torch.zeros_like(result["features_ind"])
        return FieldRender(
            diffuse=result.get("diffuse"),
            specular=result.get("specular"),
            features_ind=result.get("features_ind"),
            features_dep=result.get("features_dep"),
            extra=result.get("extra"),
            alpha=out.alpha[:, 0],
            depth=out.depth[:, 0],
        )

    def _cameras(self, cameras: Cameras | None) -> Cameras:
        if cameras is None:
            if self.cameras is None:
                raise ValueError("`cameras` is required: this field stores no training cameras.")
            cameras = self.cameras
        if not isinstance(cameras, Cameras):
            raise TypeError(f"`cameras` must be a Cameras, got {type(cameras).__name__}.")
        return cameras.to(self.means.device, self.means.dtype)

    # -- saving -------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the field, by its name in ``field.safetensors``."""
        tensors = {name: getattr(self, name).detach() for name in (*_PARAMETERS, "roughness")}
        if self.cameras is not None:
            tensors.update({f"camera_{name}": getattr(self.cameras, name) for name in _CAMERA_TENSORS})
        if self.feature_space is not None:
            tensors["feature_mean"], tensors["feature_basis"] = self.feature_space.mean, self.feature_space.basis
        return {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}

    def config(self) -> dict:
        """The JSON side of a saved field (without the tensors' checksum)."""
        space = self.feature_space
        return {
            "format_version": FORMAT_VERSION,
            "num_gaussians": self.num_gaussians,
            "sh_degree": self.sh_degree,
            "feature_dim": self.feature_dim,
            "disentangled": self.disentangled,
            "image_size": list(self.cameras.image_size) if self.cameras is not None else None,
            "view_names": self.view_names,
            "feature_space": None
            if space is None
            else {"source_name": space.source_name, "source_id": space.source_id, "channels": space.channels, "scale": space.scale},
            "info": self.info,
        }

    def save(self, path: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
        """Write the field to the folder ``path`` (``field.safetensors`` + ``field.json``).

        The folder is assembled beside ``path`` and swapped in complete
        (:func:`snd_hf.run_folder.replace_folder`): an earlier saved folder is replaced whole; a
        folder holding anything its ``snd_run.json`` does not list (a user's files) is refused, never
        deleted; a kill at any point leaves the earlier folder or the new one.

        Args:
            extra: called with the folder being assembled, to add files (e.g. pictures) before the move.

        Raises:
            FileExistsError: ``path`` is a file or holds files no save wrote (named in the message).
            ValueError: a tensor holds NaN or inf (nothing is written: a good field is never replaced by
                one that does not load).
        """
        tensors = self.state_tensors()
        bad = _non_finite(tensors)
        if bad:  # a field that would not load again never replaces a good one
            raise ValueError(f"the field holds non-finite values in {bad}; nothing was written to {path}")
        structure = {key: value for key, value in self.config().items() if key in _STRUCTURE}

        def build(folder: Path) -> None:
            save_file(tensors, folder / WEIGHTS_NAME, metadata={_STRUCTURE_KEY: json.dumps(structure)})
            config = {**self.config(), "weights_sha256": sha256_file(folder / WEIGHTS_NAME)}
            (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1))
            if extra is not None:
                extra(folder)

        return replace_folder(path, build, "snd field", {"format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> FeatureField:
        """Read a field folder written by :meth:`save` (safetensors only, every tensor checked).

        Raises:
            FileNotFoundError: the folder or one of its two files is missing.
            ValueError: a file is truncated, modified or inconsistent (naming it and the problem).
        """
        path = Path(path)
        restore_interrupted(path)  # a save killed between its two renames left the field aside
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not path.is_dir():
            raise FileNotFoundError(f"feature field {path} not found (a folder written by `snd field fit`)")
        for file in (config_path, weights_path):
            if not file.is_file():
                raise FileNotFoundError(f"{file} not found: {path} is not a complete feature field")
        config = load_json(config_path, FieldConfigSchema).model_dump()
        if sha256_file(weights_path) != config["weights_sha256"]:
            raise ValueError(
                f"{weights_path} does not match the checksum in {config_path.name} (truncated or modified); refit the field"
            )
        try:
            with safe_open(weights_path, "pt") as header:
                recorded = (header.metadata() or {}).get(_STRUCTURE_KEY)
            tensors = load_file(weights_path, device=str(device))
        except SafetensorError as error:
            raise ValueError(f"{path} is not a valid feature field: {error}") from None
        _check_structure(config, recorded, tensors, config_path)
        try:
            field = _field_from_files(config, tensors)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a valid feature field: {error}") from None
        bad = _non_finite(tensors)
        if bad:
            raise ValueError(f"{weights_path} holds non-finite values in {bad}; refit the field")
        return field


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def _check_structure(config: dict, recorded: str | None, tensors: dict[str, torch.Tensor], config_path: Path) -> None:
    """Cross-check ``field.json`` against its tensors: the copy of its structure kept in the tensors'
    header (fields saved since it was added), the number of cameras, and an ``f_dep`` that is zero
    when the field says it is not disentangled. Raises SchemaError naming the file and the key."""
    if recorded is not None:
        saved = json.loads(recorded)
        for key in _STRUCTURE:
            if config[key] != saved.get(key):
                raise SchemaError(
                    f"{config_path}: {key} is {config[key]!r} but the tensors were saved with {saved.get(key)!r}"
                    " (field.json was edited): restore it or refit the field"
                )
    cameras = tensors.get("camera_extrinsics")
    if config["view_names"] is not None and cameras is not None and len(config["view_names"]) != cameras.shape[0]:
        raise SchemaError(
            f"{config_path}: view_names holds {len(config['view_names'])} names for {cameras.shape[0]} cameras"
        )
    dependent = tensors.get("features_dep")
    if not config["disentangled"] and dependent is not None and bool(dependent.ne(0).any()):
        raise SchemaError(f"{config_path}: disentangled is false but the tensors hold a view-dependent f_dep")


def _field_from_files(config: dict, tensors: dict[str, torch.Tensor]) -> FeatureField:
    """Rebuild a field from its JSON config and tensors, strictly: every tensor expected, no other."""
    expected = {*_PARAMETERS, "roughness"}
    if config["image_size"] is not None:
        expected |= {f"camera_{name}" for name in _CAMERA_TENSORS}
    if config["feature_space"] is not None:
        expected |= {"feature_mean", "feature_basis"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"tensors missing: {missing}, unexpected: {unexpected}")
    cameras = None
    if config["image_size"] is not None:
        cameras = Cameras(*(tensors[f"camera_{name}"] for name in _CAMERA_TENSORS), image_size=tuple(config["image_size"]))
    space = None
    if config["feature_space"] is not None:
        info = config["feature_space"]
        space = FeatureSpace(
            tensors["feature_mean"], tensors["feature_basis"], float(info["scale"]), info["source_name"], info["source_id"]
        )
        if space.channels != int(info["channels"]):
            raise ValueError(f"feature_basis has {space.channels} rows, field.json says {info['channels']} channels")
    field = FeatureField(
        *(tensors[name] for name in _PARAMETERS),
        tensors["roughness"],
        sh_degree=int(config["sh_degree"]),
        disentangled=bool(config["disentangled"]),
        cameras=cameras,
        view_names=config["view_names"],
        feature_space=space,
        info=config["info"],
    )
    if field.num_gaussians != config["num_gaussians"] or field.feature_dim != config["feature_dim"]:
        raise ValueError(
            f"field.json says {config['num_gaussians']} Gaussians with {config['feature_dim']} feature channels, the "
            f"tensors hold {field.num_gaussians} with {field.feature_dim}"
        )
    return field


__all__ = ["COMPONENTS", "Component", "FeatureField", "FeatureSpace", "FieldRender"]
