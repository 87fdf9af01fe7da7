"""One call per benchmark: build the frozen feature extractor and run DAVIS, VIP or JHMDB (``videomac eval``)."""

from __future__ import annotations

import sys
from typing import Dict, List, Optional, Tuple

__all__ = ["BENCHMARKS", "run_benchmark"]

# benchmark -> the metrics it reports, headline first
BENCHMARKS: Dict[str, List[str]] = {
    "davis": ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"],
    "vip": ["mIoU"],
    "jhmdb": ["PCK@0.1", "PCK@0.2"],
}


def run_benchmark(
    benchmark: str,
    model: str,
    root: str,
    out: str,
    weights: Optional[str] = None,
    device: Optional[str] = None,
    stage: Optional[str] = None,
    stride: Optional[int] = None,
    half: bool = False,
    config=None,
    **kwargs,
) -> Tuple[Dict[str, float], List[str]]:
    """Label propagation with a frozen encoder on ``benchmark`` (``davis``, ``vip`` or ``jhmdb``).

    ``config``: a :class:`~videomac.eval.propagation.PropagationConfig` (default: CRW's protocol).
    ``device`` None: CUDA when available; ``half``: bf16 features on CUDA. ``kwargs`` go to the
    benchmark's runner (``run_davis``, ``run_vip``, ``run_jhmdb``); numeric ones are range-checked
    (:class:`videomac.eval.settings.RunSettings`) before anything is built. Returns the metrics and the
    keys that benchmark reports.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; available: {', '.join(BENCHMARKS)}")
    import torch

    from videomac.eval.features import FeatureExtractor
    from videomac.eval.outputs import check_output_folder
    from videomac.eval.propagation import PropagationConfig
    from videomac.eval.runner import run_davis, run_jhmdb, run_vip
    from videomac.eval.settings import check_settings, resolve_device

    check_settings(stride=stride, **kwargs)
    check_output_folder(out, [root])  # before the encoder is built; the runner also checks the dataset's folders
    device = resolve_device(device)
    dtype = torch.bfloat16 if half and device.startswith("cuda") else torch.float32
    extractor = FeatureExtractor(model, stage=stage, stride=stride, weights=weights, device=device, dtype=dtype)
    config = config or PropagationConfig()
    print(f"encoder: {extractor.describe()}  device: {device}", file=sys.stderr)
    runner = dict(davis=run_davis, vip=run_vip, jhmdb=run_jhmdb)[benchmark]
    return runner(extractor, root, out, config=config, **kwargs), BENCHMARKS[benchmark]
