"""The NP-Edit trainer: `generator_step` (VLM feedback + DMD through the unrolled generator) and `fake_score_step`.

One loop runs both; phases follow the schedule: identity warmup -> single-step -> two-step unroll.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from training.backbones.base import guided_velocity, noise_to, x0_from_velocity
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig, accumulation_steps
from training.critics import Critic
from training.data import EditBatch, EditBatches
from training.lora import add_lora
from training.losses import consistency_loss, dmd_loss, flow_matching_loss, reconstruction_loss, vlm_feedback_loss
from training.monitor import Monitor
from training.customization import CUSTOMIZATION, customization_questions
from training.questions import OUTPUT, REFERENCE, Question, questions_for
from training.unroll import phase, plan_unroll, unroll

DO_NOTHING = "do nothing"


@dataclass
class StepOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    samples: torch.Tensor | None = None  # generated latents of the step (detached), for image logging


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates (all, or only the LoRA adapters')."""
    return [p for p in module.parameters() if p.requires_grad]


def sample_questions(batch: EditBatch, b: int) -> list[Question]:
    """The critic's questions about sample `b`: the editing questions of its edit type, or customization's."""
    target = batch.target_objects[b] if batch.target_objects else None
    if batch.edit_types[b] == CUSTOMIZATION:
        return customization_questions(target, batch.edited_captions[b])
    return questions_for(batch.edit_types[b], batch.instructions[b], target)


class Trainer:
    """Owns the generator, its frozen teacher and trainable fake-score copies, the critic, optimizers and data."""

    def __init__(self, config: TrainConfig, generator, critic: Critic, batches: EditBatches, out_dir: Path,
                 shard: Callable[[torch.nn.Module], None] | None = None,
                 teacher_transformer: torch.nn.Module | None = None):
        """`shard` (e.g. FSDP2's per-block `fully_shard`) is applied to the three transformers before the optimizers
        are built, so the optimizers hold the sharded parameters. When the generator starts from other weights
        (`model.generator_init`), `teacher_transformer` is the teacher and the fake score starts as its copy; else both
        copy the generator's transformer."""
        self.config, self.generator, self.critic, self.batches = config, generator, critic, batches
        self.out_dir = Path(out_dir)
        teacher = copy.deepcopy(generator.transformer) if teacher_transformer is None else teacher_transformer
        self.fake = generator.with_transformer(copy.deepcopy(teacher).requires_grad_(True).train())
        self.teacher = generator.with_transformer(teacher.requires_grad_(False).eval())
        self.generator.transformer.requires_grad_(True).train()
        if config.lora.rank:  # adapters after the copies: the teacher (and a fully trained fake score) stay plain
            add_lora(self.generator.transformer, config.lora)
            if config.lora.fake_score:
                add_lora(self.fake.transformer, config.lora)
        for backbone in (self.generator, self.fake, self.teacher):
            if shard is not None:
                shard(backbone.transformer)
        optim = config.optim
        self.optimizer = torch.optim.Adam(_trainable(generator.transformer), lr=optim.lr, betas=optim.betas,
                                          weight_decay=optim.weight_decay)
        self.fake_optimizer = torch.optim.Adam(_trainable(self.fake.transformer), lr=optim.fake_lr,
                                               betas=optim.betas, weight_decay=optim.weight_decay)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rng = torch.Generator().manual_seed(config.seed + 1_000_003 * self.rank)  # own noise per rank
        self.accumulation = accumulation_steps(config.data, self.world_size)  # micro-batches per update
        self.step = 0
        self.skipped = {"generator": 0, "fake": 0}
        self.type_counts: Counter[str] = Counter()  # edit types this rank has trained on (the realised mix)
        self._negative = None

    # -- conditioning ------------------------------------------------------------------------------------------------
    def _negative_text(self, batch_size: int):
        if self._negative is None:
            self._negative = self.generator.encode_text([self.config.loss.negative_prompt])
        return self._negative.repeat(batch_size)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.rng, dtype=like.dtype).to(like.device)

    def _uniform(self, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=self.rng)).to(self.generator.device)

    def _cfg_scales(self, edit_types: list[str]) -> torch.Tensor:
        loss = self.config.loss
        return torch.tensor([loss.strong_cfg_scale if t in loss.strong_cfg_edit_types else loss.cfg_scale
                             for t in edit_types])

    def _clip_and_step(self, params, optimizer, name: str) -> tuple[float, bool]:
        """Clip the accumulated gradient and step; a non-finite or exploding gradient skips the update (counted)."""
        norm = float(torch.nn.utils.clip_grad_norm_(list(params), self.config.optim.grad_clip))
        if not math.isfinite(norm) or norm > self.config.optim.skip_grad_norm_above:
            optimizer.zero_grad(set_to_none=True)
            self.skipped[name] += 1
            return norm, True
        optimizer.step()
        return norm, False

    # -- the two updates: each accumulates gradients over its micro-batches, then steps once --------------------------
    def fake_score_step(self, *micro_batches: EditBatch) -> dict[str, float]:
        """Flow matching of the fake score on detached generator samples, conditioned on the edited caption."""
        self.fake_optimizer.zero_grad(set_to_none=True)
        losses = []
        for batch in micro_batches:
            loss = self._fake_score_loss(batch)
            (loss / len(micro_batches)).backward()
            losses.append(loss.item())
        norm, skipped = self._clip_and_step(_trainable(self.fake.transformer), self.fake_optimizer, "fake")
        return {"fake/flow_matching": sum(losses) / len(losses), "fake/grad_norm": norm, "fake/skipped": float(skipped)}

    def _fake_score_loss(self, batch: EditBatch) -> torch.Tensor:
        with torch.no_grad():
            references = self.generator.encode_images(batch.references)
            text = self.generator.encode_text(batch.instructions, num_references=1, reference_images=batch.references)
            plan = plan_unroll(self.step, self.config.schedule, self.generator, self.config.seed)
            x0 = unroll(self.generator, self._noise(references), text, references, plan, self.rng)
            caption = self.generator.encode_text(batch.edited_captions)
        t, eps = self._uniform(x0.shape[0]), self._noise(x0)
        v = self.fake.predict_velocity(noise_to(x0, eps, t), t, caption)
        return flow_matching_loss(v, x0, eps).mean()

    def warmup_times(self, n: int) -> torch.Tensor:
        """Identity-warmup noise levels: uniform, then the backbone's time shift, as every unroll's t = 1 start and
        the two-step times are (under Z-Image's shift 6, 40 % of samples lie above t = 0.9)."""
        return self.generator.shift_time(self._uniform(n))

    def warmup_texts(self, batch: EditBatch) -> list[str]:
        """What the identity warmup conditions each copy on: 'do nothing', or the source's own caption (schedule
        .warmup_text), 'do nothing' where a source has no caption."""
        if self.config.schedule.warmup_text == "reference_caption" and batch.reference_captions:
            return [caption or DO_NOTHING for caption in batch.reference_captions]
        return [DO_NOTHING] * len(batch.instructions)

    def _warmup_loss(self, references: torch.Tensor, batch: EditBatch
                     ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Identity reconstruction: flow matching towards the reference itself, given `warmup_texts`."""
        text = self.generator.encode_text(self.warmup_texts(batch), num_references=1,
                                          reference_images=batch.references)
        t, eps = self.warmup_times(references.shape[0]), self._noise(references)
        x_t = noise_to(references, eps, t)
        v = self.generator.predict_velocity(x_t, t, text, reference=references)
        loss = flow_matching_loss(v, references, eps).mean()
        return loss, {"loss/identity": loss.item()}, x0_from_velocity(x_t, t, v).detach()

    def _dmd(self, x0: torch.Tensor, batch: EditBatch) -> torch.Tensor:
        """Paper eqn. 5 on the edited caption (no reference): teacher with CFG vs the fake score, per sample."""
        loss = self.config.loss
        with torch.no_grad():
            t = self._uniform(x0.shape[0], loss.dmd_t_min, loss.dmd_t_max)
            x_t = noise_to(x0.detach(), self._noise(x0), t)
            caption = self.generator.encode_text(batch.edited_captions)
            both = self.teacher.predict_velocity(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                                 caption.concat(self._negative_text(x0.shape[0])))
            v_pos, v_neg = both.chunk(2)
            x0_real = x0_from_velocity(x_t, t, guided_velocity(v_pos, v_neg, self._cfg_scales(batch.edit_types)))
            x0_fake = x0_from_velocity(x_t, t, self.fake.predict_velocity(x_t, t, caption))
        return dmd_loss(x0, x0_real, x0_fake)

    def critic_temperature(self) -> float:
        """The critic's logit temperature: rises 0.1 -> 1 over `critic_temperature_ramp_steps` VLM steps, counted
        from the first step after the identity warmup (the reference reimplementation's ramp; not in the paper)."""
        ramp = self.config.loss.critic_temperature_ramp_steps
        vlm_steps = max(0, self.step - self.config.schedule.warmup_steps)
        return 1.0 if ramp <= 0 else min(1.0, 0.1 + 0.9 * vlm_steps / ramp)

    def _vlm(self, images: torch.Tensor, batch: EditBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Paper eqn. 4 summed over each sample's questions; returns the per-sample loss and P(correct) per kind."""
        groups, texts, owners, kinds, correct_yes = [], [], [], [], []
        for b in range(len(batch.instructions)):
            for question in sample_questions(batch, b):
                if question.kind == "identity" and not self.config.loss.identity_question:
                    continue
                pick = {REFERENCE: batch.references[b].to(images), OUTPUT: images[b]}
                groups.append([pick[name] for name in question.images])
                texts.append(question.text)
                owners.append(b)
                kinds.append(question.kind)
                correct_yes.append(question.correct == "Yes")
        logit_yes, logit_no = self.critic.answer_logits(groups, texts)
        sign = torch.tensor(correct_yes, device=logit_yes.device)
        logit_correct = torch.where(sign, logit_yes, logit_no)
        logit_wrong = torch.where(sign, logit_no, logit_yes)
        per_question = vlm_feedback_loss(logit_correct, logit_wrong, self.critic_temperature())
        owner = torch.tensor(owners, device=per_question.device)
        per_sample = torch.zeros(images.shape[0], device=per_question.device).index_add(0, owner, per_question)
        p_correct = torch.sigmoid(logit_correct - logit_wrong).detach()
        metrics = {f"vlm/p_correct_{k}": p_correct[[i for i, q in enumerate(kinds) if q == k]].mean().item()
                   for k in sorted(set(kinds))}
        return per_sample, metrics

    def _generator_loss(self, batch: EditBatch) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """One micro-batch's generator loss: warmup reconstruction, or VLM + DMD (+ 'do nothing' reconstruction)."""
        loss_config = self.config.loss
        with torch.no_grad():
            references = self.generator.encode_images(batch.references)
        if phase(self.step, self.config.schedule) == "warmup":
            return self._warmup_loss(references, batch)
        do_nothing = (self._uniform(references.shape[0]) < loss_config.do_nothing_prob).cpu()
        instructions = [DO_NOTHING if d else s for d, s in zip(do_nothing.tolist(), batch.instructions)]
        text = self.generator.encode_text(instructions, num_references=1, reference_images=batch.references)
        plan = plan_unroll(self.step, self.config.schedule, self.generator, self.config.seed)
        x0 = unroll(self.generator, self._noise(references), text, references, plan, self.rng)
        edit = (~do_nothing).float().to(references.device)
        per_sample, metrics = torch.zeros_like(edit), {}
        if loss_config.lambda_dmd > 0:  # a term weighted 0 (an ablation) is not computed
            l_dmd = self._dmd(x0, batch)
            per_sample = per_sample + loss_config.lambda_dmd * l_dmd * edit
            metrics["loss/dmd"] = l_dmd.mean().item()
        images = self.generator.decode_latents(x0) if loss_config.lambda_vlm or loss_config.lambda_consistency else None
        if loss_config.lambda_vlm > 0:
            l_vlm, metrics_vlm = self._vlm(images, batch)
            per_sample = per_sample + loss_config.lambda_vlm * l_vlm * edit
            metrics.update({**metrics_vlm, "loss/vlm": l_vlm.mean().item(),
                            "vlm/temperature": self.critic_temperature()})
        if loss_config.lambda_consistency > 0:
            l_consistency = consistency_loss(images, batch.references.to(images))
            per_sample = per_sample + loss_config.lambda_consistency * l_consistency * edit
            metrics["loss/consistency"] = l_consistency.mean().item()
        l_rec = reconstruction_loss(x0, references)
        per_sample = per_sample + loss_config.lambda_reconstruction * l_rec * (1 - edit)
        metrics.update({"loss/do_nothing": (l_rec * (1 - edit)).sum().item() / max(1.0, (1 - edit).sum().item()),
                        "unroll/steps": float(plan.num_steps)})
        return per_sample.mean(), metrics, x0.detach()

    def generator_step(self, *micro_batches: EditBatch) -> StepOutput:
        """One generator update over `micro_batches` (gradient accumulation of their mean loss)."""
        self.optimizer.zero_grad(set_to_none=True)
        parts, samples = [], None
        for batch in micro_batches:
            loss, metrics, samples = self._generator_loss(batch)
            (loss / len(micro_batches)).backward()
            parts.append({**metrics, "loss/total": loss.item()})
            self.type_counts.update(batch.edit_types)
        metrics = {key: sum(p[key] for p in parts) / len(parts) for key in parts[0]}
        norm, skipped = self._clip_and_step(_trainable(self.generator.transformer), self.optimizer, "generator")
        seen = sum(self.type_counts.values())
        metrics.update({"generator/grad_norm": norm, "generator/skipped": float(skipped),
                        "generator/skipped_total": float(self.skipped["generator"]),
                        "fake/skipped_total": float(self.skipped["fake"]),
                        **{f"data/share_{t}": n / seen for t, n in sorted(self.type_counts.items())}})
        return StepOutput(metrics, samples)

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _models(self) -> dict:
        return {"generator": (self.generator.transformer, self.optimizer),
                "fake": (self.fake.transformer, self.fake_optimizer)}

    def _meta(self) -> dict:
        """Step, skip counters and every rank's RNG and data position (gathered: a collective)."""
        mine = {"rng": self.rng.get_state(), "data": self.batches.state_dict(), "type_counts": dict(self.type_counts)}
        ranks = [None] * self.world_size
        if dist.is_initialized():
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"step": self.step, "skipped": dict(self.skipped), "ranks": ranks}

    def save(self) -> Path:
        """Every rank takes part; rank 0 publishes the checkpoint."""
        return save_checkpoint(self.out_dir, self.step, self.generator, self._models(), self._meta(),
                               self.config.to_json(), keep=self.config.log.keep_checkpoints, rank=self.rank,
                               world_size=self.world_size)

    def resume(self) -> bool:
        """Load the latest checkpoint under `out_dir` if there is one; it must come from as many ranks."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        meta = load_checkpoint(path, self._models(), self.world_size)
        self.step, self.skipped = meta["step"], dict(meta["skipped"])
        mine = meta["ranks"][self.rank]
        self.rng.set_state(mine["rng"])
        self.batches.load_state_dict(mine["data"])
        self.type_counts = Counter(mine.get("type_counts", {}))
        return True

    def _micro_batches(self) -> list[EditBatch]:
        return [next(self.batches) for _ in range(self.accumulation)]

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (so every rank stops at the same step)."""
        if not dist.is_initialized():
            return flag
        value = torch.tensor([float(flag)], device=self.generator.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def train(self, *, until: int | None = None, progress: bool = True,
              seconds: float | None = None) -> list[dict[str, float]]:
        """Run steps until `until` (default: the schedule's total) or, when given, until `seconds` have passed (then
        checkpoint), logging and checkpointing on cadence."""
        schedule, log = self.config.schedule, self.config.log
        until = schedule.total_steps if until is None else until
        deadline = None if seconds is None else time.monotonic() + seconds
        monitor = Monitor(self.out_dir, enabled=self.rank == 0, resumed_at=self.step)
        history = []
        bar = tqdm(total=until, initial=self.step, disable=not progress, desc="train", dynamic_ncols=True)
        while self.step < until:
            metrics: dict[str, float] = {}
            if phase(self.step, schedule) != "warmup" and self.config.loss.lambda_dmd > 0:  # the fake score serves DMD
                for _ in range(schedule.fake_steps_per_generator_step):
                    metrics.update(self.fake_score_step(*self._micro_batches()))
            micro_batches = self._micro_batches()
            output = self.generator_step(*micro_batches)
            batch = micro_batches[-1]
            metrics.update(output.metrics)
            self.step += 1
            history.append({"step": self.step, **metrics})
            if self.step % log.log_every == 0 or self.step == until:
                monitor.scalars(self.step, metrics)
            if self.rank == 0 and (self.step % log.image_every == 0 or self.step == until):
                monitor.edit_grid(self.step, batch, self.generator.decode_latents(output.samples))
            out_of_time = deadline is not None and self._any_rank(time.monotonic() > deadline)
            if self.step % log.checkpoint_every == 0 or self.step == until or out_of_time:
                self.save()
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items() if k.startswith("loss/")})
            bar.update(1)
            if out_of_time:
                break
        bar.close()
        monitor.close(history)
        return history
