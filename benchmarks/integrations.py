"""Client x model table: every VideoMAC encoder in the libraries that consume timm backbones, each
cell "ok" with the max abs difference to eager PyTorch, or the first line of the error.

    python benchmarks/integrations.py --models videomac_cnxv2_atto videomac_rn18 --size 64

(default: every ``videomac_*`` model; the figures in docs/integrations.md). CPU, 64 px by default.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _diff(a, b) -> float:
    a = a if isinstance(a, (list, tuple)) else [a]
    b = b if isinstance(b, (list, tuple)) else [b]
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


def smp_arch(arch):
    def run(name, x, tmp):
        import segmentation_models_pytorch as smp

        model = getattr(smp, arch)(encoder_name=f"tu-{name}", encoder_weights=None, classes=2)
        out = model(x)
        out.mean().backward()
        return "ok"

    return run


def transformers_automodel(name, x, tmp):
    import timm
    import transformers

    from videomac.hub import export_folder

    model = timm.create_model(name).eval()
    export_folder(model, os.path.join(tmp, "exp"))
    hf = transformers.AutoModel.from_pretrained(os.path.join(tmp, "exp")).eval()
    with torch.no_grad():
        return f"ok {_diff(hf(pixel_values=x).last_hidden_state, model.forward_features(x)):.1e}"


def onnx_export(dynamo):
    def run(name, x, tmp):
        import onnxruntime as ort
        import timm

        model = timm.create_model(name, features_only=True).eval()
        path = os.path.join(tmp, "m.onnx")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        x3 = torch.randn(3, *x.shape[1:])
        got = sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})
        with torch.no_grad():
            return f"ok {_diff(got, [f.numpy() for f in model(x3)]):.1e}"

    return run


def torch_export(name, x, tmp):
    import timm

    model = timm.create_model(name, features_only=True).eval()
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    x3 = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        return f"ok {_diff([t.numpy() for t in ep.module()(x3)], [t.numpy() for t in model(x3)]):.1e}"


def jit_script(name, x, tmp):
    import timm

    model = timm.create_model(name, features_only=True).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        return f"ok {_diff([t.numpy() for t in scripted(x)], [t.numpy() for t in model(x)]):.1e}"


CLIENTS = {
    "smp Unet": smp_arch("Unet"),
    "smp DeepLabV3+": smp_arch("DeepLabV3Plus"),
    "transformers AutoModel": transformers_automodel,
    "ONNX legacy": onnx_export(False),
    "ONNX dynamo": onnx_export(True),
    "torch.export": torch_export,
    "torch.jit.script": jit_script,
}


def main() -> int:
    import timm

    import videomac  # noqa: F401

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="default: every videomac_* model")
    p.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS), help="default: all")
    p.add_argument("--size", type=int, default=64, help="square input size in px (default 64)")
    args = p.parse_args()
    models = args.models or timm.list_models("videomac_*")
    print("| model | " + " | ".join(args.clients) + " |")
    print("| --- |" + " --- |" * len(args.clients))
    for name in models:
        cells = []
        for client in args.clients:
            torch.manual_seed(0)
            x = torch.randn(2, 3, args.size, args.size)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    cell = CLIENTS[client](name, x, tmp)
                except Exception as e:  # the table reports any client's failure, whatever its type
                    cell = f"fails: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:80]}"
            cells.append(cell)
            print(f"{name} {client}: {cell} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        print(f"| {name} | " + " | ".join(c.replace("|", "/") for c in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
