"""Endless shuffled batches whose position is exactly resumable (the data-loading concern)."""

from __future__ import annotations

import torch


class Batches:
    """Endless shuffled batches whose position is exactly resumable.

    The loader's sampler draws each epoch's permutation from ``generator`` when the epoch starts;
    the generator's state at that moment plus the batches taken since are the position.
    ``streams`` are further generators that advance with the batches (the step's draws)."""

    def __init__(self, loader, generator: torch.Generator,
                 streams: dict[str, torch.Generator] | None = None) -> None:
        self.loader, self.generator, self.streams = loader, generator, streams or {}
        self.it, self.epoch_state, self.taken = None, None, 0

    def __next__(self):
        if self.it is None:
            self.epoch_state, self.taken = self.generator.get_state(), 0
            self.it = iter(self.loader)
        try:
            batch = next(self.it)
        except StopIteration:
            self.it = None
            return next(self)
        self.taken += 1
        return batch

    def position(self) -> dict:
        streams = {name: g.get_state() for name, g in self.streams.items()}
        if self.it is None:  # at an epoch boundary: the next epoch starts from here
            return {"epoch_generator": self.generator.get_state(), "taken": 0} | streams
        return {"epoch_generator": self.epoch_state, "taken": self.taken} | streams

    def restore(self, position: dict) -> None:
        for name, g in self.streams.items():
            g.set_state(position[name])
        self.generator.set_state(position["epoch_generator"])
        self.epoch_state, self.it = self.generator.get_state(), iter(self.loader)
        for _ in range(position["taken"]):
            next(self.it)
        self.taken = position["taken"]


def shuffled(dataset, batch_size: int, seed: int):
    """A shuffling DataLoader and the generator its sampler draws from (for :class:`Batches`)."""
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         drop_last=len(dataset) > batch_size, generator=gen)
    return loader, gen
