"""The one engine every method is assembled on.

`LatentEditModule` owns the frozen latent codec, the noise schedule, the training step, DDIM sampling with
classifier-free guidance, optimisers and image logging. A method only says which batch keys it needs, which
parameters it trains, how it turns a batch into conditions (`conditions`) and how its network(s) denoise
(`denoise`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from hydra.utils import instantiate

from refedit.backbone.loading import load_component
from refedit.backbone.sampler import ddim_sample, sdedit_timesteps
from refedit.backbone.schedule import NoiseSchedule
from refedit.backbone.vae import LatentCodec
from refedit.batch import require_keys

log = logging.getLogger(__name__)

Cond = dict[str, Any]


class NonFiniteLossError(FloatingPointError):
    pass


class LatentEditModule(L.LightningModule):
    #: config name of the method (conf/method/<name>.yaml)
    name: str = "base"
    #: batch keys the training step needs / the sampler needs
    train_keys: tuple[str, ...] = ("target",)
    sample_keys: tuple[str, ...] = ()
    #: what to tell a user whose batch lacks a key
    data_hint: str = ""
    #: submodule attribute names that are frozen and reloaded from the backbone (never stored in checkpoints)
    frozen_modules: tuple[str, ...] = ("codec",)
    #: `refedit.edit` hands over the input files at their own size (True: `sample` fits them itself, e.g.
    #: MimicBrush pads to a square and crops back) instead of resizing them to `backbone.resolution`
    edit_native_size: bool = False

    def __init__(self, backbone: Mapping[str, Any], optimizer: Mapping[str, Any] | None = None,
                 lr_scheduler: Mapping[str, Any] | None = None, sampling: Mapping[str, Any] | None = None,
                 cond_drop_prob: float = 0.1, skip_nonfinite: bool = False, meta: bool = False,
                 name: str | None = None, task: str | None = None, smoke: Mapping[str, Any] | None = None,
                 **method_kwargs: Any):
        super().__init__()
        self.save_hyperparameters(logger=False)  # refedit.train logs the composed config once
        self.task = task  # the toyworld task it trains on (data.task follows it)
        # `smoke` is this method's budget under experiment=smoke (read by that preset, unused here)
        self.backbone_cfg = dict(backbone)
        self.meta = meta
        self.optimizer_cfg = dict(optimizer or {"_target_": "torch.optim.AdamW", "lr": 1e-4})
        self.lr_scheduler_cfg = dict(lr_scheduler) if lr_scheduler else None
        self.sampling_cfg = {"num_steps": 50, "guidance_scale": 1.0, "eta": 0.0, "strength": 1.0,
                             "paste_back": False, "feather_px": 3, **dict(sampling or {})}
        self.cond_drop_prob = float(cond_drop_prob)
        self.skip_nonfinite = skip_nonfinite
        self.nonfinite_steps = 0
        self.schedule = NoiseSchedule(self.backbone_cfg["scheduler"])
        self.codec = LatentCodec(load_component(AutoencoderKL, self.backbone_cfg["vae"], name="vae",
                                                config=self.backbone_cfg["vae"].get("config"), meta=meta))
        self.build(**method_kwargs)
        self._freeze()
        self.strict_loading = False  # frozen parts are not in checkpoints; load_state_dict checks the rest

    # ----------------------------------------------------------------- what a method provides
    def build(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The explicit list the optimiser (and EMA) work on; everything else is frozen."""
        raise NotImplementedError

    def conditions(self, batch: Mapping[str, Any], *, train: bool,
                   generator: torch.Generator | None = None) -> tuple[Cond, Cond | None]:
        """(conditional, unconditional) inputs of `denoise` for this batch. In training, condition dropout is
        already applied to the conditional dict and the unconditional one may be None."""
        raise NotImplementedError

    def denoise(self, z: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def data_transform(self):
        """A picklable per-sample function the data workers run before batching (None: nothing), for input
        preparation that would otherwise stall the training step (`refedit.data.datamodule.build_datamodule`)."""
        return None

    def prepare_edit_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What `refedit.edit` (and the demo) do to a batch loaded from files before `sample`: nothing here; a
        method overrides it for input conventions of its own (PbE: the pipeline's CLIP preprocessing of the
        exemplar file; Magic Fixup: holes from black pixels)."""
        return batch

    def export_diffusers(self, out_dir: str | os.PathLike) -> None:
        """Write the method's diffusers pipeline directory (`refedit.export`). Methods without a diffusers
        pipeline keep this default."""
        raise NotImplementedError(f"method '{self.name}' has no diffusers export (refedit.export format=diffusers "
                                  f"supports the methods that override LatentEditModule.export_diffusers)")

    # ------------------------------------------------------------------ shared engine
    def _freeze(self) -> None:
        self.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def frozen_submodules(self) -> list[torch.nn.Module]:
        """The modules named by `frozen_modules` (a name that is unset or not a module, e.g. no depth
        estimator, is skipped)."""
        out = []
        for name in self.frozen_modules:
            try:
                out.append(self.get_submodule(name))
            except AttributeError:
                continue
        return out

    def train(self, mode: bool = True):
        """Lightning switches the whole model to train mode every epoch: the frozen parts (`frozen_modules`) stay
        in eval mode whatever `mode` says, so their dropout and normalisation never change."""
        super().train(mode)
        for m in self.frozen_submodules():
            m.eval()
        return self

    def check_batch(self, batch: Mapping[str, Any], keys: Sequence[str]) -> None:
        require_keys(batch, keys, method=self.name, hint=self.data_hint)

    def target_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.codec.encode(batch["target"])

    def latent_shape(self, batch: Mapping[str, Any]) -> tuple[int, ...]:
        ref = batch.get("source", batch.get("target"))
        d = self.codec.downsample
        return (ref.shape[0], self.codec.latent_channels, ref.shape[-2] // d, ref.shape[-1] // d)

    def init_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """The clean latent an SDEdit-style start (strength < 1) is noised from."""
        return self.codec.encode(batch["source"], generator=generator)

    def diffusion_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        z0 = self.target_latents(batch)
        noise = torch.randn_like(z0)
        t = self.schedule.sample_timesteps(z0.shape[0], z0.device)
        zt = self.schedule.add_noise(z0, noise, t)
        cond, _ = self.conditions(batch, train=True)
        pred = self.denoise(zt, t, cond)
        return F.mse_loss(pred.float(), self.schedule.target(z0, noise, t).float())

    def training_step(self, batch: Mapping[str, Any], batch_idx: int):
        self.check_batch(batch, self.train_keys)
        loss = self.diffusion_loss(batch)
        if not torch.isfinite(loss):
            ids = [m.get("id", "?") for m in batch.get("meta", [])] if isinstance(batch.get("meta"), list) else []
            if self.skip_nonfinite:
                self.nonfinite_steps += 1
                self.log("train/nonfinite_steps", float(self.nonfinite_steps))
                log.warning("non-finite loss at step %d (samples %s): step skipped", self.global_step, ids)
                return None
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at global step {self.global_step}, "
                                     f"batch {batch_idx}, sample ids {ids}; set trainer.skip_nonfinite=true "
                                     f"to skip such steps instead")
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[self.train_keys[0]].shape[0])
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int):
        self.check_batch(batch, self.train_keys)
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        z0 = self.target_latents(batch)
        noise = torch.randn(z0.shape, generator=g, device=z0.device)
        t = torch.randint(0, self.schedule.num_train_timesteps, (z0.shape[0],), generator=g, device=z0.device)
        cond, _ = self.conditions(batch, train=False)
        pred = self.denoise(self.schedule.add_noise(z0, noise, t), t, cond)
        loss = F.mse_loss(pred.float(), self.schedule.target(z0, noise, t).float())
        self.log("val/loss", loss, prog_bar=True, batch_size=z0.shape[0], sync_dist=True)
        return loss

    @torch.no_grad()
    def sample(self, batch: Mapping[str, Any], *, num_steps: int | None = None, guidance_scale: float | None = None,
               eta: float | None = None, strength: float | None = None, paste_back: bool | None = None,
               generator: torch.Generator | None = None, progress: bool = False,
               output_type: str = "image") -> torch.Tensor:
        """Edit a batch; returns images in [-1, 1] (N,3,H,W) or clips (N,F,3,H,W) for video methods, or with
        ``output_type="latent"`` the final latents before decoding (as diffusers pipelines do)."""
        if output_type not in ("image", "latent"):
            raise ValueError(f"sample: output_type must be 'image' or 'latent', got {output_type!r}")
        s = self.sampling_cfg
        num_steps = int(num_steps or s["num_steps"])
        guidance_scale = float(s["guidance_scale"] if guidance_scale is None else guidance_scale)
        eta = float(s["eta"] if eta is None else eta)
        strength = float(s["strength"] if strength is None else strength)
        self.check_batch(batch, self.sample_keys)
        scheduler = self.schedule.ddim()
        timesteps = sdedit_timesteps(scheduler, num_steps, strength)
        # the generator's order is diffusers': img2img / inpaint pipelines encode the start image (a posterior
        # sample) before they draw the noise; at strength 1 the noise is the first draw
        if strength < 1.0:
            z0 = self.init_latents(batch, generator)
            noise = torch.randn(self.latent_shape(batch), generator=generator, device=self.device)
            z = scheduler.add_noise(z0, noise, timesteps[:1])
        else:
            noise = torch.randn(self.latent_shape(batch), generator=generator, device=self.device)
            z = noise * scheduler.init_noise_sigma
        cond, uncond = self.conditions(batch, train=False, generator=generator)
        z = self.prepare_start(z, batch, scheduler, timesteps, generator)
        z = ddim_sample(self.denoise, z, scheduler, timesteps, cond, uncond, guidance_scale, eta, generator,
                        progress)
        return z if output_type == "latent" else self.images_from_latents(z, batch, paste_back)

    def images_from_latents(self, z: torch.Tensor, batch: Mapping[str, Any],
                            paste_back: bool | None = None) -> torch.Tensor:
        """What `sample` returns for its final latents `z`: decoded, pasted back if asked, clamped to [-1, 1]."""
        out = self.decode(z, batch)
        if bool(self.sampling_cfg["paste_back"] if paste_back is None else paste_back):
            out = paste_back_feathered(out, batch["source"], batch["mask"], self.sampling_cfg["feather_px"])
        return out.clamp(-1, 1)

    def prepare_start(self, z: torch.Tensor, batch: Mapping[str, Any], scheduler, timesteps,
                      generator: torch.Generator | None) -> torch.Tensor:
        """Hook for methods whose first latent is not plain noise (e.g. Magic Fixup's noised coarse edit)."""
        return z

    def decode(self, z: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.codec.decode(z)

    def condition_image(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The image shown as 'condition' in logged grids (reference, coarse edit, subject...)."""
        for k in ("reference", "coarse", "subject"):
            if k in batch:
                return batch[k]
        return None

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], n: int = 4, num_steps: int = 20,
                   seed: int = 0) -> dict[str, torch.Tensor]:
        """{'grid': (3, rows*H, 5*W)} in [0,1]: source | mask | condition | result | target. The caller decides
        when to log it (see callbacks.ImageLogger)."""
        sub = {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
        g = torch.Generator(device=self.device).manual_seed(seed)
        result = self.sample(sub, num_steps=num_steps, generator=g)
        from refedit.utils.images import edit_grid

        return edit_grid(sub, result, self.condition_image(sub))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        opt = instantiate(self.optimizer_cfg, params=params, _convert_="all")
        if not self.lr_scheduler_cfg:
            return opt
        cfg = dict(self.lr_scheduler_cfg)
        interval = cfg.pop("interval", "step")
        sched = instantiate(cfg, optimizer=opt, _convert_="all")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    # ------------------------------------------------------------------ checkpoints
    def _frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{m}." for m in self.frozen_modules)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = self._frozen_prefixes()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}
        checkpoint["refedit_method"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["refedit_codec"] = self.codec_fingerprint()

    def codec_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint was trained against: the frozen VAE is not stored, so a rebuilt or different VAE
        must be detected at load time instead of decoding silently with the wrong latents."""
        w = next(iter(self.codec.vae.parameters()))
        return {"scaling_factor": self.codec.scaling_factor,
                "first_weight_sum": None if w.device.type == "meta" else float(w.detach().double().sum())}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        prefixes = self._frozen_prefixes()
        missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not match method '{self.name}': missing {missing[:8]}"
                               f"{'...' if len(missing) > 8 else ''}, unexpected {result.unexpected_keys[:8]}")
        return result

    def on_fit_start(self) -> None:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters())
        for lg in self.loggers:
            lg.log_hyperparams({"params/total": total, "params/trainable": trainable})
        log.info("%s: %.2fM parameters, %.2fM trainable", self.name, total / 1e6, trainable / 1e6)

    # ------------------------------------------------------------------ helpers for methods
    def drop_mask(self, n: int, p: float | None = None) -> torch.Tensor:
        """Per-sample Bernoulli(p) mask (True = drop the condition) for classifier-free guidance training."""
        p = self.cond_drop_prob if p is None else p
        return torch.rand(n, device=self.device) < p


def paste_back_feathered(result: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                         feather_px: int = 3) -> torch.Tensor:
    """Blend the result into the source with a weight that is 0 outside the mask (source pixels kept exactly)
    and rises to 1 over `feather_px` pixels inside it."""
    import kornia

    m = (mask > 0.5).float()
    if feather_px <= 0:
        w = m
    else:
        dist = kornia.contrib.distance_transform(1 - m)  # distance of each edit pixel to the nearest kept pixel
        w = (dist / float(feather_px)).clamp(0, 1) * m
    return torch.where(m > 0, w * result + (1 - w) * source, source)


def load_method(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                use_ema: bool = True) -> LatentEditModule:
    """Rebuild a method from a refedit checkpoint (its class and config are stored in it). The file is read
    weights-only, and the class it names must be a LatentEditModule under refedit.methods: a shared file can
    neither unpickle code nor name another callable to run on its stored arguments."""
    from refedit.utils.checkpoint import CheckpointError, read_checkpoint

    ckpt = read_checkpoint(path, map_location=map_location)
    target = ckpt.get("refedit_method")
    if not target:
        raise CheckpointError(f"checkpoint {path} is not a refedit checkpoint (no 'refedit_method' entry)")
    mod, _, cls_name = str(target).rpartition(".")
    cls = None
    if mod.startswith("refedit.methods."):
        try:
            cls = getattr(importlib.import_module(mod), cls_name, None)
        except ImportError:
            pass
    if not (isinstance(cls, type) and issubclass(cls, LatentEditModule)):
        raise CheckpointError(f"checkpoint {path} names '{target}', not a refedit method: refused")
    hp = dict(ckpt.get("hyper_parameters", {}))
    model = cls(**hp)
    stored, now = ckpt.get("refedit_codec"), model.codec_fingerprint()
    if stored and stored != now:
        raise CheckpointError(f"checkpoint {path} was trained with another VAE than backbone.vae gives now "
                              f"({stored} vs {now}): were the toyworld foundations rebuilt? Retrain, or point "
                              f"backbone.pretrained at the foundations it was trained with")
    state = ckpt["state_dict"]
    if use_ema and "ema_state" in ckpt:  # EMA weights replace the trained ones for inference
        state = {**state, **ckpt["ema_state"]}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # another method's or a damaged state dict
        raise CheckpointError(f"checkpoint {path}: {e}") from e
    model.eval()
    return model
