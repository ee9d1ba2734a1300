"""Fitting a disentangled feature field to one scene: the paper's two stages on 3D Gaussians.

0. **Initialisation.** ``init_views`` training views, evenly spaced, are lifted at
   ``1 / init_stride`` of their resolution to one Gaussian per pixel: with the scene's depth
   (:class:`~snd_hf.splatting.lifters.DepthLifter`, surface-aligned discs) or any given
   :class:`~snd_hf.splatting.lifters.Lifter` (e.g. MVSplat). A pixel whose surface an earlier
   view already lifted (a lifted centre projects into its 3x3 neighbourhood within ``5 %`` of its
   depth) is skipped, so every surface is covered about once. Diffuse colour = the pixel's colour.
1. **Appearance and geometry** (``appearance_steps``, one training view per step, Adam): the
   rendered colour ``diffuse + specular`` against the image,

       L₁ = mean_p |c(p) / α(p) - I(p)|₁ + λ_spec · mean_p |specular(p) / α(p)|₁

   over covered pixels (α >= ``coverage``). The L1 penalty on the specular colour leaves to it
   only what the diffuse colour cannot explain: the view-dependent part.
2. **Features** (``feature_steps``, geometry and colour frozen): the teacher's features of every
   training view, projected to k PCA channels (:func:`~snd_hf.fields.features.fit_feature_space`)
   and upsampled bilinearly to pixels, supervise the rendered ``f_ind + f_dep``:

       L₂ = mean_p ‖F(p) / α(p) - T(p)‖² / k
            + λ_dep · mean_p sqrt(‖F_dep(p) / α(p)‖² / k + ε²)          (group sparsity per pixel)
            + λ_decay · mean_g,b,c features_dep[g, b, c]²                (small coefficients)

   The group-sparsity term costs any view-dependent feature, so ``f_dep`` only takes residuals
   that no view-independent value can explain (a soft threshold: per pixel, residuals whose
   per-channel RMS is below about λ_dep / 2 stay in ``f_ind``), and ``f_ind`` becomes a robust
   consensus of the views instead of their mean. ``f_ind`` starts at the average teacher feature
   of the training views that see each Gaussian (visible = its depth within 3 % of the view's
   depth there), ``f_dep`` at 0. With ``disentangled=False`` the same stage fits ``f_ind`` alone
   with the first term: the single view-independent field of FiT3D / Feature-3DGS.

Deterministic given ``seed`` (it orders the training views; nothing else is random). Runs on CPU
(the torch renderer) and CUDA (gsplat) alike: the field's device decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from snd_hf.cameras import project_points, transform_points
from snd_hf.splatting.gaussians import Gaussians
from snd_hf.splatting.lifters import DepthLifter, Lifter
from snd_hf.splatting.render import Backend

from .features import as_feature_source, fit_feature_space, teacher_features, upsample
from .field import MIN_SH_DEGREE, FeatureField
from .scene import FieldScene

DUPLICATE_DEPTH_TOLERANCE = 0.05  # relative depth difference under which a pixel's surface counts as lifted
VISIBLE_DEPTH_TOLERANCE = 0.03  # relative depth difference under which a Gaussian counts as seen by a view


@dataclass
class FitConfig:
    """Everything that shapes a fitted field (recorded in the saved field).

    Attributes:
        seed: orders the training views.
        sh_degree: degree of the view-dependent spherical harmonics (>= 2).
        feature_dim: k, PCA channels the teacher's features are distilled in (at most C).
        init_views: training views lifted to Gaussians (evenly spaced).
        init_stride: the lifted views are subsampled by this factor (one Gaussian per stride² pixels).
        appearance_steps: stage-1 steps (one training view each).
        feature_steps: stage-2 steps (one training view each).
        lr_means: stage-1 Adam learning rate of the centres, scene units.
        lr_scales: of the log standard deviations.
        lr_rotations: of the quaternions.
        lr_opacities: of the opacity logits.
        lr_diffuse: of the diffuse colour.
        lr_specular: of the specular coefficients.
        lr_features: stage-2 learning rate of ``f_ind`` and ``f_dep``.
        specular_weight: λ_spec, L1 weight of the specular colour.
        dep_weight: λ_dep, group-sparsity weight of the rendered ``f_dep``.
        dep_decay: λ_decay, L2 weight of the ``f_dep`` coefficients.
        coverage: smallest rendered alpha of a pixel in the losses.
        short_side: model input short side when the teacher is a model.
        backend: renderer (``"auto"``: gsplat on CUDA, torch otherwise).
    """

    seed: int = 0
    sh_degree: int = 3
    feature_dim: int = 32
    init_views: int = 8
    init_stride: int = 2
    appearance_steps: int = 300
    feature_steps: int = 300
    lr_means: float = 2e-4
    lr_scales: float = 5e-3
    lr_rotations: float = 1e-3
    lr_opacities: float = 2e-2
    lr_diffuse: float = 1e-2
    lr_specular: float = 1e-2
    lr_features: float = 2e-2
    specular_weight: float = 0.2
    dep_weight: float = 0.1
    dep_decay: float = 1e-3
    coverage: float = 0.5
    short_side: int = 224
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("init_views", "init_stride", "feature_dim", "short_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"FitConfig.{name} must be a positive int, got {value!r}.")
        for name in ("appearance_steps", "feature_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"FitConfig.{name} must be an int >= 0, got {value!r}.")
        if not isinstance(self.sh_degree, int) or self.sh_degree < MIN_SH_DEGREE:
            raise ValueError(f"FitConfig.sh_degree must be an int >= {MIN_SH_DEGREE}, got {self.sh_degree!r}.")
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"FitConfig.coverage must be in (0, 1), got {self.coverage}.")


def fit_field(
    scene: FieldScene,
    feature_model,
    config: FitConfig | None = None,
    *,
    train_views: list[int] | None = None,
    lifter: Lifter | None = None,
    disentangled: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FeatureField:
    """Fit a feature field to a scene: initialisation, appearance, then features (module docstring).

    Args:
        scene: the scene's views (``depth`` needed unless ``lifter`` is given).
        feature_model: the 2D teacher: a model spec, ``SnDModel``, feature tensor [N, C, h, w] or
            callable (see :func:`~snd_hf.fields.features.as_feature_source`).
        config: hyperparameters (defaults: :class:`FitConfig`).
        train_views: positions of the views to fit (all when None); the others stay held out.
        lifter: lifts the initial views when the scene has no depth.
        disentangled: fit ``f_ind`` and ``f_dep`` (True) or a single view-independent field.
        device: where to fit ("cuda" renders with gsplat).
        progress: show progress bars.

    Returns:
        the fitted field, with the training cameras.
    """
    field = fit_appearance(scene, config, train_views=train_views, lifter=lifter, device=device, progress=progress)
    return fit_features(field, scene, feature_model, config, disentangled=disentangled, progress=progress)


def fit_appearance(
    scene: FieldScene,
    config: FitConfig | None = None,
    *,
    train_views: list[int] | None = None,
    lifter: Lifter | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FeatureField:
    """Stages 0 and 1: Gaussians lifted from the scene, fitted to its training images (no features).

    Raises:
        ValueError: the scene has no depth and no ``lifter`` is given, or ``train_views`` is invalid.
    """
    config = config or FitConfig()
    train = _train_views(scene, train_views)
    if lifter is None and scene.depth is None:
        where = f" ({scene.location})" if scene.location else ""
        raise ValueError(
            f"the scene{where} has no depth maps to place the Gaussians; pass a lifter (e.g. an MVSplatLifter) "
            "or use a scene with depth/"
        )
    init = [train[round(i * (len(train) - 1) / max(config.init_views - 1, 1))] for i in range(min(config.init_views, len(train)))]
    init = list(dict.fromkeys(init))
    gaussians, colors = initial_gaussians(scene.subset(init), config.init_stride, lifter)
    field = FeatureField.from_gaussians(
        gaussians,
        colors,
        sh_degree=config.sh_degree,
        cameras=scene.cameras[train],
        view_names=[scene.names[i] for i in train],
        info={"scene": scene.location, "train_views": train, "init_views": init, "fit": asdict(config)},
    ).to(device)
    images = scene.images[train].to(device)

    optimizer = torch.optim.Adam(
        [
            {"params": [field.means], "lr": config.lr_means},
            {"params": [field.log_scales], "lr": config.lr_scales},
            {"params": [field.rotations], "lr": config.lr_rotations},
            {"params": [field.opacity_logits], "lr": config.lr_opacities},
            {"params": [field.diffuse], "lr": config.lr_diffuse},
            {"params": [field.specular], "lr": config.lr_specular},
        ]
    )
    order = _view_order(len(train), config.appearance_steps, config.seed)
    bar = tqdm(order.tolist(), desc="field: appearance", disable=not progress, leave=False)
    for view in bar:
        out = field.render(field.cameras[view], color=True, features=False, backend=config.backend)
        covered = out.alpha[0, 0] >= config.coverage  # [H, W]
        alpha = out.alpha[0].clamp_min(config.coverage)
        color = (out.color("full")[0] / alpha)[:, covered]  # [3, P]
        specular = (out.specular[0] / alpha)[:, covered]
        loss = (color - images[view][:, covered]).abs().mean() + config.specular_weight * specular.abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return field.requires_grad_(False)


def fit_features(
    field: FeatureField,
    scene: FieldScene,
    feature_model,
    config: FitConfig | None = None,
    *,
    disentangled: bool = True,
    progress: bool = True,
) -> FeatureField:
    """Stage 2: distil the teacher's features of the field's training views into a copy of ``field``.

    The field's geometry and colour stay as they are, so several teachers (or the disentangled
    and the single-field variants) can be fitted to one appearance stage.

    Args:
        field: a field from :func:`fit_appearance` (or a fitted one: its features are replaced).
        scene: the scene the field was fitted to (its ``train_views`` are read from ``field.info``).
        feature_model: the 2D teacher (see :func:`fit_field`).
        disentangled: fit ``f_ind`` and ``f_dep``, or ``f_ind`` alone.
    """
    config = config or FitConfig()
    source = as_feature_source(feature_model, config.short_side)
    train = field.info.get("train_views")
    if train is None or field.cameras is None or len(train) != len(field.cameras) or max(train) >= len(scene):
        raise ValueError("`field` does not record the scene views it was fitted to; fit it with fit_appearance on this scene.")
    views = torch.tensor(train)
    device = field.means.device
    patches = teacher_features(source, scene.images[views], views)
    space = fit_feature_space(patches, config.feature_dim, source)
    targets = upsample(space.project(patches), scene.image_size).to(device)  # [V, k, H, W]

    field = field.with_feature_space(space, disentangled)
    field.info = {**field.info, "feature_fit": {**asdict(config), "disentangled": disentangled}}
    field.requires_grad_(False)
    with torch.no_grad():
        depth = scene.depth[views].to(device) if scene.depth is not None else None
        field.features_ind.copy_(_back_projected(field, targets, depth, config))
    parameters = [field.features_ind] + ([field.features_dep] if disentangled else [])
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=config.lr_features)

    order = _view_order(len(train), config.feature_steps, config.seed + 1)
    bar = tqdm(order.tolist(), desc="field: features", disable=not progress, leave=False)
    channels = field.feature_dim
    for view in bar:
        out = field.render(field.cameras[view], color=False, features=True, backend=config.backend)
        covered = out.alpha[0, 0] >= config.coverage
        alpha = out.alpha[0].clamp_min(config.coverage)
        rendered = (out.features("full")[0] / alpha)[:, covered]  # [k, P]
        loss = (rendered - targets[view][:, covered]).square().sum(0).mean() / channels
        if disentangled:
            dependent = (out.features_dep[0] / alpha)[:, covered]
            group = (dependent.square().sum(0) / channels + 1e-8).sqrt()
            loss = loss + config.dep_weight * group.mean() + config.dep_decay * field.features_dep.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return field.requires_grad_(False)


def initial_gaussians(scene: FieldScene, stride: int, lifter: Lifter | None) -> tuple[Gaussians, torch.Tensor]:
    """Lift the scene's views at ``1 / stride`` resolution, one Gaussian per new surface pixel.

    Args:
        scene: the views to lift (with ``depth`` unless ``lifter`` is given).
        stride: subsampling of every view.
        lifter: the lifter, or None for :class:`~snd_hf.splatting.lifters.DepthLifter` on the depth.

    Returns:
        Gaussians ``[1, G, ...]`` and the colour of each one's pixel [G, 3].
    """
    height, width = scene.image_size
    size = (max(1, height // stride), max(1, width // stride))
    cameras = scene.cameras
    images = F.interpolate(scene.images, size=size, mode="area")
    depth = None
    if lifter is None:
        # Nearest subsampling keeps depth edges sharp (an average would float points between surfaces).
        depth = F.interpolate(scene.depth[None], size=size, mode="nearest")
        lifter = DepthLifter(footprint="surface")
    with torch.no_grad():
        # Normalised intrinsics serve every resolution: only the image size changes.
        gaussians = lifter(images[None], replace(cameras.unsqueeze(0), image_size=size), depth)
    views = len(scene)
    means = gaussians.means[0].reshape(views, -1, 3)
    valid = (gaussians.opacities[0] > 0.01).reshape(views, -1)
    keep = torch.zeros_like(valid)
    for view in range(views):
        new = valid[view] & ~_already_lifted(means[view], means[keep], cameras[view], size)
        keep[view] = new
    keep = keep.flatten()
    colors = images.permute(0, 2, 3, 1).reshape(-1, 3)[keep]
    lifted = Gaussians(
        means=gaussians.means[:, keep], covariances=gaussians.covariances[:, keep], opacities=gaussians.opacities[:, keep]
    )
    return lifted, colors


def _already_lifted(points: torch.Tensor, lifted: torch.Tensor, camera, size: tuple[int, int]) -> torch.Tensor:
    """Pixels of one view whose surface point ``points`` [h·w, 3] is near an already lifted centre. [h·w]"""
    height, width = size
    if len(lifted) == 0:
        return torch.zeros(len(points), dtype=torch.bool, device=points.device)
    world_to_camera = torch.linalg.inv(camera.extrinsics[0])
    depth = transform_points(points, world_to_camera)[:, 2].reshape(height, width)
    xy, z = project_points(lifted, camera.extrinsics[0], camera.intrinsics[0])
    column, row = (xy[:, 0] * width).floor().long(), (xy[:, 1] * height).floor().long()
    inside = (z > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
    column, row, z = column[inside], row[inside], z[inside]
    close = (z - depth[row, column]).abs() <= DUPLICATE_DEPTH_TOLERANCE * depth[row, column]
    hit = torch.zeros(height, width, device=points.device)
    hit[row[close], column[close]] = 1.0
    # Lifted centres are a sampling of the surface, not one per pixel of this view: a 3x3 neighbourhood.
    return (F.max_pool2d(hit[None, None], 3, stride=1, padding=1)[0, 0] > 0).flatten()


def _back_projected(field: FeatureField, targets: torch.Tensor, depth: torch.Tensor | None, config: FitConfig) -> torch.Tensor:
    """Average target feature of the training views that see each Gaussian (0 if none does). [G, k]

    Args:
        targets: projected teacher features of the training views. [V, k, H, W]
        depth: the views' depth, or None to use the field's rendered depth. [V, H, W]
    """
    cameras = field.cameras.to(field.means.device, field.means.dtype)
    height, width = cameras.image_size
    total = targets.new_zeros(field.num_gaussians, targets.shape[1])
    count = targets.new_zeros(field.num_gaussians, 1)
    for view in range(len(cameras)):
        if depth is None:
            view_depth = field.render(cameras[view], color=False, features=False, backend=config.backend).depth[0, 0]
        else:
            view_depth = depth[view]
        xy, z = project_points(field.means, cameras.extrinsics[view], cameras.intrinsics[view])
        column, row = (xy[:, 0] * width).floor().long(), (xy[:, 1] * height).floor().long()
        inside = (z > 0) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        column, row = column.clamp(0, width - 1), row.clamp(0, height - 1)
        surface = view_depth[row, column]
        seen = inside & (surface > 0) & ((z - surface).abs() <= VISIBLE_DEPTH_TOLERANCE * surface)
        total += seen[:, None] * targets[view][:, row, column].T
        count += seen[:, None]
    return total / count.clamp_min(1.0)


def _train_views(scene: FieldScene, train_views: list[int] | None) -> list[int]:
    if train_views is None:
        return list(range(len(scene)))
    train = [int(view) for view in train_views]
    if not train or min(train) < 0 or max(train) >= len(scene) or len(set(train)) != len(train):
        raise ValueError(f"`train_views` must be distinct positions in [0, {len(scene)}), got {train_views!r}.")
    return train


def _view_order(views: int, steps: int, seed: int) -> torch.Tensor:
    """Training views for ``steps`` steps: seeded permutations of all views, one after another. [steps]"""
    generator = torch.Generator().manual_seed(seed)
    epochs = -(-steps // views) if views else 0
    order = [torch.randperm(views, generator=generator) for _ in range(epochs)]
    return torch.cat(order)[:steps] if order else torch.zeros(0, dtype=torch.long)


__all__ = ["FitConfig", "fit_appearance", "fit_features", "fit_field", "initial_gaussians"]
