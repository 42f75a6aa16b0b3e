import cv2
import numpy as np
import pytest
import torch
from skimage.data import chelsea

from cxr_edge.export.config import ARCH_NAMES
from cxr_edge.export.zoo import ARCHITECTURES, build_model, efficientnet_lite0_imagenet, remap_lukemelas_lite0
from cxr_edge.runtime.errors import CxrEdgeError


def test_cli_names_match_the_registry():
    assert tuple(ARCHITECTURES) == ARCH_NAMES


def test_remapped_imagenet_weights_call_chelsea_a_cat():
    model = efficientnet_lite0_imagenet()
    image = cv2.resize(chelsea().astype(np.float32) / 255, (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(((image - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
    with torch.inference_mode():
        probabilities = model(x).softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert 281 <= top <= 285, top  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(probabilities[top]) > 0.5


def test_remap_rejects_foreign_keys():
    with pytest.raises(CxrEdgeError, match="unexpected key"):
        remap_lukemelas_lite0({"_blocks.0._weird.weight": torch.zeros(1)})


def test_grayscale_stem_equals_the_rgb_network_on_gray_images():
    gray_model, source = build_model("efficientnet_lite0", 4)
    assert source == "ImageNet (packaged)"
    rgb_backbone = efficientnet_lite0_imagenet()
    gray_model.eval()
    x = torch.rand(2, 1, 96, 96) * 2 - 1
    with torch.inference_mode():
        ours = gray_model.features(x)
        theirs = rgb_backbone.forward_features(x.repeat(1, 3, 1, 1))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_network_ends_in_pooling_and_one_linear_layer(arch):
    model, _ = build_model(arch, 4, pretrained=False)
    model.eval()
    x = torch.rand(2, ARCHITECTURES[arch].channels, 64, 64)
    with torch.inference_mode():
        logits = model(x)
        cam_logits, cam = model.forward_with_cam(x)
    assert logits.shape == (2, 4) and cam.shape[:2] == (2, 4) and cam.ndim == 4
    torch.testing.assert_close(cam_logits, logits, rtol=1e-4, atol=1e-4)


def test_resnet_loads_a_user_torchvision_checkpoint(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model, source = build_model("resnet18", 4, weights=path)
    assert source == f"file {path}"
    torch.testing.assert_close(model.features[0].weight, reference.conv1.weight)


def test_resnet_without_weights_warns_and_starts_from_scratch(caplog):
    _, source = build_model("resnet18", 4)
    assert source == "random initialisation"
    assert "training from scratch" in caplog.text


def test_bad_weights_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "weights.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CxrEdgeError, match="not a PyTorch weights file"):
        build_model("resnet18", 4, weights=garbage)
    wrong = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CxrEdgeError, match="do not fit torchvision resnet18"):
        build_model("resnet18", 4, weights=wrong)
    with pytest.raises(CxrEdgeError, match="unknown architecture"):
        build_model("vgg16", 4)
