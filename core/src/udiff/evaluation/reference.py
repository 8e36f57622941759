"""The reference classifier: does a sample look like the label it was asked for? Its penultimate
features are also the fallback feature space of FID/KID (``udiff.quality``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import LabelledImages


class ReferenceClassifier(nn.Module):
    """A small CNN: ``[B, C, S, S]`` in [-1, 1] -> logits ``[B, K]``; ``features`` is ``[B, 128]``."""

    def __init__(self, channels: int, num_labels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, num_labels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (a cheap, label-preserving augmentation)."""
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


EPOCHS, HOLDOUT, BATCH = 40, 0.2, 64  # the classifier's training (the time probe counts it too)


def train_reference(data: LabelledImages, seed: int = 0, epochs: int = EPOCHS,
                    progress: bool = True) -> tuple[ReferenceClassifier, float]:
    """Train on a stratified 80% and return the classifier with its held-out accuracy."""
    train, held = data.split(HOLDOUT, seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ReferenceClassifier(data.images.shape[1], len(data.label_names))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-len(train) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    with tqdm(total=steps, desc="reference classifier", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=gen)
            for i in range(0, len(order), BATCH):
                idx = order[i:i + BATCH]
                loss = F.cross_entropy(model(shift(train.images[idx], gen)), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
    model.eval()
    return model, accuracy(model, held.images, held.labels)[0]


@torch.no_grad()
def predict(model: ReferenceClassifier, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i:i + 512]).argmax(1) for i in range(0, len(images), 512)])


def accuracy(model, images, labels) -> tuple[float, dict[int, float]]:
    """Overall and per-label fraction classified as their label."""
    hit = (predict(model, images) == labels).float()
    per = {int(k): hit[labels == k].mean().item() for k in labels.unique()}
    return hit.mean().item(), per
