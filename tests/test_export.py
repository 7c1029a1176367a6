"""A run's model outside this project: .pt2 files that torch alone loads and runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from tests.helpers import train_run
from vae.cli import main
from vae.execution.checkpoint import load_run_checkpoint, model_from_checkpoint

ISOLATED = textwrap.dedent(
    """
    import json, sys, torch
    try:
        import vae  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the project is importable: the test is not isolated")
    folder, run_id = sys.argv[1], sys.argv[2]
    decoder = torch.export.load(f"{folder}/{run_id}-decoder.pt2").module()
    encoder = torch.export.load(f"{folder}/{run_id}-encoder.pt2").module()
    meta = json.load(open(f"{folder}/{run_id}-model.json"))
    z = torch.randn(16, meta["latent_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = decoder(z)
        mu, logvar = encoder(images[:1])
    x = torch.load(f"{folder}/x.pt", weights_only=True)
    with torch.no_grad():
        mu_x, _ = encoder(x)
        recon = decoder(mu_x)
    torch.save({"images": images, "mu": mu, "recon": recon}, f"{folder}/out.pt")
    print(tuple(images.shape), tuple(mu.shape), tuple(logvar.shape))
    """
)


def test_exported_files_decode_with_torch_alone(store, tiny_config, tmp_path):
    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    out = tmp_path / "exported"
    assert main(["--store", str(store.root), "export", run_id, "--out", str(out)]) == 0
    meta = json.loads((out / f"{run_id}-model.json").read_text())
    assert meta["latent_dim"] == tiny_config.latent_dim and meta["image_shape"] == [1, 28, 28]
    x = torch.rand(3, 1, 28, 28)
    torch.save(x, out / "x.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "check.py").write_text(ISOLATED)
    done = subprocess.run(
        [sys.executable, "-I", str(elsewhere / "check.py"), str(out), run_id],
        cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(16, 1, 28, 28) (1, 4) (1, 4)" in done.stdout
    result = torch.load(out / "out.pt", weights_only=True)
    assert float(result["images"].min()) >= 0.0 and float(result["images"].max()) <= 1.0
    # the same numbers as the project's own model
    model = model_from_checkpoint(load_run_checkpoint(store, run_id))
    with torch.no_grad():
        mu, _ = model.encode(x)
        expected = model.likelihood.mean(model.decode(mu))
    torch.testing.assert_close(result["recon"], expected, rtol=1e-4, atol=1e-5)


def test_export_of_a_run_without_checkpoint(store, tiny_config, tmp_path, capsys):
    run_id = store.create_run(tiny_config)
    assert main(["--store", str(store.root), "export", run_id, "--out", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_export_zip_holds_the_three_files(store, tiny_config):
    import io
    import zipfile

    from vae.execution.export import export_zip

    run_id = store.create_run(tiny_config)
    assert train_run(store, run_id) == "finished"
    data = export_zip(load_run_checkpoint(store, run_id), run_id)
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == {f"{run_id}-encoder.pt2", f"{run_id}-decoder.pt2", f"{run_id}-model.json"}
