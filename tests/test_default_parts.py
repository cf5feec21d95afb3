"""The real default weights, offline: SmolLM2-135M-Instruct (from GGUF, cached) and EfficientNet-Lite0."""

import matplotlib.cbook
import pytest
import torch
from PIL import Image

from vistune.config import ModelConfig
from vistune.model.llm import resolve_llm_path
from vistune.model.vision import EfficientNetTower

pytestmark = pytest.mark.slow


def test_smollm2_is_cached_as_safetensors_and_answers():
    from pathlib import Path

    from vistune.model.llm import load_llm

    path = Path(resolve_llm_path("smollm2-135m-instruct"))
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    model, tok = load_llm("smollm2-135m-instruct")
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_efficientnet_lite0_has_imagenet_weights():
    """The real weights classify a photo: Grace Hopper in uniform (ImageNet class 652, military uniform)."""
    from efficientnet_lite_pytorch import EfficientNet

    from vistune.data.image import ImageProcessor
    from vistune.model.vision import EFFICIENTNET_WEIGHTS
    from vistune.paths import package_dir

    tower = EfficientNetTower("efficientnet-lite0", -1)
    assert tower.num_tokens == 49 and tower.hidden_size == 1280
    pkg, rel = EFFICIENTNET_WEIGHTS["efficientnet-lite0"]
    classifier = EfficientNet.from_name("efficientnet-lite0")
    classifier.load_state_dict(torch.load(package_dir(pkg, "") / rel, weights_only=True))
    classifier.eval()
    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    pixels = ImageProcessor(tower.processor_config())(image)[None]
    with torch.no_grad():
        assert classifier(pixels).argmax().item() == 652
        # the tower's head features are the classifier's own pre-pooling features
        torch.testing.assert_close(tower(pixels), classifier.extract_features(pixels).flatten(2).transpose(1, 2))


def test_default_model_builds_and_chats():
    from vistune.inference.assistant import Assistant

    model = Assistant.build(ModelConfig())
    assert model.num_image_tokens == 49
    assert model.vision_tower.hidden_size == 320  # layer -2: the last MBConv block
    image = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    answer = model.chat(image, "What is in the image?", max_new_tokens=8)
    assert isinstance(answer, str) and answer
    assert "Paris" in model.chat(None, "What is the capital of France?", max_new_tokens=12)
