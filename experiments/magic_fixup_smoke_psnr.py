"""Masked PSNR of a Magic Fixup checkpoint vs the raw coarse edit on the toyworld coarse-edit benchmark split.

    python experiments/magic_fixup_smoke_psnr.py ckpt=<path> [n=32] [steps=50[,3,...]] [seed=0] [batch_size=8]
        [start_strength=1.0] [eta=1.0] [ema=true] [samples=1]

Masked PSNR: PSNR over the pixels where the batch's `mask` is 1 (the region the edit changed, holes included),
images in [0, 1], per sample, then averaged. Prints the raw coarse edit (holes as given), the coarse edit with its
holes inpainted by OpenCV (what the model is conditioned on), the VAE round trip of that (what a model that only
copies its input would score: the VAE's error adds to the coarse edit's), the VAE round trip of the target (the
ceiling of any latent-diffusion output with this VAE) and the fix-up result.

The same comparison in latent space, where the VAE's error does not enter: the masked MSE between the target's
latent and (a) the coarse edit's latent, the model's condition, (b) the model's final latent. (b) < (a) means the
model moves the coarse edit towards the target; a better VAE turns only such a gain into pixels. `steps` may be a
list: one row per DDIM step count (the paper: 50).

`samples=K` (K >= 2) draws K samples per input (seeds differ) and splits their latent error exactly into the error
of their mean and their spread around it (single-sample MSE = mean's MSE + spread). From the two it estimates the
error of the model's posterior mean (K -> infinity), which is what the model has learnt about the fix-up, and it
prints the masked PSNR of the average of the K decoded images, a mean-seeking readout that PSNR rewards.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-sample PSNR (dB) over mask==1 pixels; pred/target (N,3,H,W) in [-1,1], mask (N,1,H,W)."""
    p = ((pred.float() + 1) / 2).clamp(0, 1)
    t = ((target.float() + 1) / 2).clamp(0, 1)
    m = (mask > 0.5).float().expand_as(p)
    n = m.flatten(1).sum(1)
    if (n == 0).any():
        raise ValueError("masked_psnr: a sample has an empty mask")
    mse = ((p - t) ** 2 * m).flatten(1).sum(1) / n
    return 10 * torch.log10(1.0 / (mse + eps))


@torch.no_grad()
def masked_latent_mse(z: torch.Tensor, z_target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE over latent cells that hold any mask==1 pixel; z (N,C,h,w), mask (N,1,H,W)."""
    m = F.adaptive_max_pool2d((mask > 0.5).float(), z.shape[-2:])
    return (((z.float() - z_target.float()) ** 2).mean(1, keepdim=True) * m).flatten(1).sum(1) / m.flatten(1).sum(1)


@torch.no_grad()
def evaluate(model, dataset, *, batch_size: int = 8, num_steps: int | None = None, seed: int = 0,
             start_strength: float | None = None, eta: float | None = None, samples: int = 1) -> dict[str, float]:
    """Mean masked PSNR of the raw coarse edit, the hole-filled coarse edit and the model's result, and the
    masked latent MSE of the coarse latent and the model's latent against the target's. With `samples` K >= 2,
    the per-sample scores are means over K samples, and `latent_mean` (MSE of the K samples' mean latent),
    `latent_spread` (mean MSE of a sample to that mean; latent_fixup = latent_mean + latent_spread) and
    `fixup_avg` (PSNR of the mean of the K decoded images) are added."""
    from refedit.batch import collate_edit, to_device

    if samples < 1:
        raise ValueError(f"evaluate: samples={samples} must be >= 1")
    keys = ["coarse", "coarse_filled", "vae_coarse", "vae_target", "fixup", "latent_coarse", "latent_fixup"]
    if samples > 1:
        keys += ["latent_mean", "latent_spread", "fixup_avg"]
    scores: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start in range(0, len(dataset), batch_size):
        batch: Mapping[str, Any] = to_device(collate_edit([dataset[i] for i in range(start, min(start + batch_size,
                                                                                              len(dataset)))]),
                                              model.device)
        mask = batch["mask"]
        zs, outs = [], []
        for k in range(samples):
            g = torch.Generator(device=model.device).manual_seed(seed + start + 100_003 * k)
            zs.append(model.sample(batch, num_steps=num_steps, strength=start_strength, eta=eta, generator=g,
                                   output_type="latent"))
            outs.append(model.images_from_latents(zs[-1], batch))
        filled = model.filled_coarse(batch)
        z_target = model.codec.encode(batch["target"], sample=False)
        z_coarse = model.coarse_latents(batch)
        for key, img in (("coarse", batch["coarse"]), ("coarse_filled", filled),
                         ("vae_coarse", model.codec.decode(z_coarse)), ("vae_target", model.codec.decode(z_target))):
            scores[key].append(masked_psnr(img, batch["target"], mask).cpu())
        scores["fixup"].append(torch.stack([masked_psnr(o, batch["target"], mask) for o in outs]).mean(0).cpu())
        scores["latent_coarse"].append(masked_latent_mse(z_coarse, z_target, mask).cpu())
        scores["latent_fixup"].append(torch.stack([masked_latent_mse(z, z_target, mask) for z in zs]).mean(0).cpu())
        if samples > 1:
            z_mean = torch.stack(zs).mean(0)
            scores["latent_mean"].append(masked_latent_mse(z_mean, z_target, mask).cpu())
            scores["latent_spread"].append(torch.stack([masked_latent_mse(z, z_mean, mask) for z in zs]).mean(0).cpu())
            scores["fixup_avg"].append(masked_psnr(torch.stack(outs).mean(0), batch["target"], mask).cpu())
    return {k: torch.cat(v).mean().item() for k, v in scores.items()}


def _change(mse: float, coarse_mse: float) -> str:
    """How a latent MSE compares with the coarse latent's, in words a reader cannot misread."""
    pct = 100 * (mse / coarse_mse - 1)
    return f"removes {-pct:.1f}% of the coarse latent's error" if pct < 0 else f"adds {pct:.1f}% to the coarse latent's error"


def main(argv: list[str] | None = None) -> int:
    from refedit.data.toyworld import ToyWorldDataset
    from refedit.methods import load_method
    from refedit.utils.cli import UsageError, parse_kv

    try:
        args = parse_kv(sys.argv[1:] if argv is None else argv, required=("ckpt",),
                        optional=("n", "steps", "seed", "batch_size", "start_strength", "eta", "ema", "samples"),
                        prog="magic_fixup_smoke_psnr")
    except UsageError as e:
        print(f"magic_fixup_smoke_psnr: error: {e}", file=sys.stderr)
        return 2
    model = load_method(args["ckpt"], use_ema=args.get("ema", "true").lower() in ("1", "true", "yes"))
    if model.name != "magic_fixup":
        print(f"magic_fixup_smoke_psnr: error: {args['ckpt']} is a '{model.name}' checkpoint", file=sys.stderr)
        return 2
    size = int(model.backbone_cfg["resolution"])
    ds = ToyWorldDataset("coarse_edit", split="benchmark", size=size, length=int(args.get("n", 32)))
    try:
        step_list = [int(v) for v in args["steps"].split(",")] if "steps" in args else [None]
    except ValueError:
        print(f"magic_fixup_smoke_psnr: error: steps={args['steps']!r} is not an integer or a comma list of them",
              file=sys.stderr)
        return 2
    try:
        samples = int(args.get("samples", 1))
        if samples < 1:
            raise ValueError
    except ValueError:
        print(f"magic_fixup_smoke_psnr: error: samples={args['samples']!r} is not an integer >= 1", file=sys.stderr)
        return 2
    strength = float(args["start_strength"]) if "start_strength" in args else None
    eta = float(args["eta"]) if "eta" in args else None
    s = model.sampling_cfg
    print(f"toyworld coarse_edit benchmark, {len(ds)} samples, start_strength "
          f"{strength if strength is not None else s['start_strength']}, eta {eta if eta is not None else s['eta']}")
    for steps in step_list:
        res = evaluate(model, ds, batch_size=int(args.get("batch_size", 8)), num_steps=steps,
                       seed=int(args.get("seed", 0)), start_strength=strength, eta=eta, samples=samples)
        if steps == step_list[0]:
            print(f"masked PSNR (dB, mask==1, [0,1]): raw coarse edit {res['coarse']:.2f} | coarse, holes inpainted "
                  f"{res['coarse_filled']:.2f} | VAE round trip of that (a model that only copies its input) "
                  f"{res['vae_coarse']:.2f} | VAE round trip of the target (ceiling) {res['vae_target']:.2f}")
            print(f"masked latent MSE to the target's latent: coarse edit (the condition) {res['latent_coarse']:.4f}")
        steps_label = f"magic_fixup, {steps or s['num_steps']} DDIM steps"
        print(f"{steps_label}: masked PSNR {res['fixup']:.2f} dB | masked latent MSE {res['latent_fixup']:.4f} "
              f"({_change(res['latent_fixup'], res['latent_coarse'])})")
        if samples > 1:
            # E[mean's MSE] = bias^2 + var/K and E[spread] = var (K-1)/K: the error of the model's posterior mean
            posterior_mean = res["latent_mean"] - res["latent_spread"] / (samples - 1)
            print(f"{steps_label}, {samples} samples per input: their mean latent {res['latent_mean']:.4f} + their "
                  f"spread around it {res['latent_spread']:.4f} | the model's posterior mean, estimated "
                  f"{posterior_mean:.4f} ({_change(posterior_mean, res['latent_coarse'])}) | masked PSNR of the "
                  f"averaged images {res['fixup_avg']:.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
