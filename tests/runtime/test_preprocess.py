import cv2
import numpy as np

from cxr_edge.runtime.model.contract import Contract
from cxr_edge.runtime.model.preprocess import load_for_contract, load_many, preprocess, resize, stack, to_input

CLASSES = ("normal", "covid19", "bacterial_pneumonia", "viral_pneumonia")


def test_stretch_normalise_and_repeat_channels():
    contract = Contract(input_size=(32, 48), class_names=CLASSES, channels=3, mean=(0.5, 0.4, 0.3),
                        std=(0.5, 0.25, 0.1))
    pixels = np.full((100, 60), 0.7, np.float32)
    out = preprocess(pixels, contract)
    assert out.shape == (3, 32, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(0.7 - 0.5) / 0.5, (0.7 - 0.4) / 0.25, (0.7 - 0.3) / 0.1], rtol=1e-6)


def test_pad_keeps_aspect_ratio_on_black():
    contract = Contract(input_size=(40, 40), class_names=CLASSES, channels=1, mean=(0.0,), std=(1.0,), fit="pad")
    pixels = np.ones((100, 50), np.float32)
    out = resize(pixels, contract)
    assert out.shape == (40, 40)
    assert out[:, 10:30].min() == 1.0
    assert out[:, :10].max() == 0.0 and out[:, 30:].max() == 0.0


def test_stack_is_contiguous_batch():
    contract = Contract(input_size=(16, 16), class_names=CLASSES, channels=1, mean=(0.5,), std=(0.5,))
    batch = stack([to_input(np.zeros((16, 16), np.float32), contract)] * 3)
    assert batch.shape == (3, 1, 16, 16) and batch.flags.c_contiguous
    assert (batch == -1.0).all()


def test_to_input_on_a_batch_equals_one_image_at_a_time():
    contract = Contract(input_size=(8, 8), class_names=CLASSES, channels=3, mean=(0.5, 0.4, 0.3), std=(0.5, 0.2, 0.1))
    images = np.random.default_rng(0).random((5, 8, 8), dtype=np.float32)
    batch = to_input(images, contract)
    assert batch.shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(batch, stack([to_input(image, contract) for image in images]))


def test_load_many_keeps_order_and_returns_every_unreadable_file(tmp_path):
    contract = Contract(input_size=(16, 16), class_names=CLASSES, channels=1, mean=(0.5,), std=(0.5,))
    paths = []
    for i, value in enumerate((0, 128, 255)):
        paths.append(tmp_path / f"{i}.png")
        image = np.full((48, 40), value, np.uint8)
        image[16:32, 12:28] = (value + 128) % 256  # some contrast: a flat image is refused as unusable
        cv2.imwrite(str(paths[-1]), image)
        if i == 0:
            paths.append(tmp_path / "broken.png")
            paths[-1].write_bytes(b"\x89PNG\r\n\x1a\n-- cut off")
    seen = []
    images, kept, errors = load_many(paths, contract, workers=3, on_progress=lambda: seen.append(1))
    assert kept == [0, 2, 3] and len(seen) == 4
    assert [e.path for e in errors] == [paths[1]]
    np.testing.assert_allclose(images[:, 0, 0], [0.0, 128 / 255, 1.0], rtol=1e-6)
    for image, i in zip(images, kept, strict=True):
        np.testing.assert_array_equal(image, resize(load_for_contract(paths[i], contract).pixels, contract))
