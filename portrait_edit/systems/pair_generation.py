"""Stage 2: paired data generation as a `predict` run writing WebDataset shards (paper §3.2).

Each job (data/pair_jobs.py) becomes one pair: the identity's face -> c_id, the pose drawn on both halves,
p / p_a / p_b, the job's own noise -> `PairGenerator` -> the canvas split into x_A (left) and x_B (right).
The ShardWriter callback writes `src.png`, `tgt.png`, `pose.png` and the metadata (prompts, direction,
gender, identity source, pose id, seed, all scales, the generator's config hash) that regenerates a pair
bit for bit. Ablations are switches: `use_pose: false` (no ControlNet), `use_identity: false` (no c_id).
Past the paper, `world_sources: true` takes x_A from the mini world instead of drawing it (jobs of
data/world_pairs.py: the world portrait of the job's seed, its pose, identity and prompts) and draws x_B
beside it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from lightning.pytorch import LightningModule

from portrait_edit import __version__, paths
from portrait_edit.data.jobs import sample_seed
from portrait_edit.data.pair_jobs import WORLD
from portrait_edit.data.pose_bank import PoseBank
from portrait_edit.images import load_image, pixels_to_unit, square_face, to_tensor, to_uint8
from portrait_edit.loading.components import load_components, vae_scale_factor
from portrait_edit.loading.sources import resolve_source
from portrait_edit.models.identity_encoder import IdentityEncoder
from portrait_edit.models.pair_generator import PairGenerator
from portrait_edit.world import draw_pose_pair, make_face, make_pair

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PairGenerationSystem(LightningModule):
    """Args:
    base: SD source (preset, folder, single file, hub id).
    vae, single_file_config: another VAE source; a single-file base's architecture (as DiffusionSystem).
    pose_bank: the pose bank JSON the jobs' pose ids index.
    controlnet: OpenPose ControlNet source (None with a preset base: the preset's).
    identity_encoder: folder of a trained identity encoder (None: the base's `identity_encoder/` when the
        base is a preset that ships one).
    image_encoder: CLIP image encoder source (None with a preset base: the preset's).
    image_size: side H = W of each half (512 at SD 1.5, 64 mini).
    steps, guidance, s_d, s_a, s_b, s_churn, s_tmin, s_tmax, s_noise, twin_noise, source_alone: sampling
        (PairGenerator).
    edit_mask: lambda (one, or {task: lambda}) of a mask of where p_b's prediction differs from p_a's on
        the right half; outside it the right half keeps the left half's latent at every step
        (PairGenerator.generate's mask_thresholds; needs twin_noise and source_alone). None (the paper):
        no mask.
    world_sources: x_A is the mini-world portrait of each job (WorldPairsDataModule jobs: seed, direction),
        not drawn: its VAE latent is the canvas's left half at every step (PairGenerator.generate's
        source), the pose and identity are the portrait's own, and only x_B is drawn (needs twin_noise and
        source_alone). False (the paper): both halves drawn, jobs of PairJobsDataModule.
    use_pose: condition on the pose (False: the "no pose" ablation, no ControlNet).
    use_identity: splice c_id into the prompts (False: the "no identity" ablation).
    min_identity_similarity: drop pairs whose left / right identity similarity (cosine of their c_id,
        recorded for every pair as `identity_similarity`) is below this; None keeps all. Dropped pairs
        are counted in the shard sidecars and manifests.
    dtype: float32, float16 or bfloat16 weights.
    local_files_only: for hub ids, never touch the network (None: the HF_HUB_OFFLINE setting).
    """

    def __init__(
        self,
        base: str = "mini",
        pose_bank: str = "data/mini/pose_bank.json",
        vae: str | None = None,
        single_file_config: str | None = None,
        controlnet: str | None = None,
        identity_encoder: str | None = None,
        image_encoder: str | None = None,
        image_size: int = 64,
        steps: int = 20,
        guidance: float = 7.5,
        s_d: float = 0.1,
        s_a: float = 0.9,
        s_b: float = 0.9,
        s_churn: float = 80.0,
        s_tmin: float = 0.05,
        s_tmax: float = 50.0,
        s_noise: float = 1.007,
        twin_noise: bool = False,
        source_alone: bool = False,
        edit_mask: float | dict[str, float] | None = None,
        world_sources: bool = False,
        use_pose: bool = True,
        use_identity: bool = True,
        min_identity_similarity: float | None = None,
        dtype: str = "float32",
        local_files_only: bool | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if edit_mask is not None and not (twin_noise and source_alone):
            raise ValueError("edit_mask needs twin_noise and source_alone (the halves share their noise)")
        if world_sources and not (twin_noise and source_alone):
            raise ValueError("world_sources needs twin_noise and source_alone (the halves share their noise)")
        if min_identity_similarity is not None and not use_identity:
            raise ValueError("min_identity_similarity compares c_id of the halves: it needs use_identity")
        self.save_hyperparameters()
        parts = ("vae", "unet", "text_encoder", "tokenizer")
        parts += ("controlnet",) if use_pose else ()
        parts += ("image_encoder",) if use_identity else ()
        c = load_components(
            base,
            vae=vae,
            single_file_config=single_file_config,
            controlnet=controlnet,
            image_encoder=image_encoder,
            parts=parts,
            torch_dtype=DTYPES[dtype],
            local_files_only=local_files_only,
        )
        encoder = None
        if use_identity:
            kind, where = resolve_source(base)
            if identity_encoder is None and kind != "preset":
                raise ValueError(
                    "use_identity needs `identity_encoder` (a trained encoder's folder) for this base"
                )
            folder = identity_encoder or paths.DATA_DIR / where / "identity_encoder"
            encoder = IdentityEncoder.from_pretrained(folder, dtype=DTYPES[dtype])
        self.generator = PairGenerator(
            c.vae, c.unet, c.text_encoder, c.tokenizer,
            controlnet=c.controlnet, image_encoder=c.image_encoder, identity_encoder=encoder,
            guidance=guidance, s_d=s_d, s_a=s_a, s_b=s_b, steps=steps,
            s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, twin_noise=twin_noise,
            source_alone=source_alone,
        )  # fmt: skip
        self.bank = PoseBank.load(pose_bank)
        self.scale = vae_scale_factor(c.vae)
        # Settings left at None that older shards never recorded stay out, so their hash still matches.
        settings = {
            k: v for k, v in self.hparams.items()
            if k != "local_files_only" and not (k in ("vae", "single_file_config") and v is None)
        }  # fmt: skip
        self.config_hash = hashlib.sha256(
            json.dumps({**settings, "version": __version__}, sort_keys=True).encode()
        ).hexdigest()[:16]

    def setup(self, stage: str) -> None:
        # The jobs' pose ids index the datamodule's bank; drawn from another bank they would be other poses.
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        bank = getattr(datamodule, "bank", None)
        if isinstance(bank, PoseBank) and not np.array_equal(bank.keypoints, self.bank.keypoints):
            raise ValueError(
                f"model.init_args.pose_bank ({self.hparams.pose_bank}, {len(self.bank)} poses) is not the bank "
                f"the jobs' pose ids come from (data.init_args.pose_bank, {len(bank)} poses, "
                f"{datamodule.pose_bank_path}); set both to the same file"
            )

    def face(self, source: str) -> torch.Tensor:
        """The identity source's face, float (3, S, S) in [-1, 1]: a world identity's neutral front view
        (make_face view 0) or a face image file."""
        size = self.hparams.image_size
        if source.startswith(f"{WORLD}:"):
            image = make_face(int(source.split(":", 1)[1]), 0, size=size).image
            return to_tensor(image)
        return square_face(load_image(source), size)

    def world_job(self, job: dict) -> dict:
        """A WorldPairsDataModule job (seed, direction) as a pair job whose x_A is the world portrait: its
        prompts, identity, pose keypoints ("keypoints") and image ("source", uint8 (H, W, 3))."""
        if "pose_id" in job:
            raise ValueError(
                "world_sources reads jobs of portrait_edit.data.world_pairs.WorldPairsDataModule (seed, "
                "direction); this job has a pose id and an identity of its own (PairJobsDataModule): set "
                "the data class_path (configs/mini/ablations/world_sources_generate.yaml)"
            )
        pair = make_pair(job["seed"], job["direction"], size=self.hparams.image_size)
        return {
            **job, **pair.prompts, "task": pair.task, "gender": pair.gender,
            "identity_source": f"{WORLD}:{pair.meta['identity_seed']}", "pose_id": None,
            "keypoints": pair.keypoints, "source": pair.src,
        }  # fmt: skip

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        size, gen = self.hparams.image_size, self.generator
        if self.hparams.world_sources:
            batch = [self.world_job(job) for job in batch]
        identity = None
        if self.hparams.use_identity:
            identity = gen.identity(
                torch.stack([self.face(job["identity_source"]) for job in batch]).to(self.device)
            )
        use = torch.tensor([bool(job.get("with_identity", True)) for job in batch])
        states = gen.text_states({k: [job[k] for job in batch] for k in ("p", "p_a", "p_b")}, identity, use)
        poses = [
            job["keypoints"] if "keypoints" in job else self.bank.pixels(job["pose_id"], size, size)
            for job in batch
        ]
        pose = None
        if self.hparams.use_pose:
            drawn = np.stack([draw_pose_pair(k, size, size) for k in poses])  # (B, H, 2W, 3) uint8
            pose = torch.from_numpy(drawn).permute(0, 3, 1, 2).float().div(255.0).to(self.device)
        latent_shape = (gen.unet.config.in_channels, size // self.scale, 2 * size // self.scale)
        noise = torch.stack(
            [torch.randn(latent_shape, generator=torch.Generator().manual_seed(job["seed"])) for job in batch]
        ).to(self.device)
        churn = [
            torch.Generator(self.device).manual_seed(sample_seed(job["seed"] % 2**31, 1)) for job in batch
        ]
        thresholds = None
        if self.hparams.edit_mask is not None:
            lam = self.hparams.edit_mask
            if isinstance(lam, dict) and (missing := {job["task"] for job in batch} - set(lam)):
                raise ValueError(
                    f"edit_mask has no lambda for task(s) {sorted(missing)}; add them to edit_mask"
                )
            thresholds = torch.tensor([lam[job["task"]] if isinstance(lam, dict) else lam for job in batch])
        source = None
        if self.hparams.world_sources:
            images = torch.from_numpy(np.stack([job["source"] for job in batch])).permute(0, 3, 1, 2)
            images = pixels_to_unit(images).to(self.device, gen.vae.dtype)
            source = gen.vae.encode(images).latent_dist.mode() * gen.vae.config.scaling_factor
        canvas = gen.generate(states, noise, churn, pose, thresholds, source)
        similarity = [None] * len(batch)
        if self.hparams.use_identity:
            left, right = (gen.identity(half).flatten(1) for half in canvas.split(size, dim=-1))
            similarity = torch.nn.functional.cosine_similarity(left, right, dim=1).tolist()
        return [self._sample(job, canvas[i], poses[i], similarity[i]) for i, job in enumerate(batch)]

    def _sample(
        self, job: dict, canvas: torch.Tensor, keypoints: np.ndarray, similarity: float | None
    ) -> dict:
        size = self.hparams.image_size
        image = to_uint8(canvas.cpu())  # (H, 2W, 3)
        h = self.hparams
        meta = {
            **{k: job[k] for k in ("p", "p_a", "p_b", "direction", "task", "gender", "identity_source", "pose_id", "seed", "index")},
            "with_identity": bool(job.get("with_identity", True)) and h.use_identity,
            "description": job.get("description"),
            "scales": {"guidance": h.guidance, "s_d": h.s_d, "s_a": h.s_a, "s_b": h.s_b, "steps": h.steps,
                       "s_churn": h.s_churn, "s_tmin": h.s_tmin, "s_tmax": h.s_tmax, "s_noise": h.s_noise,
                       "twin_noise": h.twin_noise, "source_alone": h.source_alone, "edit_mask": h.edit_mask,
                       "world_sources": h.world_sources},
            "ablations": {"pose": h.use_pose, "identity": h.use_identity},
            "keypoints": np.round(keypoints, 3).tolist(),
            "identity_similarity": None if similarity is None else round(similarity, 5),
            "config_hash": self.config_hash,
            "version": __version__,
        }  # fmt: skip
        sample = {
            "__key__": job["key"],
            "__index__": job["index"],
            "__shard__": job["shard"],
            "__shard_len__": job["shard_len"],
            "src.png": job["source"] if "source" in job else np.ascontiguousarray(image[:, :size]),
            "tgt.png": np.ascontiguousarray(image[:, size:]),
            "json": meta,
        }
        threshold = h.min_identity_similarity
        if threshold is not None and similarity < threshold:
            sample["__filtered__"] = f"identity similarity {similarity:.3f} < {threshold}"
        if h.use_pose:
            sample["pose.png"] = draw_pose_pair(keypoints, size, size)[:, :size]
        return sample
