"""Which model files a workflow loads (any loader, any input name) and the warmth order."""

from __future__ import annotations

from comfyfleet.domain.models import NO_MODELS, models_of, warmth

# The default text-to-image graph of ComfyUI (API format), with a LoRA and a custom loader whose
# input has a name of its own, and inputs that only look like files.
TXT2IMG = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "styles/Detail.SAFETENSORS", "strength_model": 1.0,
                                                  "strength_clip": 1.0, "model": ["4", 0], "clip": ["4", 1]}},
    "11": {"class_type": "UnetLoaderGGUF", "inputs": {"unet name": "flux1-dev-Q8_0.gguf"}},
    "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["10", 1]}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["10", 0],
                                               "positive": ["6", 0], "negative": ["6", 0], "latent_image": ["5", 0]}},
    "20": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["3", 0]}},
}


def test_every_loader_counts_whatever_its_input_is_called():
    assert models_of(TXT2IMG) == {"sd_xl_base_1.0.safetensors", "styles/Detail.SAFETENSORS",
                                  "flux1-dev-Q8_0.gguf", "4x-UltraSharp.pth"}


def test_workflows_without_models_or_with_odd_shapes_load_nothing():
    assert models_of({"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}) is NO_MODELS
    assert models_of({"1": "not a node", "2": {"inputs": None}, "3": {"inputs": {"x": ["1", 0]}}}) is NO_MODELS
    assert models_of({"1": {"class_type": "X", "inputs": {"text": "model.safetensors is great"}}}) is NO_MODELS


def test_warmth_orders_most_held_then_empty_then_other_models():
    job = frozenset({"a.safetensors", "b.safetensors"})
    both, one = frozenset(job), frozenset({"a.safetensors", "z.ckpt"})
    empty, other = frozenset(), frozenset({"z.ckpt"})
    assert sorted([other, empty, one, both], key=lambda warm: warmth(job, warm)) == [both, one, empty, other]
