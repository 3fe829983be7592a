"""The optimizer and learning-rate schedule: one AdamW, a parameter group per part, each with its own schedule.

    generator            train.lr          warm-up then decay from step 0 (frozen with train.train_generator false)
    question encoder     train.encoder_lr  held at 0 for train.encoder_freeze_steps, then its own warm-up/decay
    context encoder      train.context_encoder_lr, train.context_encoder_freeze_steps (when it is trained)

The encoders wait because their only gradient is the doc-score term of the RAG loss, which is noise until the
generator reads the passages it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def lr_multiplier(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of a base learning rate at `step`: linear warm-up, then linear or polynomial (power 2) decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (1.0 - progress) ** (2.0 if schedule == "polynomial" else 1.0)


def frozen_then_scheduled(step: int, freeze: int, warmup: int, total: int, schedule: str) -> float:
    """0 for the first `freeze` steps, then `lr_multiplier` restarted over the steps that remain."""
    if step < freeze:
        return 0.0
    return lr_multiplier(step - freeze, warmup, max(1, total - freeze), schedule)


@dataclass
class ParamGroupSchedule:
    """One parameter group's multiplier, a plain picklable callable (LambdaLR takes one per group)."""

    freeze: int
    warmup: int
    total: int
    schedule: str

    def __call__(self, step: int) -> float:
        return frozen_then_scheduled(step, self.freeze, self.warmup, self.total, self.schedule)


def build_optimizer(parts, cfg, total_steps: int):
    """(AdamW, LambdaLR) over the parts `cfg` trains; parameters of parts not trained get requires_grad False."""
    t, m = cfg.train, cfg.model
    question = list(parts.head.question_encoder.parameters())
    context = list(parts.context_encoder.parameters()) if parts.context_encoder is not None else []
    encoder_ids = {id(p) for p in question + context}
    generator = [p for p in parts.head.parameters() if id(p) not in encoder_ids]
    groups, schedules = [], []

    def add(params, lr: float, freeze: int) -> None:
        groups.append({"params": [p for p in params if p.requires_grad], "lr": lr})
        schedules.append(ParamGroupSchedule(freeze, t.warmup_steps, total_steps, t.schedule))

    if t.train_generator:
        add(generator, t.lr, 0)
    else:
        for p in generator:
            p.requires_grad_(False)
    for params, trained, lr, freeze in ((question, m.train_question_encoder, t.encoder_lr, t.encoder_freeze_steps),
                                        (context, m.train_context_encoder, t.context_encoder_lr,
                                         t.context_encoder_freeze_steps)):
        if params and trained:
            add(params, lr, freeze)
        else:
            for p in params:
                p.requires_grad_(False)
    optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
