"""torch.hub entry points: ``torch.hub.load('OWNER/videomac', 'videomac_cnxv2_s', pretrained=True)``.

One entry point per registered videomac model; pretrained weights come from the same registry as
``timm.create_model(name, pretrained=True)`` (videomac/weights/registry.json), verified by sha256.
"""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from videomac.hub import hub_entrypoints as _hub_entrypoints  # noqa: E402

globals().update(_hub_entrypoints())
