"""tools/gpu_check.py's dry run: every check of the GPU script, tiny, on the CPU, so that the
script is known to run before someone spends GPU time on it."""
import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_dry_run(tmp_path):
    p = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {r["check"]: r for r in report["rows"]}
    assert checks["tests/test_device.py"]["ok"] and "passed" in checks["tests/test_device.py"][
        "result"]
    assert checks["torchrun x2 (gloo)"]["ok"]
    assert [(s["compile"], s["checkpoint"]) for s in report["steps"]] == [(False, False),
                                                                          (False, True)]
    assert all(s["ms"] > 0 and s["clips_per_s"] > 0 and s["peak_gib"] > 0
               for s in report["steps"])
    assert report["tflop_per_step"] > 0 and report["matmul_peak_tflops"] > 0
    assert "| --compile | --grad_checkpoint |" in p.stdout
