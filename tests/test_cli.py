import json
import subprocess

import pytest

from conftest import needs_cifar10
from zoo.cli import main


@needs_cifar10
def test_baseline_command_runs_on_real_cifar10(tmp_path):
    out = tmp_path / "baseline.json"
    proc = subprocess.run(["ssl-zoo", "baseline", "--per-class", "100", "--linear-solver", "fast",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "k-NN (k=5, Euclidean)" in proc.stdout and "linear probe (fast)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["test_images"] == 1000
    assert 0.15 < result["knn"] < 0.6 and 0.15 < result["linear"] < 0.7  # above chance, below trained


def test_unknown_command_and_bad_data_exit_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    (tmp_path / "train" / "cat").mkdir(parents=True)  # an ImageFolder root without images
    assert main(["baseline", "--data", str(tmp_path), "--per-class", "1"]) == 2
    err = capsys.readouterr().err
    assert "ssl-zoo baseline: error: no images found" in err and str(tmp_path) in err
