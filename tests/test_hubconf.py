"""torch.hub from a bare checkout: ``hubconf.py`` of a copy of the repository imports and builds models with
the installed videomac out of reach (no site .pth files, so no editable finder; no PYTHONPATH)."""

import json
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torch_hub_load_from_a_checkout_without_installed_videomac(tmp_path):
    clone = tmp_path / "videomac-checkout"
    clone.mkdir()
    shutil.copy(REPO / "hubconf.py", clone / "hubconf.py")
    shutil.copytree(REPO / "videomac", clone / "videomac", ignore=shutil.ignore_patterns("__pycache__"))
    # torch, timm... stay importable, but -S skips site-packages' .pth files (the editable install's finder)
    libs = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path[:] = [p for p in sys.path if p] + {libs!r}
        import torch
        m = torch.hub.load({str(clone)!r}, 'videomac_rn18', source='local')
        import videomac, videomac.registry
        finders = [type(f).__name__ for f in sys.meta_path]
        print(json.dumps(dict(file=videomac.__file__, registry=videomac.registry.registry_path(),
                              model=type(m).__name__, params=sum(p.numel() for p in m.parameters()),
                              finders=finders)))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-E", "-c", code],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(clone.resolve())
    assert Path(out["registry"]).resolve() == (clone / "videomac" / "weights" / "registry.json").resolve()
    assert not any("Editable" in f or "editable" in f for f in out["finders"]), out["finders"]
    assert out["model"] == "VideoMACResNet" and out["params"] > 10_000_000
