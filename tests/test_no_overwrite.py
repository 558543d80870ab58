"""No command writes over a file it did not create unless told to (--force), none ever over its own input, and
what they write gets the user's umask; `visualize` names the file it wrote and a write the OS refuses is one line.
An ONNX export goes back in as --checkpoint of the ONNX runtimes."""

import os
import shutil
import stat

import pytest

from t2t_vit.cli import main

from .helpers import one_line_error


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _copy(tiny_checkpoint, folder):
    folder.mkdir(exist_ok=True)
    return str(shutil.copy(tiny_checkpoint, folder / "self.pth.tar"))


def test_export_never_writes_over_its_checkpoint(tmp_path, tiny_checkpoint, capsys):
    ck = _copy(tiny_checkpoint, tmp_path / "ck")
    before = open(ck, "rb").read()
    for force in ([], ["--force"]):
        argv = ["export", "--checkpoint", ck, "--format", "safetensors", "--output", ck, *force]
        assert main(argv) == 2
        one_line_error(capsys, "t2t-vit export: error:", "is the input", "self.pth.tar")
    assert open(ck, "rb").read() == before


def test_an_export_stopped_halfway_leaves_no_file_and_says_so_in_one_line(
    tmp_path, tiny_checkpoint, capsys, monkeypatch
):
    """Ctrl-C (or an error) mid-export left a half-written file under the name asked for, which the next export
    refused as existing and a loader read as corrupt; Ctrl-C printed a traceback."""
    import t2t_vit.deploy.export as export

    def half_then_ctrl_c(model, path, meta):
        path.write_bytes(b"half an export")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_safetensors", half_then_ctrl_c)
    argv = ["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "m.safetensors")]
    assert main(argv) == 130
    assert one_line_error(capsys) == "t2t-vit export: interrupted"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert main(argv) == 0 and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_export_refuses_an_existing_file_without_force_and_keeps_the_umask(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "model.safetensors"
    out.write_text("the user's file")
    argv = ["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--output", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, "model.safetensors", "exists", "--force")
    assert out.read_text() == "the user's file"
    assert main([*argv, "--force"]) == 0
    assert out.stat().st_size > 1000
    assert stat.S_IMODE(out.stat().st_mode) == _umask_mode()  # safetensors alone would give 0600


def test_convert_refuses_a_folder_with_files(tmp_path, tiny_checkpoint, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "README.md").write_text("my notes")
    argv = ["convert", str(tiny_checkpoint), "--out", str(proj)]
    assert main(argv) == 2
    one_line_error(capsys, "t2t-vit convert: error:", "README.md", "--force")
    assert (proj / "README.md").read_text() == "my notes" and sorted(os.listdir(proj)) == ["README.md"]
    assert main([*argv, "--force"]) == 0
    weights = proj / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) == _umask_mode()
    # its own input: refused even with --force
    before = weights.read_bytes()
    assert main(["convert", str(weights), "--out", str(proj), "--force"]) == 2
    one_line_error(capsys, "is the input", "model.safetensors")
    assert main(["convert", str(proj), "--out", str(proj), "--force"]) == 2
    one_line_error(capsys, "is the input")
    assert weights.read_bytes() == before


def _run_dir(root):
    run = root / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_top1\n1,2.0,1.9,30\n2,1.5,1.4,50\n")
    return run


def test_visualize_curves_names_the_file_it_wrote(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run_dir(tmp_path)
    assert main(["visualize", "curves", str(run), "--out", "curvesnoext"]) == 0
    assert capsys.readouterr().out.strip() == "wrote curvesnoext.png"
    assert (tmp_path / "curvesnoext.png").is_file() and not (tmp_path / "curvesnoext").exists()
    # it exists now: refused without --force, written with it
    assert main(["visualize", "curves", str(run), "--out", "curvesnoext"]) == 2
    one_line_error(capsys, "curvesnoext.png", "exists", "--force")
    assert main(["visualize", "curves", str(run), "--out", "curvesnoext", "--force"]) == 0


def test_visualize_out_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    run = _run_dir(tmp_path)
    (tmp_path / "somefile.txt").write_text("x")
    assert main(["visualize", "curves", str(run), "--out", str(tmp_path / "somefile.txt" / "x.png")]) == 2
    one_line_error(capsys, "t2t-vit visualize: error:", "x.png")
    import matplotlib.figure

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refused)
    assert main(["visualize", "curves", str(run), "--out", str(tmp_path / "ro.png")]) == 2
    one_line_error(capsys, "ro.png", "Permission denied")


def test_an_onnx_export_runs_as_the_checkpoint_of_the_onnx_runtimes(tmp_path, tiny_checkpoint, capsys):
    pytest.importorskip("onnxruntime", reason="needs pip install 't2t-vit[deploy]'")
    from .helpers import digit_files

    demo = str(tmp_path / "demo.onnx")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx", "--output", demo]) == 0
    images = [str(p) for p in digit_files(tmp_path / "img", 2)]
    capsys.readouterr()
    assert main(["predict", *images, "--checkpoint", demo, "--runtime", "onnxruntime", "--json"]) == 0
    import json

    records = json.loads(capsys.readouterr().out)
    assert len(records) == 2 and all(t["class"] in [str(i) for i in range(10)] for t in records[0]["top_k"])
    assert sorted(os.listdir(tmp_path)) == ["demo.onnx", "img"]  # used as it is: no export of the export
    bench = ["benchmark", "--runtime", "onnxruntime", "--checkpoint", demo, "--warmup", "0", "--repeats", "1"]
    assert main([*bench, "--batch-size", "2"]) == 0
    assert "img/s" in capsys.readouterr().out
    assert main(["predict", *images, "--checkpoint", demo, "--json"]) == 0  # onnxruntime where none is named
    assert json.loads(capsys.readouterr().out) == records
    assert main(["predict", *images, "--checkpoint", demo, "--runtime", "torch"]) == 2
    one_line_error(capsys, "demo.onnx", "is an ONNX file", "--runtime onnxruntime")
    assert main(["eval", "--checkpoint", demo, "--data", "digits", "--runtime", "torch"]) == 2
    one_line_error(capsys, "demo.onnx", "is an ONNX file", "--runtime onnxruntime")
