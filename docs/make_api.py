"""Generate docs/api.md from the docstrings of videomac's public modules (``__all__``), with ``inspect``.

python docs/make_api.py
"""

import importlib
import inspect
import os
import re

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")

# (module, one-line role), layer by layer from the bottom (docs/design.md §3).
MODULES = [
    ("videomac.settings", "settings declared once on dataclass fields: checks and command-line options"),
    ("videomac.masking", "symmetric frame-pair masks, patchify/unpatchify"),
    ("videomac.registry", "the published-weights registry"),
    ("videomac.presets", "the paper's pretraining recipes"),
    ("videomac.pretrained", "verified downloads for pretrained=True"),
    ("videomac.sparse", "the sparse execution engine: backend names and what 'auto' picks per device"),
    ("videomac.sparse.context", "the mask of a forward pass (keep=: static packed sizes)"),
    ("videomac.sparse.blocks", "how a model family declares itself for sparse execution"),
    ("videomac.sparse.masked", "the masked backend: sparse execution layer by layer on dense maps"),
    ("videomac.sparse.visible", "the visible backend: execution on packed visible tokens"),
    ("videomac.sparse.packed", "the packed spatial kernels (convs, max-pool) and their index tables"),
    ("videomac.models.encoder", "SparseEncoder: run a dense ConvNet sparsely"),
    ("videomac.models.videomac_convnext", "the authors' ConvNeXt-V2 / V1 (timm's ConvNeXt plus stage norms)"),
    ("videomac.models.videomac_convnext_iso", "the isotropic ConvNeXt-V2 of Table 2"),
    ("videomac.pretrain.model", "the VideoMAC module: online/target encoder-decoders and losses"),
    ("videomac.pretrain.data", "frame-pair datasets from videos, frame folders or built-in videos"),
    ("videomac.pretrain.sources", "finding the videos of a pretraining source"),
    ("videomac.pretrain.clips", "reading frame pairs out of one video (one read path per clip kind)"),
    ("videomac.pretrain.decode", "JPEG decoding at reduced scale, crops and resizes in uint8"),
    ("videomac.pretrain.loader", "the epoch order, the DataLoader and batches on the device"),
    ("videomac.pretrain.prepare", "pre-resized copies of datasets (`videomac prepare`)"),
    ("videomac.pretrain.config", "the settings of a pretraining run"),
    ("videomac.pretrain.train", "the pretraining run: `pretrain(cfg)`, read top to bottom"),
    ("videomac.pretrain.step", "the one train step (`videomac pretrain` and `videomac bench pretrain`)"),
    ("videomac.pretrain.state", "where a run is: step, position in the epoch, RNG (exact resume)"),
    ("videomac.pretrain.feed", "the run's batches: seeded items, epoch plans, the DataLoader"),
    ("videomac.pretrain.stop", "stopping early: signals and --stop-after"),
    ("videomac.pretrain.metrics", "what a run reports: metrics.jsonl, TensorBoard, skips, figures, summary"),
    ("videomac.pretrain.distributed", "torchrun's processes and the run's collectives"),
    ("videomac.pretrain.checkpoint", "reading and writing pretraining runs"),
    ("videomac.pretrain.visualize", "reconstruction figures"),
    ("videomac.pretrain.curves", "loss-curve figures"),
    ("videomac.pretrain.progress", "progress bars and plain log lines"),
    ("videomac.eval.settings", "the settings of eval and propagate (protocol and per-run)"),
    ("videomac.eval.features", "frozen features for label propagation"),
    ("videomac.eval.propagation", "label propagation (CRW protocol)"),
    ("videomac.eval.video", "streaming video input/output and first-frame masks"),
    ("videomac.eval.runner", "DAVIS / VIP / JHMDB evaluation runners"),
    ("videomac.eval.benchmark", "one call per benchmark (`videomac eval`)"),
    ("videomac.eval.davis", "DAVIS J&F"),
    ("videomac.eval.metrics", "metrics"),
    ("videomac.eval.datasets", "benchmark readers and label PNGs"),
    ("videomac.eval.track", "track a first-frame mask through any video (`videomac propagate`)"),
    ("videomac.hub", "publishing: export, model cards, Hub push, torch.hub"),
    ("videomac.convert", "import of the authors' checkpoints"),
    ("videomac.bench.pretrain", "pretraining step benchmark"),
    ("videomac.bench.propagate", "label propagation benchmark"),
    ("videomac.bench.data", "data loading benchmark"),
    ("videomac.synthetic", "procedural videos with exact labels"),
    ("videomac.frames", "the one frame reader: video files and frame folders, by number or in order"),
    ("videomac.media", "frame and video files, frame order, 16-bit-safe RGB (every reader)"),
    ("videomac.outputs", "the one output rule of every writing command; what a run folder is"),
    ("videomac.files", "atomic writes"),
]


def _doc(obj) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "").strip()


class _Raw(str):
    """A string annotation shown without quotes (modules use ``from __future__ import annotations``)."""

    def __repr__(self) -> str:
        return str(self)


def _signature(name, obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = [
        q.replace(annotation=_Raw(q.annotation)) if isinstance(q.annotation, str) else q
        for q in sig.parameters.values()
    ]
    ret = sig.return_annotation
    sig = sig.replace(parameters=params, return_annotation=_Raw(ret) if isinstance(ret, str) else ret)
    return re.sub(r"<function <lambda> at 0x[0-9a-f]+>", "<lambda>", f"{name}{sig}")  # no address: a stable page


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, o in vars(module).items()
            if not n.startswith("_")
            and getattr(o, "__module__", None) == module.__name__
            and (inspect.isclass(o) or inspect.isfunction(o))
        ]
    return [(n, getattr(module, n)) for n in names if hasattr(module, n)]


def render_object(name, obj) -> list:
    out = []
    if inspect.isclass(obj):
        out.append(f"### class `{_signature(name, obj)}`\n")
        if _doc(obj):
            out.append(_doc(obj) + "\n")
        for mname, m in vars(obj).items():
            if mname.startswith("_") or not (
                inspect.isfunction(m) or isinstance(m, (property, staticmethod, classmethod))
            ):
                continue
            fn = m.fget if isinstance(m, property) else getattr(m, "__func__", m)
            sig = (
                mname
                if isinstance(m, property)
                else _signature(mname, fn).replace("(self, ", "(").replace("(self)", "()")
            )
            doc = _doc(fn)
            out.append(f"- `{sig}`" + (f": {doc}" if doc else "") + "\n")
        if out[-1].startswith("- "):
            out.append("")
    elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
        out.append(f"### `{_signature(name, obj)}`\n")
        if _doc(obj):
            out.append(_doc(obj) + "\n")
    else:
        text = (
            "{" + ", ".join(map(repr, sorted(obj))) + "}" if isinstance(obj, (set, frozenset)) else repr(obj)
        )  # sets print in hash order
        out.append(f"### `{name}`\n\n`{text if len(text) < 100 else type(obj).__name__}`\n")
    return out


def render() -> str:
    lines = [
        "# API reference",
        "",
        "<!-- generated by docs/make_api.py from the docstrings; edit those, not this page -->",
        "",
        "`import videomac` registers the `videomac_*` encoders with timm and exports `SparseEncoder`,",
        "`VideoMAC`, `register_sparse_container` and `masking`. Public names per module (their `__all__`),",
        "layer by layer from the bottom (a module imports only from the layers below it; see",
        "[the layer table](index.md#layout)):",
        "",
    ]
    for mod, role in MODULES:
        lines.append(f"- [`{mod}`](#{mod.replace('.', '')}): {role}")
    lines.append("")
    for mod, _role in MODULES:
        module = importlib.import_module(mod)
        lines += [f"## {mod}", ""]
        if _doc(module):
            lines += [_doc(module), ""]
        for name, obj in _public(module):
            lines += render_object(name, obj)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    with open(PAGE, "w") as f:
        f.write(render())
    print(f"wrote {PAGE}")
