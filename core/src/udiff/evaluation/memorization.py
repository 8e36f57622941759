"""Near-copies of training images (Carlini et al. 2023; Somepalli et al. 2023): is a sample closer
to a training image of its label than new real images of that label come?

For every generated sample: the distance to its nearest training image of the same label, in the
feature space FID uses and in pixels (RMS over ``[-1, 1]`` pixels). The yardstick is the same
distance for real images the comparison set does not contain: each training image against the
other training images of its label (leave-one-out), i.e. how close a fresh draw from the data
comes to the training set without any model. A sample closer than the 1st percentile of those
distances is counted as a near-copy; a model that generalises makes about 1% of them, a model
that memorised makes many.
"""

from __future__ import annotations

import torch

from ..images import grid

PERCENTILE = 1.0  # of the held-out (leave-one-out) real distances
SHOWN = 8  # closest sample/training pairs in the PNG


def nearest(queries: torch.Tensor, refs: torch.Tensor, leave_one_out: bool = False):
    """Distance ``[Q]`` and index ``[Q]`` of each query's nearest row of ``refs`` (``[R, F]``);
    with ``leave_one_out`` the queries are ``refs`` and a row never matches itself."""
    d = torch.cdist(queries.double(), refs.double())  # [Q, R]
    if leave_one_out:
        d.fill_diagonal_(float("inf"))
    dist, idx = d.min(dim=1)
    return dist, idx


def flat(images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, C*H*W], RMS-scaled
    return images.flatten(1) / images[0].numel() ** 0.5


class NearCopies:
    """The real side, computed once per run: each space's real points and, per label, the
    leave-one-out yardstick and its threshold; :meth:`score` then measures any sample set."""

    def __init__(self, real_images, real_features, real_labels, names: list[str]) -> None:
        self.images, self.labels, self.names = real_images, real_labels, names
        self.members = [(real_labels == k).nonzero()[:, 0] for k in range(len(names))]  # [n_k]
        self.spaces = {}
        for space, real in (("features", real_features), ("pixels", flat(real_images))):
            held = torch.cat([nearest(real[m], real[m], leave_one_out=True)[0]
                              for m in self.members if len(m) >= 2])  # [M]; one image: no other
            self.spaces[space] = (real, held, torch.quantile(held, PERCENTILE / 100).item())

    def score(self, fake_images, fake_features, fake_labels) -> tuple[dict, dict]:
        """-> (the ``memorization`` block of metrics.json, the closest pairs for the picture)."""
        names = self.names
        report, pairs = {"held_out": "leave-one-out (each training image against the others of "
                         "its label)", "percentile": PERCENTILE}, None
        for space, fake in (("features", fake_features), ("pixels", flat(fake_images))):
            real, held, threshold = self.spaces[space]
            fake_d = torch.full((len(fake),), float("inf"), dtype=torch.float64)  # [N] nearest
            fake_match = torch.zeros(len(fake), dtype=torch.long)  # [N] its index in the real set
            for k, mine in enumerate(self.members):
                theirs = (fake_labels == k).nonzero()[:, 0]
                if len(mine) and len(theirs):
                    dist, idx = nearest(fake[theirs], real[mine])
                    fake_d[theirs], fake_match[theirs] = dist, mine[idx]
            copies = fake_d < threshold  # [N]
            report[space] = {
                "threshold": threshold,
                "near_copy_share": copies.double().mean().item(),
                "near_copy_share_per_label": {
                    names[k]: copies[fake_labels == k].double().mean().item()
                    for k in range(len(names)) if (fake_labels == k).any()},
                "median_sample_distance": fake_d.median().item(),
                "median_real_distance": held.median().item(),
            }
            if space == "pixels":
                order = fake_d.argsort()[:SHOWN]
                pairs = {"samples": fake_images[order], "training": self.images[fake_match[order]],
                         "distances": fake_d[order].tolist(),
                         "labels": [names[int(fake_labels[i])] for i in order]}
        report["closest"] = [{"label": label, "pixel_distance": d}
                             for label, d in zip(pairs["labels"], pairs["distances"], strict=True)]
        return report, pairs


def memorization(real_images, real_features, real_labels, fake_images, fake_features, fake_labels,
                 names: list[str]) -> tuple[dict, dict]:
    """One sample set against one real set (see :class:`NearCopies`)."""
    return NearCopies(real_images, real_features, real_labels, names).score(
        fake_images, fake_features, fake_labels)


def pairs_picture(pairs: dict):
    """Two rows: the 8 samples closest to a training image (top), that training image (below)."""
    return grid(torch.cat([pairs["samples"], pairs["training"]]), rows=2)
