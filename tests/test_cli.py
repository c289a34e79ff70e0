import json
import subprocess

import pytest

from conftest import needs_cifar10
from zoo import list_models
from zoo.cli import main


def _run(capsys, *argv: str) -> tuple[str, str]:
    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@needs_cifar10
def test_baseline_offers_both_batch_norm_modes_through_the_probe_path(tmp_path, capsys):
    results = {}
    for bn in ("eval", "batch-stats"):
        out, err = _run(capsys, "baseline", "--per-class", "60", "--bn", bn, "--linear-solver", "fast",
                        "--json", str(tmp_path / f"{bn}.json"))
        results[bn] = json.loads((tmp_path / f"{bn}.json").read_text())
        assert f"train bank 600 images, test 600 images, BatchNorm {bn}" in out
        assert "k=5, raw features" in out and "solver fast" in out
        # not a terminal here: one line per phase on stderr
        phases = [line for line in err.splitlines() if line.endswith(" ...")]
        assert phases == ["features: train 600 images ...", "features: test 600 images ...", "k-NN (k=5) ...",
                          "linear probe (fast solver) ..."]
    for bn, r in results.items():
        assert set(r["protocol"]) == {"knn5", "linear"}
        for p in r["protocol"].values():
            assert p["batch_norm"] == bn and p["features_normalized"] is False and p["test_images"] == 600
    assert results["batch-stats"]["protocol"]["knn5"]["batch_size"] == 256
    assert ((results["eval"]["knn5"], results["eval"]["linear"])
            != (results["batch-stats"]["knn5"], results["batch-stats"]["linear"]))
    # the baseline is `ssl-zoo probe random-init-resnet18` with the notebook's options, not a copy of it
    _run(capsys, "probe", "random-init-resnet18", "--raw-features", "--train-per-class", "60", "--test-per-class", "60",
         "--json", str(tmp_path / "probe.json"))
    probed = json.loads((tmp_path / "probe.json").read_text())
    assert (probed["knn5"], probed["linear"]) == (results["eval"]["knn5"], results["eval"]["linear"])


def _local_entries() -> list[dict]:
    return [row for row in list_models(details=True)
            if row["results"] and (row["source"] == "built locally" or row["source"].startswith("bundled"))]


@needs_cifar10
@pytest.mark.parametrize("name", [row["name"] for row in _local_entries()])
def test_probe_prints_the_listed_numbers_of_every_local_entry(name, tmp_path, capsys):
    # The listed numbers are `ssl-zoo probe NAME` on the full splits (over a minute on 2 CPU cores);
    # each local entry also stores its numbers on a reduced bank (results.check), run here.
    row = next(r for r in list_models(details=True) if r["name"] == name)
    check = row["results"]["check"]
    out, _ = _run(capsys, "probe", name, "--train-per-class", str(check["train_per_class"]),
                  "--test-per-class", str(check["test_per_class"]), "--json", str(tmp_path / "probe.json"))
    probed = json.loads((tmp_path / "probe.json").read_text())
    sizes = {"train_images": 10 * check["train_per_class"], "test_images": 10 * check["test_per_class"]}
    # the listed protocol is the one `ssl-zoo probe` runs
    assert probed["protocol"] == {key: {**p, **sizes} for key, p in row["protocol"].items()}
    assert set(probed["protocol"]) == {"knn5", "knn200", "linear"}
    for key in probed["protocol"]:
        # float summation order differs between CPUs and BLAS builds: allow 2 test images
        assert abs(probed[key] - check[key]) <= 2 / sizes["test_images"], key
        assert f"{100 * probed[key]:6.2f} %" in out


def test_list_shows_numbers_with_their_protocol_and_origin(capsys):
    out, _ = _run(capsys, "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    for entry in list_models(details=True):
        line = rows[entry["name"]]
        assert line.endswith(entry["source"])
        for key in ("knn5", "knn200", "linear"):
            if key in entry["results"]:
                assert f"{100 * entry['results'][key]:.2f}" in line
        if entry["protocol"]:
            linear = entry["protocol"]["linear"]
            assert linear["solver"] in line and ("L2-norm" if linear["features_normalized"] else "raw") in line
    assert "ssl-zoo probe" in rows["random-init-resnet18.seed0"]
    out, _ = _run(capsys, "list", "random*")
    assert len(out.splitlines()) == 2


def test_unknown_command_and_bad_data_exit_nonzero(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    (tmp_path / "train" / "cat").mkdir(parents=True)  # an ImageFolder root without images
    assert main(["baseline", "--data", str(tmp_path), "--per-class", "1"]) == 2
    err = capsys.readouterr().err
    assert "ssl-zoo baseline: error: no images found" in err and str(tmp_path) in err


def test_version_flag_prints_the_package_version():
    import zoo

    proc = subprocess.run(["ssl-zoo", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"ssl-zoo {zoo.__version__}"
