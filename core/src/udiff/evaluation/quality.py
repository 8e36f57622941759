"""Sample quality in a named feature space: FID and KID (torchmetrics' implementations), within-label
diversity, and the autoencoder's reconstruction PSNR/SSIM.

Features come from the FID Inception network (torch-fidelity's port of the TF 2015-12-05 graph,
what every published FID uses) when its weights are on disk, otherwise from the reference
classifier's penultimate layer. Numbers in the two spaces are not comparable, so every result
names its space (``fid_features``).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

# From their modules: torchmetrics.image exports them only when torch-fidelity is installed.
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..errors import UdiffError
from ..weights.pretrained import read_weights
from .reference import ReferenceClassifier

# torch-fidelity's download name: where torch.hub's cache keeps it after any FID run online.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class ClassifierFeatures(nn.Module):
    """``[B, C, S, S]`` in [-1, 1] -> the reference classifier's ``[B, 128]`` features."""

    name = "reference_classifier"

    def __init__(self, classifier: ReferenceClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class InceptionFeatures(nn.Module):
    """``[B, C, H, W]`` in [-1, 1] -> FID Inception pool features ``[B, 2048]`` (grey repeated to
    RGB, uint8 as the network expects, resized to 299 inside it)."""

    name = "inception"

    def __init__(self, weights: Path) -> None:
        super().__init__()
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise UdiffError("FID in Inception features needs the extra: pip install "
                             "'udiff-core[fid]'") from None
        from torchmetrics.image.fid import NoTrainInceptionV3

        state = read_weights(weights)
        # torch-fidelity loads its file with weights_only=False: hand it tensors we have already
        # read safely instead of the user's file.
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / "inception.pth")
            try:
                self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                              feature_extractor_weights_path=str(Path(tmp) / "inception.pth"))
            except RuntimeError as e:  # load_state_dict: wrong architecture
                raise UdiffError(f"--inception-weights {weights}: not the FID Inception network "
                                 f"({str(e).splitlines()[0]})") from None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return self.net(((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))


def inception_weights(path: str | Path | None = None) -> Path | None:
    """The explicit ``--inception-weights`` path, else torch.hub's cached copy, else None."""
    if path is not None:
        if not Path(path).is_file():
            raise UdiffError(f"--inception-weights {path} does not exist")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return cached if cached.is_file() else None


@torch.no_grad()
def embed(features: nn.Module, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, F]`` float64 features."""
    features.eval()
    return torch.cat([features(images[i:i + batch]).double() for i in range(0, len(images), batch)])


class _Given(nn.Module):
    """Feeds precomputed features to torchmetrics (computed once, reused per label)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between two feature sets ``[N, F]``, ``[M, F]``."""
    d = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Given(d))
    size = min(len(real), len(fake), 1000)  # KID's subsets may not exceed either set
    with warnings.catch_warnings():  # "KID keeps all features in memory": they are ours already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(d), subsets=50, subset_size=size)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    torch.manual_seed(seed)  # KID draws its subsets from the global generator
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def diversity(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise L2 distance within each label, averaged over labels. A collapsed generator
    scores far below real data."""
    per = [torch.pdist(features[labels == k].flatten(1).double()).mean()
           for k in labels.unique() if (labels == k).sum() > 1]
    return float(torch.stack(per).mean())


@torch.no_grad()
def reconstruction(autoencoder: nn.Module, images: torch.Tensor, batch: int = 256) -> dict:
    """PSNR (dB) and SSIM of encode -> decode on ``images`` in [-1, 1]."""
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    recon = torch.cat([autoencoder.decode(autoencoder.encode(images[i:i + batch].to(device)))
                       .float().clamp(-1, 1).cpu() for i in range(0, len(images), batch)])
    return {"psnr": round(float(peak_signal_noise_ratio(recon, images, data_range=(-1.0, 1.0))), 3),
            "ssim": round(float(structural_similarity_index_measure(recon, images, data_range=2.0)), 4),
            "images": len(images)}
