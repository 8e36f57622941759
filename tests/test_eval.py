"""`udiff eval`: the metrics separate a trained model from an untrained one, real data beats both,
and every feature space and bad input is handled."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

from conftest import TINY, write_folder
from udiff import plugins

QUICK = ["--per-label", "10", "--steps", "10"]


def evaluate(cli, run, out, *flags) -> dict:
    code, stdout, err = cli("eval", run, *QUICK, *flags, "--out", out)
    assert code == 0, err
    assert json.loads(stdout.splitlines()[0])["fid"] == json.loads(out.read_text())["fid"]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.acceptance  # ~70 s of training: after the suite (.ci/run)
def test_eval_separates_trained_from_untrained_and_real_beats_both(cli, tmp_path):
    if "flux" not in plugins.registry().components["denoiser"]:
        pytest.skip("udiff-flux is not installed")
    # Flux tiny trains fastest on 2 cores (16 tokens); the untrained run shares its autoencoder.
    trained, untrained = tmp_path / "trained", tmp_path / "untrained"
    common = ["--data", "digits", "--backbone", "flux", "--preset", "tiny", "--batch-size", "48",
              "--lr", "2e-3"]
    assert cli("train", *common, "--autoencoder-steps", "200", "--max-steps", "700",
               "--out", trained)[0] == 0
    assert cli("train", *common, "--autoencoder", trained, "--max-steps", "0",
               "--out", untrained)[0] == 0
    good = evaluate(cli, trained, tmp_path / "good.json")
    bad = evaluate(cli, untrained, tmp_path / "bad.json")
    for m in (good, bad):
        assert m["fid_features"] == "reference_classifier" and m["reference_accuracy"] >= 0.9
        assert set(m["fid_per_label"]) == set(m["kid_per_label"]) == {str(i) for i in range(10)}
        # the flow family's measured default (issue 29: CFG 1.5 in [0.2, 0.8])
        assert m["settings"] == {"per_label": 10, "steps": 10, "scheduler": "flow", "guidance": 1.5,
                                 "guidance_interval": [0.2, 0.8], "guidance_rescale": 0.0,
                                 "seed": 0, "real_images": 1797, "inception_weights": None}
        # the floor: two halves of the real digits
        assert m["fid_real_vs_real"] < m["fid"] and m["kid_real_vs_real"] < m["kid"]
        with Image.open(tmp_path / f"{'good' if m is good else 'bad'}.png") as im:
            assert im.height > 9 * 16
    assert good["label_accuracy"] >= bad["label_accuracy"] + 0.3, (good, bad)
    assert good["fid"] < 0.5 * bad["fid"] and good["kid"] < 0.5 * bad["kid"], (good, bad)
    assert good["autoencoder"] == bad["autoencoder"]  # the same autoencoder, the same score
    assert good["autoencoder"]["held_out"] and good["autoencoder"]["psnr"] > 20


def inception_file(path):
    """Random weights in the FID Inception layout (the real file has this form; no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fx

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:  # build the network without fetching its weights
        mp.setattr(fx, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_folder_dataset_with_inception_features(cli, tmp_path):
    pytest.importorskip("torch_fidelity")
    data = write_folder(tmp_path / "users")
    run = tmp_path / "run"
    code, _, err = cli("train", "--data", data, "--backbone", "unet", *TINY, "--out", run)
    assert code == 0, err
    assert [line for line in err.splitlines() if "fewer than 100 images" in line] == [
        "udiff: warning: 3 label(s) have fewer than 100 images: user0 (12), user1 (12), user2 (12);"
        " samples may copy training images: check `udiff eval`'s memorization (docs/evaluation.md, "
        "Memorisation)"]
    weights = inception_file(tmp_path / "inception.pth")
    m = evaluate(cli, run, tmp_path / "m.json", "--inception-weights", weights)
    assert m["fid_features"] == "inception" and m["settings"]["inception_weights"] == str(weights)
    assert set(m["label_accuracy_per_label"]) == {"user0", "user1", "user2"}
    assert m["reference_accuracy"] == 1.0  # colours separate the users: the classifier works
    assert m["settings"]["real_images"] == 36 and m["fid"] > m["fid_real_vs_real"]
    assert set(m["memorization"]["features"]["near_copy_share_per_label"]) == {
        "user0", "user1", "user2"}  # in the same (Inception) features as FID


def test_eval_bad_input_is_one_line(cli, tiny_run, tmp_path):
    cli.fails("eval", tmp_path / "nope", "--out", tmp_path / "m.json", match="does not exist")
    cli.fails("eval", tiny_run, "--out", tmp_path / "m.txt", match="must be a .json file")
    cli.fails("eval", tiny_run, "--per-label", "1", "--out", tmp_path / "m.json",
              match="at least 2")
    cli.fails("eval", tiny_run, "--scheduler", "flow", "--out", tmp_path / "m.json",
              match="cannot sample")
    cli.fails("eval", tiny_run, "--inception-weights", tmp_path / "none.pth",
              "--out", tmp_path / "m.json", match="does not exist")
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(pytest.MonkeyPatch))  # a pickle of a class: needs globals
    cli.fails("eval", tiny_run, "--inception-weights", evil, "--out", tmp_path / "m.json",
              match="weights_only=True")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    cli.fails("eval", tiny_run, "--inception-weights", wrong, "--out", tmp_path / "m.json",
              match="not the FID Inception network")
    assert not (tmp_path / "m.json").exists()
