"""Dense feature extraction speed: SnDModel vs transformers' Dinov2Model with the same ViT-S/14 (or B/14) weights.

    python benchmarks/bench_extract.py                  # CPU, float32 + bfloat16, 224 and 448 px, batch 8
    python benchmarks/bench_extract.py --device cuda --batch-size 32 --rounds 20
    python benchmarks/bench_extract.py --device cuda --batch-size 32 --dtypes bfloat16 --variants small base --json extract.json

Both models get identical weights (random SnD ViT-S or ViT-B, converted: our fused qkv split into
Dinov2Model's q/k/v) and identical inputs, and are timed alternately in the same run (warm-up, then
`--rounds` rounds of one forward each, median). Prints images/s and the ratio SnD / Dinov2; the goal
is >= 0.95. Both use their default SDPA attention, under torch.inference_mode.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from figures import write_figures
from tqdm import tqdm
from transformers import Dinov2Config, Dinov2Model

from snd_hf import SnDConfig, SnDModel


def dinov2_twin(model: SnDModel) -> Dinov2Model:
    """A transformers Dinov2Model holding `model`'s weights (qkv split into q_proj / k_proj / v_proj)."""
    config = model.config
    twin = Dinov2Model(
        Dinov2Config(
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            mlp_ratio=config.mlp_ratio,
            image_size=config.image_size,
            patch_size=config.patch_size,
            layerscale_value=config.layerscale_value,
            layer_norm_eps=config.layer_norm_eps,
        )
    )
    state_dict = {}
    for key, tensor in model.state_dict().items():
        if ".attention.qkv." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                state_dict[key.replace("qkv", name)] = part
        else:
            state_dict[key.replace(".attention.proj.", ".attention.o_proj.")] = tensor
    twin.load_state_dict(state_dict, strict=True)
    return twin.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: torch.nn.Module, pixel_values: torch.Tensor) -> float:
    synchronize(pixel_values.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(pixel_values)
    synchronize(pixel_values.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["small"], choices=["small", "base"], help="ViT-S/14 and/or ViT-B/14")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}", flush=True)
    print(f"{'variant':<8} {'dtype':<9} {'size':>5} {'SnD img/s':>10} {'Dinov2 img/s':>13} {'SnD/Dinov2':>11}", flush=True)
    rows, errors = [], {}
    for variant in args.variants:
        torch.manual_seed(0)
        snd = SnDModel(SnDConfig.from_variant(variant)).eval()
        dinov2 = dinov2_twin(snd)
        with torch.inference_mode():
            check = torch.randn(1, 3, 518, 518)  # the two agree where their position interpolation does (518 px)
            errors[variant] = (snd(check).last_hidden_state - dinov2(check).last_hidden_state).abs().max().item()
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            models = {"snd": snd.to(device=device, dtype=dtype), "dinov2": dinov2.to(device=device, dtype=dtype)}
            for size in args.sizes:
                pixel_values = torch.randn(args.batch_size, 3, size, size, device=device, dtype=dtype)
                times = {name: [] for name in models}
                for round_index in tqdm(range(args.warmup + args.rounds), desc=f"{variant} {dtype_name} {size}px", leave=False):
                    order = list(models) if round_index % 2 == 0 else list(models)[::-1]  # alternate who goes first
                    for name in order:
                        elapsed = time_forward(models[name], pixel_values)
                        if round_index >= args.warmup:
                            times[name].append(elapsed)
                rate = {name: args.batch_size / statistics.median(values) for name, values in times.items()}
                rows.append({"variant": variant, "dtype": dtype_name, "size": size, "snd_images_per_s": rate["snd"],
                             "dinov2_images_per_s": rate["dinov2"], "ratio": rate["snd"] / rate["dinov2"]})  # fmt: skip
                print(f"{variant:<8} {dtype_name:<9} {size:>5} {rate['snd']:>10.2f} {rate['dinov2']:>13.2f} {rows[-1]['ratio']:>11.3f}", flush=True)
    worst = min(row["ratio"] for row in rows)
    print(f"max |SnD - Dinov2| at 518 px (float32, CPU): {', '.join(f'{v} {e:.1e}' for v, e in errors.items())}")
    print(f"goal: SnD/Dinov2 >= 0.95; worst {worst:.3f}")
    if args.json is not None:
        write_figures(args.json, {"device": str(device), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                                  "rounds": args.rounds, "attention": "sdpa", "max_abs_difference_518px": errors,
                                  "rows": rows, "worst_ratio": worst})  # fmt: skip


if __name__ == "__main__":
    main()
