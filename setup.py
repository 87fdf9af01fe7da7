from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "videomac" / "version.py").read_text(), version)

setup(
    name="videomac",
    version=version["__version__"],
    description="VideoMAC: masked video modeling with sparse ConvNets (CVPR 2024), as a library.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["videomac", "videomac.*"]),
    package_data={"videomac.weights": ["*.json"]},  # the weights registry, one source of truth
    install_requires=[
        "torch>=2.1",
        # the oldest timm the models' tests pass on (.ci/run runs them there): before 1.0.31 a pruned ConvNeXt
        # keeps its head and num_features, before 1.0.22 it cannot be built on the meta device, before
        # 1.0.20 its layers take no device/dtype
        "timm>=1.0.31",
        "huggingface_hub>=0.23",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "simplejpeg>=1.8",  # libjpeg-turbo: JPEG frames decoded at DCT scale straight into numpy (data loading)
        "av>=12",
        "tqdm",
    ],
    extras_require={
        "dev": [
            "pytest>=7",
            "ruff",
            "import-linter>=2.1",
            "scipy",  # the JHMDB .mat test
            # the clients tests/test_integrations.py runs the encoders in (docs/integrations.md)
            "segmentation-models-pytorch>=0.5",
            "transformers>=4.47",  # its timm wrapper (AutoModel / pipeline on a timm folder)
            "onnx",
            "onnxscript",  # torch.onnx.export(dynamo=True)
            "onnxruntime",
            "lightning>=2",
        ],
    },
    entry_points={"console_scripts": ["videomac=videomac.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
