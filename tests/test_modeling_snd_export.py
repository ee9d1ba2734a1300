"""SnDModel in graph form: torch.export / torch.jit.trace / ONNX with dynamic H and W, against eager.

The position-embedding resize is the one size-dependent computation: eager calls torch's bicubic
kernel with the original's scale factor (bit-identical), symbolic sizes use a tensor-op twin of it.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from snd_hf import SnDConfig, SnDModel
from snd_hf.modeling_snd import _bicubic_resize_traceable

# (grid, resized patch grids): the published 37x37 grid, small even and odd grids, one-patch and
# wider-than-the-grid outputs, and the grid itself in one or both dimensions.
RESIZES = [
    (37, [(16, 16), (20, 30), (9, 13), (38, 36), (1, 1), (2, 3), (100, 7), (37, 38), (5, 37)]),
    (5, [(4, 4), (7, 3), (1, 9), (5, 6), (11, 11)]),
    (4, [(3, 5), (6, 6), (4, 9)]),
]


class FeatureMap(torch.nn.Module):
    """The dense features only: the graph export sees one tensor in, one out."""

    def __init__(self, model: SnDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).feature_map


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
    """The torch.hub-layout fixture tiny_a (37x37 grid, 3 layers) and its expected outputs."""
    folder = fixtures_dir / "dinov2"
    meta = json.loads((folder / "fixtures.json").read_text())["tiny_a"]
    model = SnDModel.from_original_checkpoint(folder / "tiny_a.pth", num_attention_heads=meta["arch"]["num_heads"])
    return model.eval(), load_file(folder / "tiny_a_expected.safetensors")


def _kernel_resize(grid_map: torch.Tensor, height: int, width: int, offset: float) -> torch.Tensor:
    """The original's call (facebookresearch/dinov2 `interpolate_pos_encoding`)."""
    grid = grid_map.shape[-1]
    if offset:
        scale = ((height + offset) / grid, (width + offset) / grid)
        return F.interpolate(grid_map, scale_factor=scale, mode="bicubic", antialias=False)
    return F.interpolate(grid_map, size=(height, width), mode="bicubic", antialias=False)


@pytest.mark.parametrize("offset", [0.1, 0.0])
@pytest.mark.parametrize(("grid", "sizes"), RESIZES, ids=[f"grid{grid}" for grid, _ in RESIZES])
def test_eager_resize_is_the_original_kernel_bit_for_bit(grid, sizes, offset):
    config = SnDConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, image_size=14 * grid, interpolate_offset=offset)
    embeddings = SnDModel(config).embeddings
    with torch.no_grad():
        embeddings.position_embeddings.normal_()
    patch_grid = embeddings.position_embeddings[:, 1:].reshape(1, grid, grid, 8).permute(0, 3, 1, 2)
    for height, width in sizes:
        tokens = torch.zeros(1, 1 + height * width, 8)
        resized = embeddings.interpolate_pos_encoding(tokens, 14 * height, 14 * width)
        expected = _kernel_resize(patch_grid.detach(), height, width, offset)
        assert torch.equal(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8)), (height, width)
    square = embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + grid * grid, 8), 14 * grid, 14 * grid)
    assert torch.equal(square, embeddings.position_embeddings)  # the training size: no resize at all


@pytest.mark.parametrize("offset", [0.1, 0.0, 0.45])
@pytest.mark.parametrize(("grid", "sizes"), RESIZES, ids=[f"grid{grid}" for grid, _ in RESIZES])
def test_traceable_resize_equals_the_kernel_to_float32_rounding(grid, sizes, offset):
    """Same sampling grid, taps and weights; only the rounding of fused multiply-adds may differ."""
    grid_map = torch.randn(1, 16, grid, grid, generator=torch.Generator().manual_seed(grid))
    for height, width in sizes:
        expected = _kernel_resize(grid_map, height, width, offset)
        torch.testing.assert_close(_bicubic_resize_traceable(grid_map, height, width, offset), expected, atol=2e-5, rtol=1e-5)
    assert torch.equal(_bicubic_resize_traceable(grid_map, grid, grid, offset), grid_map)  # weights exactly (0, 1, 0, 0)


def _dynamic_export(model: SnDModel, height: int, width: int) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=64)
    # At least 2 patches per side: export specialises size-1 dimensions (broadcasting).
    rows, columns = torch.export.Dim("rows", min=2, max=128), torch.export.Dim("columns", min=2, max=128)
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))  # 2: a size-1 dim is frozen
    dynamic_shapes = {"pixel_values": {0: batch, 2: 14 * rows, 3: 14 * columns}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' SDPA dispatch warns about symbolic shapes
        return torch.export.export(FeatureMap(model), (example,), dynamic_shapes=dynamic_shapes)


def test_exported_program_gives_the_eager_features_at_other_sizes(fixture_model):
    model, expected = fixture_model
    exported = _dynamic_export(model, 224, 224).module()
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in [(1, 280, 420), (3, 126, 182), (2, 518, 518), (1, 28, 28), (1, 98, 518)]:
        pixel_values = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            eager = model(pixel_values).feature_map
        assert (exported(pixel_values) - eager).abs().max() <= 1e-5, (height, width)
    for size in ("126x182", "518x518"):  # and the original DINOv2's outputs
        pixel_values = expected[f"{size}/pixel_values"]
        reference = expected[f"{size}/layer{model.config.num_hidden_layers - 1}_patch_map"]
        assert (exported(pixel_values) - reference).abs().max() <= 1e-4, size


def test_jit_trace_generalises_to_other_sizes(fixture_model):
    model, _ = fixture_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the input checks, evaluated at trace time
        traced = torch.jit.trace(FeatureMap(model), torch.randn(1, 3, 224, 224), check_trace=False)
    for height, width in [(280, 420), (518, 518), (42, 70)]:
        pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            assert (traced(pixel_values) - model(pixel_values).feature_map).abs().max() <= 1e-5, (height, width)


def test_antialiased_resize_without_offset_exports_with_the_kernel():
    """DINOv2-with-registers style (antialias, offset 0): `size=` is symbolic-friendly, the kernel is kept."""
    config = SnDConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=70, interpolate_offset=0.0, interpolate_antialias=True
    )
    model = SnDModel(config).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_()
    exported = _dynamic_export(model, 42, 56).module()
    for height, width in [(98, 28), (70, 70), (140, 42)]:
        pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            assert torch.equal(exported(pixel_values), model(pixel_values).feature_map), (height, width)


def test_antialiased_resize_with_an_offset_refuses_dynamic_export():
    config = SnDConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, image_size=56, interpolate_antialias=True)
    with pytest.raises(Exception, match="interpolate_antialias=True with a non-zero interpolate_offset"):
        _dynamic_export(SnDModel(config).eval(), 42, 42)


def test_onnx_export_with_dynamic_sizes_runs_like_eager(tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs the 'onnx' extra (pip install -e '.[onnx]')")
    onnxruntime = pytest.importorskip("onnxruntime", reason="checking the ONNX graph needs the 'onnx' extra")
    torch.manual_seed(0)
    model = SnDModel(SnDConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=518)).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_()
    rows, columns = torch.export.Dim("rows", min=2, max=64), torch.export.Dim("columns", min=2, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            FeatureMap(model), (torch.randn(1, 3, 224, 224),), dynamic_shapes={"pixel_values": {2: 14 * rows, 3: 14 * columns}},
            dynamo=True, verbose=False,
        )
    program.save(tmp_path / "snd.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "snd.onnx"))
    for height, width in [(280, 420), (518, 518)]:
        pixel_values = torch.randn(1, 3, height, width)
        (features,) = session.run(None, {session.get_inputs()[0].name: pixel_values.numpy()})
        with torch.no_grad():
            assert abs(features - model(pixel_values).feature_map.numpy()).max() <= 1e-5, (height, width)
