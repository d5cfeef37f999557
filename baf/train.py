"""Training the BaF predictor on cached features (paper section 4, eq. 7).

The edge half runs once per training image to fill a feature cache (float16 Z and X on disk); epochs then
touch only the predictor. Each step draws C and n (the same for the whole batch), quantizes the first C
ranked channels of every sample with its own min/max (eq. 4-5), predicts all P channels, and minimizes the
Charbonnier penalty (eq. 7, eps 1e-3, averaged over elements) between leaky(Z~) and the true activation.

With `balance_rates` each step's loss is divided by the loss the run started from at that (C, n) (for a
fresh hybrid: its least-squares path), so every rate gets the same relative pull on the shared network;
unbalanced, the low rates' large absolute errors take it all.

Everything random in a step is derived from (seed, step), so a resumed run repeats an uninterrupted one.
Checkpoints are safetensors (weights, and optimizer state in a second file) plus a JSON sidecar; never pickle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from baf.basis import SentBasis
from baf.errors import BafError, CheckpointError, TrainingDivergedError
from baf.digest import sha256_file
from baf.predictor import BafPredictor, fit_linear, make_inputs, read_sidecar, save_predictor

log = logging.getLogger(__name__)

CACHE_FORMAT = "baf-feature-cache/1"
CHARBONNIER_EPS = 1e-3


# ---------------------------------------------------------------- feature cache


@dataclass(frozen=True)
class FeatureCache:
    """Cached edge features of a set of images: `z` [N,P,h,w] and `x` [N,Q,H,W] float16 (memory-mapped)."""

    root: Path
    meta: dict[str, Any]
    z: np.ndarray
    x: np.ndarray

    @property
    def names(self) -> list[str]:
        """Image file names, in cache order (sorted)."""
        return list(self.meta["names"])

    @property
    def data_id(self) -> str:
        """Identifies the training data: sha256 of the sorted image names, with model, layer and size."""
        return str(self.meta["data_id"])

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> FeatureCache:
        """Open a complete cache (its meta.json is written last); `BafError` if it is not one."""
        root = Path(root)
        try:
            meta = json.loads((root / "meta.json").read_text())
        except (OSError, ValueError) as e:
            hint = f"rebuild it with `baf train --cache {root} --cache-only`"
            raise BafError(f"{root}: not a complete feature cache ({e}); {hint}") from None
        if meta.get("format") != CACHE_FORMAT:
            raise BafError(f"{root}: cache format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        z = np.load(root / "z.npy", mmap_mode="r")
        x = np.load(root / "x.npy", mmap_mode="r")
        if z.shape[0] != len(meta["names"]) or x.shape[0] != z.shape[0]:
            raise BafError(f"{root}: {z.shape[0]} Z and {x.shape[0]} X entries for {len(meta['names'])} images")
        return cls(root, meta, z, x)


def data_id(model: str, layer: int, size: int, names: Sequence[str]) -> str:
    """The training-data id of a cache (16 hex digits)."""
    from baf.ranking import names_digest

    return names_digest([f"{model}/{layer}/{size}/{n}" for n in names])[:16]


def build_cache(
    split: Any, paths: Sequence[Path], root: str | os.PathLike[str], *, size: int = 512, progress: bool | None = None
) -> FeatureCache:
    """Run the edge half of `split` on every image and store float16 Z and X under `root`.

    Reuses a complete cache with the same data id; files are written first and meta.json last.
    """
    from tqdm import tqdm

    from baf.images import letterbox, load_image

    root = Path(root)
    paths = sorted(paths, key=lambda p: p.name)
    names = [p.name for p in paths]
    ident = data_id(split.model.name, split.layer, size, names)
    if (root / "meta.json").is_file():
        cache = FeatureCache.open(root)
        if cache.data_id == ident:
            log.info("cache=%s images=%d data_id=%s (reused)", root, len(names), ident)
            return cache
        raise BafError(f"{root} caches other data (data_id {cache.data_id}, expected {ident}); pick another --cache")
    root.mkdir(parents=True, exist_ok=True)
    h = size // split.feature_stride
    z_out = np.lib.format.open_memmap(root / "z.npy", "w+", np.float16, (len(paths), split.channels, h, h))
    x_out = np.lib.format.open_memmap(
        root / "x.npy", "w+", np.float16, (len(paths), split.in_channels, h * split.stride, h * split.stride)
    )
    with torch.inference_mode():
        bar = tqdm(paths, desc="cache", unit="img", disable=None if progress is None else not progress)
        for i, path in enumerate(bar):
            image, _ = letterbox(load_image(path), size)
            z, x = split.edge.forward_with_input(image[None])
            z_out[i], x_out[i] = z[0].numpy(), x[0].numpy()
            if (i + 1) % 200 == 0:
                log.info("cache images=%d/%d", i + 1, len(paths))
    z_out.flush()
    x_out.flush()
    del z_out, x_out
    meta = {"format": CACHE_FORMAT, "model": split.model.name, "layer": split.layer, "size": size,
            "data_id": ident, "names": names}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta) + "\n")
    log.info("cache=%s images=%d data_id=%s (built)", root, len(names), ident)
    return FeatureCache.open(root)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run: what to serve, how to optimize, when to stop, where checkpoints go."""

    channels: tuple[int, ...]
    bits: tuple[int, ...]
    out_dir: Path
    name: str
    batch_size: int = 16
    lr: float = 1e-4
    warmup: int = 500  # steps of linear lr warm-up: Adam's first steps are large next to a least-squares start
    weight_decay: float = 0.0
    seed: int = 0
    max_steps: int | None = None
    max_minutes: float | None = None
    heldout: int = 100  # the last images of the cache, never trained on
    heldout_every: int = 500
    log_every: int = 50
    checkpoint_every: int = 500
    publish_dir: Path | None = None
    command: str = ""
    feature_layer: int | None = None  # a later layer whose output gets a loss term beside eq. 7
    feature_weight: float = 0.0
    balance_rates: bool = False
    init_from: dict[str, Any] | None = None  # {"checkpoint", "sha256", "steps"} of the weights a new run started from

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.heldout < 0:
            raise BafError(
                f"--batch-size and --lr must be positive and --heldout >= 0 "
                f"(got {self.batch_size}, {self.lr}, {self.heldout})"
            )
        if min(self.heldout_every, self.log_every, self.checkpoint_every) < 1:
            raise BafError("--heldout-every, --log-every and --checkpoint-every must be >= 1")
        if not self.name or "." in self.name or "/" in self.name:
            raise BafError(f"--name must be a plain file stem without dots or slashes, got {self.name!r}")
        if self.max_steps is None and self.max_minutes is None:
            raise BafError("give --max-steps or --max-minutes (or both)")
        if (self.feature_layer is None) != (self.feature_weight == 0) or self.feature_weight < 0:
            raise BafError("--feature-loss-layer and a positive --feature-loss-weight go together")


@dataclass
class TrainState:
    """What a checkpoint must keep to resume: step, time spent, and the curves."""

    step: int = 0
    wall_seconds: float = 0.0
    curve: list[list[float]] = field(default_factory=list)  # [step, mean training loss since the last entry]
    heldout: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss", "per_channels": {C: loss}}
    reference: dict[str, float] = field(default_factory=dict)  # "C/n" -> starting loss, when rates are balanced
    init_from: dict[str, Any] | None = None  # the run's TrainConfig.init_from, kept across resumes


# ---------------------------------------------------------------- steps


def charbonnier(pred: Tensor, target: Tensor, eps: float = CHARBONNIER_EPS) -> Tensor:
    """Eq. 7, averaged over elements instead of summed (same minimizer; lr does not depend on tensor size)."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def _generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (seed, step, ...): reproducible wherever a run resumes."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]) & (2**63 - 1))
    return g


def draw_step(cfg: TrainConfig, step: int) -> tuple[int, int]:
    """(C, n) of a step: the same on every DDP rank."""
    g = _generator(cfg.seed, step, 1)
    c = cfg.channels[int(torch.randint(len(cfg.channels), (1,), generator=g))]
    n = cfg.bits[int(torch.randint(len(cfg.bits), (1,), generator=g))]
    return c, n


def batch_indices(cfg: TrainConfig, step: int, n_train: int, rank: int = 0, world: int = 1) -> list[int]:
    """Training images of a step on one rank: epoch-wise shuffles of 0..n_train-1, split across ranks."""
    per_step = cfg.batch_size * world
    per_epoch = max(1, n_train // per_step)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n_train, generator=_generator(cfg.seed, epoch, 2))
    start = i * per_step + rank * cfg.batch_size
    return sorted(perm[start : start + cfg.batch_size].tolist())


@dataclass(frozen=True)
class FeatureLoss:
    """A loss term on a later layer's output: `weight` x Charbonnier between `tail(Z~)` and `tail(Z)`.

    `tail` maps Z to that layer's output (e.g. `CloudModel.features` with the layer bound); its weights are frozen.
    """

    tail: Any
    weight: float


def loss_on(
    predictor: torch.nn.Module,
    config: Any,
    basis: SentBasis,
    z: Tensor,
    channels: int,
    bits: int,
    feature: FeatureLoss | None = None,
) -> Tensor:
    """The training loss of one batch z [B,P,h,w] (float32) at (C, n): eq. 7, plus the optional feature term."""
    slope = config.activation_slope
    pred = predictor(make_inputs(z, basis, channels, bits), bits).float()
    loss = charbonnier(F.leaky_relu(pred, slope), F.leaky_relu(z, slope))
    if feature is not None:
        with torch.no_grad():
            target = feature.tail(z)
        loss = loss + feature.weight * charbonnier(feature.tail(pred), target)
    return loss


@torch.no_grad()
def mean_losses(
    predictor: BafPredictor, z_all: Tensor, device: torch.device, rates: Sequence[tuple[int, int]], batch: int = 20
) -> dict[tuple[int, int], float]:
    """Mean eq. 7 loss over features z_all [N,P,h,w] at each (C, n) of `rates`, in eval mode."""
    was_training = predictor.training
    predictor.eval()
    c = predictor.config
    basis = predictor.basis
    out: dict[tuple[int, int], float] = {}
    for channels, bits in rates:
        total = 0.0
        for i in range(0, len(z_all), batch):
            z = z_all[i : i + batch].to(device).float()
            total += float(loss_on(predictor, c, basis, z, channels, bits)) * len(z)
        out[(channels, bits)] = total / len(z_all)
    predictor.train(was_training)
    return out


def heldout_loss(predictor: BafPredictor, z_all: Tensor, device: torch.device) -> dict[str, Any]:
    """Mean loss on held-out features z_all [N,P,h,w] for every served C at the largest served n."""
    c = predictor.config
    bits = max(c.bits)
    losses = mean_losses(predictor, z_all, device, [(channels, bits) for channels in c.channels])
    per = {str(channels): loss for (channels, _), loss in losses.items()}
    return {"bits": bits, "loss": sum(per.values()) / len(per), "per_channels": per}


REFERENCE_IMAGES = 100  # training images, evenly spread, that measure the starting loss of each rate


def rate_reference(predictor: BafPredictor, z_train: Tensor, device: torch.device) -> dict[str, float]:
    """"C/n" -> the predictor's loss at that rate on an even spread of training images: `balance_rates`' divisors."""
    c = predictor.config
    z = z_train[:: max(1, len(z_train) // REFERENCE_IMAGES)][:REFERENCE_IMAGES]
    losses = mean_losses(predictor, z, device, [(cc, n) for cc in c.channels for n in c.bits])
    return {f"{cc}/{n}": loss for (cc, n), loss in losses.items()}


# ---------------------------------------------------------------- checkpoints


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """AdamW state as flat tensors (safetensors) and its param groups (JSON)."""
    sd = opt.state_dict()
    tensors = {
        f"state.{i}.{k}": (v if v.dim() else v.reshape(1)).detach().cpu().contiguous()
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
    return tensors, sd["param_groups"]


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v.reshape(()) if k == "step" else v
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_training(
    stem: Path, predictor: BafPredictor, opt: torch.optim.Optimizer, cfg: TrainConfig, state: TrainState, data: str
) -> Path:
    """Write weights + sidecar + optimizer state of a run at `stem`; also publish weights + sidecar if asked."""
    from safetensors.torch import save_file

    opt_tensors, groups = _optimizer_tensors(opt)
    opt_path = stem.with_name(stem.name + ".optim.safetensors")
    tmp = opt_path.with_name(opt_path.name + ".tmp")
    save_file(opt_tensors, str(tmp), metadata={"format": "baf-optimizer/1"})
    os.replace(tmp, opt_path)
    train = {
        "data_id": data,
        "command": cfg.command,
        "seed": cfg.seed,
        "steps": state.step,
        "wall_hours": round(state.wall_seconds / 3600, 4),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "warmup": cfg.warmup,
        "weight_decay": cfg.weight_decay,
        "heldout_images": cfg.heldout,
        "feature_loss": None if cfg.feature_layer is None else {"layer": cfg.feature_layer, "weight": cfg.feature_weight},
        "balance_rates": cfg.balance_rates,
        "rate_reference": state.reference,
        "init_from": state.init_from,
        "loss_curve": state.curve,
        "heldout_curve": state.heldout,
    }
    optimizer = {"file": opt_path.name, "sha256": sha256_file(opt_path), "param_groups": groups}
    extra = {"train": train, "optimizer": optimizer}
    weights = save_predictor(predictor, stem, extra)
    if cfg.publish_dir is not None:
        cfg.publish_dir.mkdir(parents=True, exist_ok=True)
        save_predictor(predictor, cfg.publish_dir / stem.name, {"train": train})
    log.info("checkpoint=%s step=%d", weights, state.step)
    return weights


def load_training(stem: Path, predictor: BafPredictor, opt: torch.optim.Optimizer) -> TrainState:
    """Restore weights, optimizer state and progress from a run's checkpoint at `stem`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from baf.predictor import load_predictor

    data, _ = read_sidecar(stem.with_suffix(".json"))
    loaded = load_predictor(stem.with_suffix(".json"))
    if loaded.config != predictor.config:
        raise CheckpointError(f"{stem}: checkpoint is {loaded.config}, this run is {predictor.config}")
    predictor.load_state_dict(loaded.state_dict(), strict=True)
    info = data.get("optimizer") or {}
    opt_path = stem.with_name(str(info.get("file", "")))
    if not info or not opt_path.is_file():
        raise CheckpointError(f"{stem}: no optimizer state to resume from")
    if sha256_file(opt_path) != info.get("sha256"):
        raise CheckpointError(f"{opt_path}: sha256 does not match the sidecar's")
    try:
        _load_optimizer(opt, load_file(str(opt_path)), info["param_groups"])
    except (KeyError, ValueError, RuntimeError, SafetensorError) as e:
        raise CheckpointError(f"{opt_path}: cannot restore the optimizer ({e})") from None
    train = data["train"]
    return TrainState(step=int(train["steps"]), wall_seconds=float(train["wall_hours"]) * 3600,
                      curve=list(train["loss_curve"]), heldout=list(train["heldout_curve"]),
                      reference=dict(train.get("rate_reference") or {}), init_from=train.get("init_from"))  # fmt: skip


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def setup(cls, use_cuda: bool) -> Distributed:
        """Join the process group when launched by torchrun (WORLD_SIZE set); gloo on CPU, nccl on CUDA."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        if world == 1:
            return cls(0, 1, device)
        import torch.distributed as dist

        dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dist.get_rank(), world, device)

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[list[bool]]:
    """Turn SIGTERM into a flag the loop checks (so it stops after a step and saves); restored on exit."""
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(
    cfg: TrainConfig,
    predictor: BafPredictor,
    cache: FeatureCache,
    *,
    resume: bool = False,
    linear_fitted: bool = False,
    feature: FeatureLoss | None = None,
    dist_info: Distributed | None = None,
    progress: bool | None = None,
) -> TrainState:
    """Train `predictor` on `cache` until max steps or minutes, SIGTERM, or Ctrl-C; checkpoint and return the state.

    A fresh hybrid run starts from the least-squares fit of its linear path (fitted here unless `linear_fitted`,
    which is also what a run started from `cfg.init_from`'s weights passes).
    `feature` adds the later-layer loss term. Rank 0 writes checkpoints and logs.
    """
    if not predictor.config.has_network:
        raise BafError("a linear predictor has nothing to train; fit it with `baf fit-linear`")
    from tqdm import tqdm

    d = dist_info or Distributed()
    main = d.rank == 0
    n_total = cache.z.shape[0]
    n_train = n_total - cfg.heldout
    if n_train < cfg.batch_size * d.world:
        raise BafError(
            f"cache has {n_total} images: too few for --heldout {cfg.heldout} "
            f"and a batch of {cfg.batch_size} x {d.world}"
        )
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stem = cfg.out_dir / cfg.name
    torch.manual_seed(cfg.seed)
    predictor.to(d.device)
    opt = torch.optim.AdamW(predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume:
        if not stem.with_suffix(".json").is_file():
            raise CheckpointError(f"--resume: no checkpoint at {stem}.json")
        state = load_training(stem, predictor, opt)
        predictor.to(d.device)
        log.info("resumed=%s step=%d wall_hours=%.3f", stem, state.step, state.wall_seconds / 3600)
        if cfg.balance_rates != bool(state.reference):
            raise CheckpointError(f"--resume: {stem} was trained {'with' if state.reference else 'without'} "
                                  "--balance-rates; resume it the same way")  # fmt: skip
    else:
        state = TrainState(init_from=cfg.init_from)
        if predictor.config.has_linear and not linear_fitted:
            fit_linear(predictor, feature_batches(cache, range(n_train), 400))
            predictor.to(d.device)
    model: torch.nn.Module = predictor
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(predictor, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    # The whole training Z fits in memory as float16 (1,600 yolov3-tiny images: 0.8 GB).
    z_train = torch.from_numpy(np.array(cache.z[:n_train]))
    z_held = torch.from_numpy(np.array(cache.z[n_train:]))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else contextlib.nullcontext()
    )
    if cfg.balance_rates and not state.reference:
        state.reference = rate_reference(predictor, z_train, d.device)
        log.info("rate_reference=%s", {k: round(v, 5) for k, v in state.reference.items()})
    basis = predictor.basis
    start_time, start_wall, start_step = time.monotonic(), state.wall_seconds, state.step
    window: list[float] = []
    interrupted = False

    def save() -> None:
        state.wall_seconds = start_wall + time.monotonic() - start_time
        if main:
            save_training(stem, predictor, opt, cfg, state, cache.data_id)

    predictor.train()
    # disable=None: a bar only on a terminal, and only on rank 0.
    quiet = True if not main else None if progress is None else not progress
    with _sigterm_flag() as sigterm, tqdm(
        total=cfg.max_steps, initial=state.step, desc="train", unit="step", disable=quiet
    ) as bar:
        try:
            while True:
                elapsed_min = (time.monotonic() - start_time) / 60
                done = (cfg.max_steps is not None and state.step >= cfg.max_steps) or (
                    cfg.max_minutes is not None and elapsed_min >= cfg.max_minutes
                )
                if d.any(done or sigterm[0]):
                    break
                channels, bits = draw_step(cfg, state.step)
                idx = batch_indices(cfg, state.step, n_train, d.rank, d.world)
                z = z_train[idx].to(d.device, non_blocking=True).float()
                with autocast:
                    loss = loss_on(model, predictor.config, basis, z, channels, bits, feature)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingDivergedError(
                        f"loss={value} at step {state.step} (C={channels}, n={bits}); lower --lr"
                    )
                if cfg.balance_rates:
                    loss = loss / state.reference[f"{channels}/{bits}"]
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * min(1.0, (state.step + 1) / max(cfg.warmup, 1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state.step += 1
                window.append(value)
                bar.update(1)
                if state.step % cfg.log_every == 0:
                    mean = sum(window) / len(window)
                    state.curve.append([state.step, round(mean, 6)])
                    rate = (state.step - start_step) / max(time.monotonic() - start_time, 1e-9)
                    if main:
                        log.info("step=%d loss=%.5f steps_per_s=%.2f", state.step, mean, rate)
                    bar.set_postfix(loss=f"{mean:.4f}")
                    window = []
                if main and (state.step % cfg.heldout_every == 0) and len(z_held):
                    held = {"step": state.step, **heldout_loss(predictor, z_held, d.device)}
                    state.heldout.append(held)
                    log.info("step=%d heldout_loss=%.5f per_channels=%s", state.step, held["loss"],
                             {k: round(v, 5) for k, v in held["per_channels"].items()})  # fmt: skip
                if state.step % cfg.checkpoint_every == 0:
                    save()
        except KeyboardInterrupt:
            interrupted = True
    if sigterm[0]:
        log.info("SIGTERM: stopping at step=%d", state.step)
    save()
    if interrupted:
        raise KeyboardInterrupt
    return state


def spread(indices: Sequence[int], images: int | None = None) -> np.ndarray:
    """Up to `images` of `indices`, spread evenly (all of them when None)."""
    picks = np.asarray(indices)
    if images is not None and images < len(picks):
        picks = np.unique(picks[np.linspace(0, len(picks) - 1, num=images).round().astype(int)])
    return picks


def feature_batches(cache: FeatureCache, indices: Sequence[int], images: int | None = None,
                    batch: int = 4) -> Iterator[Tensor]:
    """Z float32 batches of the cached images at `indices` (up to `images` of them, spread evenly)."""
    picks = spread(indices, images)
    for i in range(0, len(picks), batch):
        yield torch.from_numpy(cache.z[picks[i : i + batch]].astype(np.float32))
