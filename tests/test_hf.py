"""Where Hugging Face users load models: the folder `t2t-vit convert` writes, read by timm's `local-dir:`, transformers'
AutoModelForImageClassification and pipeline, and our own commands; its class names and model card; the Hub round
trip without the network (a push to a loopback stand-in of the Hub API, loads from a filled-in cache offline)."""

import base64
import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest
import timm
import torch
import yaml
from PIL import Image

from t2t_vit import create_model, load_model
from t2t_vit.cli import main as cli_main
from t2t_vit.hub import CIFAR10, class_names
from t2t_vit.pretrained import AUTHORS_REPO

from .helpers import (
    TINY_DATA_CONFIG,
    TINY_MODEL,
    checkpoint_saver_layout,
    image_folder,
    logits_of,
    official_state_dict,
    one_line_error,
    subprocess_env,
    tiny_train_config,
)

try:
    import transformers
except ImportError:  # the optional extra
    transformers = None

needs_transformers = pytest.mark.skipif(
    transformers is None, reason="transformers is not installed: pip install 't2t-vit[hf]'"
)
OWN_CLASSES = ["cat", "dog", "owl"]


class Folder(NamedTuple):
    """A checkpoint file, the folder `convert` wrote from it, the class names it must carry and model inputs."""

    file: Path
    out: Path
    names: List[str]
    images: torch.Tensor


def _converted(file: Path, out: Path, names: List[str], size: int) -> Folder:
    assert cli_main(["convert", str(file), "--out", str(out)]) == 0
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    return Folder(file, out, names, images)


@pytest.fixture(scope="module")
def imagenet_release(tmp_path_factory, authors_t2t_vit_7) -> Folder:
    """The authors' ImageNet file as their main.py saved it (timm's CheckpointSaver layout)."""
    tmp = tmp_path_factory.mktemp("in1k")
    file = tmp / "71.7_T2T_ViT_7.pth.tar"
    torch.save(checkpoint_saver_layout(authors_t2t_vit_7.raw, authors_t2t_vit_7.ema), file)
    return _converted(file, tmp / "hub", class_names(1000), 224)


@pytest.fixture(scope="module")
def cifar_release(tmp_path_factory, official_keys) -> Folder:
    """The authors' CIFAR-10 fine-tune as their transfer_learning.py saved it: a DataParallel state dict under `net`."""
    tmp = tmp_path_factory.mktemp("cifar10")
    weights = official_state_dict(official_keys, "t2t_vit_14", seed=2)
    weights["head.weight"], weights["head.bias"] = weights["head.weight"][:10], weights["head.bias"][:10]
    file = tmp / "cifar10_t2t-vit_14_98.3.pth"
    torch.save({"net": {f"module.{k}": v for k, v in weights.items()}, "acc": 98.3, "epoch": 59}, file)
    return _converted(file, tmp / "hub", list(CIFAR10), 224)


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory) -> Folder:
    """Our layout of a tiny model trained (so its record says) on an ImageFolder of cats, dogs and owls: its best
    top-1 at the epoch it holds, the raw weights (no EMA)."""
    tmp = tmp_path_factory.mktemp("own")
    data = image_folder(tmp / "pets", classes=tuple(OWN_CLASSES))
    kwargs = dict(TINY_MODEL, img_size=16, num_classes=len(OWN_CLASSES))
    torch.manual_seed(4)
    model = create_model("t2t_vit_7", **kwargs)
    meta = dict(
        task="classification",
        arch="t2t_vit_7",
        model_kwargs=kwargs,
        num_classes=len(OWN_CLASSES),
        class_names=OWN_CLASSES,
        data_config=TINY_DATA_CONFIG,
        grid_size=None,
    )
    file = tmp / "best.pth.tar"
    best = dict(metric="top1", value=66.6667, epoch=3)
    torch.save(dict(model=model.state_dict(), epoch=3, best=best, config=dict(data=str(data)), meta=meta), file)
    return _converted(file, tmp / "hub", OWN_CLASSES, 16)


FOLDERS = ("imagenet_release", "cifar_release", "own_checkpoint")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@needs_transformers
@pytest.mark.parametrize("which", FOLDERS)
def test_timm_and_transformers_load_the_folder_as_the_file(which, request, tmp_path):
    f: Folder = request.getfixturevalue(which)
    direct = logits_of(load_model(f.file)[0], f.images)
    config = json.loads((f.out / "config.json").read_text())
    assert "num_classes" not in config["model_args"] and config["num_classes"] == len(f.names)
    assert config["label_names"] == f.names
    from_timm = logits_of(timm.create_model(f"local-dir:{f.out}", pretrained=True), f.images)
    hf_model = transformers.AutoModelForImageClassification.from_pretrained(f.out)
    with torch.no_grad():
        from_hf = hf_model.eval()(f.images).logits
    diffs = dict(timm=_max_diff(from_timm, direct), transformers=_max_diff(from_hf, direct))
    print(f"{which}: max |logit difference| to the file's {diffs}")
    assert diffs == dict(timm=0.0, transformers=0.0)
    assert hf_model.config.id2label == dict(enumerate(f.names))

    # the pipeline against `t2t-vit predict` on the same image file: the same classes, by name, and probabilities
    image = tmp_path / "image.png"
    Image.fromarray((torch.rand(40, 30, 3, generator=torch.Generator().manual_seed(5)) * 255).byte().numpy()).save(
        image
    )
    classify = transformers.pipeline("image-classification", model=str(f.out))
    answer = classify(str(image), top_k=3)
    from t2t_vit.deploy.predict import predict

    expected = predict([str(image)], str(f.file), top_k=3)[0]["top_k"]
    gap = max(abs(a["score"] - e["prob"]) for a, e in zip(answer, expected))
    print(f"{which}: pipeline {answer}, max |probability difference| to `t2t-vit predict` on the file {gap:.1e}")
    assert [a["label"] for a in answer] == [e["class"] for e in expected] and gap < 1e-6


@pytest.mark.parametrize("which", FOLDERS)
def test_the_class_names_travel_to_predict(which, request, tmp_path, capsys):
    """`t2t-vit predict --checkpoint DIR` (or timm's `local-dir:DIR`, which convert prints) reads the folder as the
    file: the same lines, names and not indices."""
    f: Folder = request.getfixturevalue(which)
    image = tmp_path / "image.png"
    Image.new("RGB", (24, 24), (200, 40, 90)).save(image)
    capsys.readouterr()
    lines = []
    for checkpoint in (f.out, f"local-dir:{f.out}", f.file):
        assert cli_main(["predict", str(image), "--checkpoint", str(checkpoint), "--top-k", "2"]) == 0
        lines.append(capsys.readouterr().out.strip())
    assert lines[0] == lines[1] == lines[2]
    top = re.match(rf"{re.escape(str(image))}: (.+) \d+\.\d%, (.+) \d+\.\d%$", lines[0])
    assert top and {top.group(1), top.group(2)} <= set(f.names), lines[0]


def test_an_onnx_runtime_takes_the_folder(own_checkpoint, tmp_path, capsys):
    """--runtime onnxruntime exports the folder's model once, cached beside its weights, and names its classes."""
    pytest.importorskip("onnxruntime", reason="needs pip install 't2t-vit[deploy]'")
    image = tmp_path / "image.png"
    Image.new("RGB", (24, 24), (20, 140, 90)).save(image)
    capsys.readouterr()
    names = []
    for runtime, checkpoint in (("torch", own_checkpoint.out), ("onnxruntime", f"local-dir:{own_checkpoint.out}")):
        args = ["predict", str(image), "--checkpoint", str(checkpoint), "--runtime", runtime, "--top-k", "3"]
        assert cli_main(args) == 0
        names.append(re.findall(r"(\w+) \d+\.\d%", capsys.readouterr().out))
    assert names[0] == names[1] and sorted(names[0]) == sorted(OWN_CLASSES)
    assert (own_checkpoint.out / "model.safetensors.onnx").is_file()


def test_finetune_starts_from_the_folder_as_from_the_file(own_checkpoint, tmp_path):
    """--checkpoint DIR or local-dir:DIR (as convert prints it) starts a fine-tuning from the folder's weights; the
    run is named after the folder."""
    from t2t_vit.checkpoint import read_checkpoint
    from t2t_vit.training.run import train

    source = torch.load(own_checkpoint.file, weights_only=True)["model"]["blocks.0.mlp.fc1.weight"]
    for i, start in enumerate((str(own_checkpoint.out), f"local-dir:{own_checkpoint.out}")):
        cfg = tiny_train_config(tmp_path / str(i), epochs=1, warmup_epochs=0, name=None, model=None, model_kwargs={})
        run = Path(train(dict(cfg, init_checkpoint=start, freeze_backbone=True), progress=False)["run_dir"])
        assert run.name == "hub-digits"
        assert torch.equal(read_checkpoint(run / "last.pth.tar")["model"]["blocks.0.mlp.fc1.weight"], source)


def test_imagenet_names_are_timms_own():
    from timm.data import ImageNetInfo

    names = class_names(1000)
    assert len(names) == 1000 and names[0] == ImageNetInfo().index_to_description(0) == "tench, Tinca tinca"
    assert class_names(10, "cifar10")[:2] == ["airplane", "automobile"]
    assert class_names(3, None, OWN_CLASSES) == OWN_CLASSES and class_names(7) == [str(i) for i in range(7)]
    cifar100 = class_names(100, "cifar100")  # its label order is alphabetical
    assert cifar100 == sorted(set(cifar100)) and [cifar100[0], cifar100[-1]] == ["apple", "worm"]


def test_eval_takes_a_hub_folder(own_checkpoint, capsys):
    data = own_checkpoint.file.parent / "pets"
    outputs = []
    for checkpoint in (own_checkpoint.out, own_checkpoint.file):
        args = ["--data", str(data), "--workers", "0", "--no-progress", "--device", "cpu"]
        assert cli_main(["eval", "--checkpoint", str(checkpoint), *args]) == 0
        outputs.append(re.sub(r"[\d.]+ img/s", "", capsys.readouterr().out))
    assert outputs[0] == outputs[1] and "top-1" in outputs[0]


def test_a_folder_that_is_no_hub_folder_is_one_line(tmp_path, capsys):
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    assert cli_main(["predict", str(image), "--checkpoint", str(tmp_path)]) == 2
    one_line_error(capsys, "is a folder without config.json")
    (tmp_path / "config.json").write_text('{"architecture": "t2t_vit_7"}')
    assert cli_main(["predict", str(image), "--checkpoint", str(tmp_path)]) == 2
    one_line_error(capsys, "holds none of model.safetensors, pytorch_model.bin")
    assert cli_main(["predict", str(image), "--checkpoint", "hf-hub:a/b/c"]) == 2
    one_line_error(capsys, "does not name a Hub repo")
    assert cli_main(["predict", str(image), "--checkpoint", f"local-dir:{tmp_path / 'nowhere'}"]) == 2
    one_line_error(capsys, f"there is no folder '{tmp_path / 'nowhere'}': check the path")


# ----------------------------------------------------------------------------------------------- the model card


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def snippets(card: str) -> Dict[str, str]:
    """The card's python blocks by the section they stand in (timm, transformers)."""
    out = {}
    for section, code in re.findall(r"## (\w+)\n\n(?:[^`]*?)```python\n(.*?)```", card, re.S):
        out[section] = code
    return out


@pytest.mark.parametrize("which", FOLDERS)
def test_the_card_has_the_front_matter_the_hub_reads(which, request):
    f: Folder = request.getfixturevalue(which)
    card = (f.out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
    assert {"timm", "transformers", "image-classification", "t2t-vit"} <= set(meta["tags"])
    authors = dict(name="Tokens-to-Token ViT (ICCV 2021), the authors' release table", url=AUTHORS_REPO)
    license, datasets, top1, name, source, data_name = dict(
        imagenet_release=("bsd-3-clause-clear", ["imagenet-1k"], 71.7, "Top-1 accuracy", authors, "ImageNet-1k"),
        cifar_release=("bsd-3-clause-clear", ["cifar10"], 98.3, "Top-1 accuracy", authors, "CIFAR-10"),
        # ours: the best top-1 its run recorded for these weights, self-reported (the Hub wants a link for a source)
        own_checkpoint=("other", None, 66.67, "Top-1 accuracy (t2t-vit train, epoch 3, top1)", None, "pets"),
    )[which]
    assert (meta["license"], meta.get("datasets"), meta["metrics"]) == (license, datasets, ["accuracy"])
    [result] = meta["model-index"][0]["results"]
    assert result["metrics"] == [dict(type="accuracy", name=name, value=top1)]
    assert result.get("source") == source and result["dataset"]["name"] == data_name
    from huggingface_hub import ModelCard

    [parsed] = ModelCard(card).data.eval_results  # the Hub's own client reads the results back
    assert (parsed.metric_value, parsed.dataset_name, parsed.source_url) == (top1, data_name, (source or {}).get("url"))
    if which == "imagenet_release":
        print(f"front matter:\n{card.split('---')[1]}")


@needs_transformers
@pytest.mark.parametrize("which", FOLDERS)
def test_the_cards_snippets_run_as_written(which, request, tmp_path, monkeypatch, capsys):
    f: Folder = request.getfixturevalue(which)
    code = snippets((f.out / "README.md").read_text())
    assert set(code) == {"timm", "transformers"}
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 48), (30, 120, 200)).save("image.jpg")
    capsys.readouterr()
    exec(compile(code["timm"], "timm snippet", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == min(5, len(f.names)) and all(line.rsplit(": ", 1)[0] in f.names for line in printed)
    exec(compile(code["transformers"], "transformers snippet", "exec"), {})
    answer = eval(capsys.readouterr().out)  # the pipeline's list of {label, score}, printed
    assert [a["label"] for a in answer] == [line.rsplit(": ", 1)[0] for line in printed]


# ----------------------------------------------------------------------------------------------- the Hub, stood in


class StandInHub:
    """The Hub API calls of huggingface_hub's `create_repo` and `upload_folder` (with HF_HUB_DISABLE_XET set: LFS's
    basic transfer), on 127.0.0.1. `user` is the token's owner; `others` are repos of other users, which it may read
    but not write. Keeps each repo's committed files and the requests seen as "METHOD /path"."""

    TOKEN = "hf_standin"

    def __init__(self, user: str = "user", others=("someone/t2t-vit",)) -> None:
        self.repos: Dict[str, Dict[str, bytes]] = {name: {} for name in others}
        self.writable = set()
        self.lfs: Dict[str, bytes] = {}
        self.requests: List[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.handle(self, None)

            def do_POST(self) -> None:
                hub.handle(self, self._body())

            def do_PUT(self) -> None:
                hub.handle(self, self._body())

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def log_message(self, *args) -> None:
                pass

        self.user = user
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, req: http.server.BaseHTTPRequestHandler, body: Optional[bytes]) -> None:
        path = req.path.split("?")[0]
        if path == "/api/agent-harnesses":  # the client's own user-agent lookup (silent when it fails): not the Hub's
            return self.reply(req, 404, {})
        self.requests.append(f"{req.command} {path}")
        if m := re.fullmatch(r"/lfs/([0-9a-f]{64})", path):  # the storage's upload address: no login asked
            self.lfs[m.group(1)] = body
            return self.reply(req, 200, {})
        if req.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            return self.reply(req, 401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/repos/create":
            ask = json.loads(body)
            repo = f"{ask['organization'] or self.user}/{ask['name']}"
            if repo.split("/")[0] != self.user:
                return self.reply(
                    req, 403, {"error": "You don't have the rights to create a model under this namespace"}
                )
            if repo in self.repos:
                return self.reply(
                    req, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
                )
            self.repos[repo] = {}
            self.writable.add(repo)
            return self.reply(req, 200, {"url": f"{self.url}/{repo}"})
        if path == "/api/validate-yaml":
            try:
                yaml.safe_load(front_matter_text(json.loads(body)["content"]))
            except yaml.YAMLError as e:
                return self.reply(req, 400, {"errors": [{"message": str(e)}]})
            return self.reply(req, 200, {"errors": [], "warnings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)", path):  # repo_info
            if m.group(1) not in self.repos:
                return self.reply(req, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return self.reply(req, 200, {"id": m.group(1), "sha": "0" * 40, "siblings": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/main", path):
            if m.group(1) not in self.writable:
                return self.reply(req, 403, {"error": "You don't have write access to this repo"})
            files = json.loads(body)["files"]
            modes = [
                dict(path=f["path"], uploadMode="lfs" if f["path"].endswith(".safetensors") else "regular")
                for f in files
            ]
            return self.reply(req, 200, {"files": [dict(m, shouldIgnore=False, oid=None) for m in modes]})
        if re.fullmatch(r"/[^/]+/[^/]+\.git/info/lfs/objects/batch", path):
            objects = [
                dict(
                    o,
                    authenticated=True,
                    actions=dict(
                        upload=dict(href=f"{self.url}/lfs/{o['oid']}"), verify=dict(href=f"{self.url}/lfs-verify")
                    ),
                )
                for o in json.loads(body)["objects"]
            ]
            return self.reply(req, 200, {"transfer": "basic", "objects": objects})
        if path == "/lfs-verify":
            ask = json.loads(body)
            stored = self.lfs.get(ask["oid"], b"")
            ok = hashlib.sha256(stored).hexdigest() == ask["oid"] and len(stored) == ask["size"]
            return self.reply(req, 200 if ok else 400, {})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/main", path):
            repo = m.group(1)
            if repo not in self.writable:
                return self.reply(req, 403, {"error": "You don't have write access to this repo"})
            for line in body.decode().splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    self.repos[repo][value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    self.repos[repo][value["path"]] = self.lfs[value["oid"]]
            sha = hashlib.sha1(repr(sorted(self.repos[repo].items())).encode()).hexdigest()
            return self.reply(req, 200, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha})
        return self.reply(req, 404, {"error": f"no {req.command} {path} here"})

    @staticmethod
    def reply(req, status: int, payload: dict, headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)


def front_matter_text(card: str) -> str:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    return match.group(1) if match else ""


@pytest.fixture
def stand_in_hub():
    hub = StandInHub()
    yield hub
    hub.close()


def fill_cache(cache: Path, repo: str, files: Dict[str, bytes]) -> str:
    """`files` as one commit of `repo` in huggingface_hub's cache layout (blobs, refs/main, snapshots/COMMIT)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return commit


# Run offline in a child process (huggingface_hub reads HF_HOME and HF_HUB_OFFLINE at import): timm's hf-hub: load,
# transformers' from_pretrained and pipeline by repo id, `t2t-vit predict` on hf-hub:, and the card's two snippets.
OFFLINE_LOADS = """
import json, sys, torch, timm, transformers, t2t_vit
from t2t_vit.cli import main
repo, images, out = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3]
with torch.no_grad():
    logits = dict(
        timm=timm.create_model("hf-hub:" + repo, pretrained=True).eval()(images),
        transformers=transformers.AutoModelForImageClassification.from_pretrained(repo).eval()(images).logits,
    )
torch.save(logits, out)
print("pipeline", json.dumps(transformers.pipeline("image-classification", model=repo)("image.jpg", top_k=2)))
assert main(["predict", "image.jpg", "--checkpoint", "hf-hub:" + repo, "--top-k", "2"]) == 0
assert main(["predict", "image.jpg", "--checkpoint", "hf-hub:" + repo + "-missing"]) == 2
for section in ("timm", "transformers"):
    print("snippet", section)
    exec(open("snippet_" + section + ".py").read(), {})
"""


@needs_transformers
def test_hub_round_trip_through_a_stand_in_and_the_cache(imagenet_release, stand_in_hub, tmp_path):
    """`convert --push-to-hub` (a child process, HF_ENDPOINT the stand-in) uploads the folder as one commit; the
    files it received, put in a Hugging Face cache, load offline as the file does, the card's snippets included."""
    f, hub, repo = imagenet_release, stand_in_hub, "user/t2t-vit-7"
    hf_home = tmp_path / "hf"
    env = subprocess_env(HF_ENDPOINT=hub.url, HF_TOKEN=hub.TOKEN, HF_HUB_DISABLE_XET="1", HF_HOME=str(hf_home))
    env.pop("HF_HUB_OFFLINE", None)
    pushed = tmp_path / "pushed"
    cmd = [sys.executable, "-m", "t2t_vit", "convert", str(f.file), "--out", str(pushed), "--push-to-hub", repo]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "pushed it to the Hub as user/t2t-vit-7" in run.stdout
    print("push requests:", hub.requests)
    assert hub.requests == [
        "POST /api/repos/create",
        "POST /api/validate-yaml",  # README.md's front matter, checked by upload_folder and again by create_commit
        "POST /api/validate-yaml",
        "POST /api/models/user/t2t-vit-7/preupload/main",
        "POST /user/t2t-vit-7.git/info/lfs/objects/batch",
        f"PUT /lfs/{hashlib.sha256((pushed / 'model.safetensors').read_bytes()).hexdigest()}",
        "POST /lfs-verify",
        "POST /api/models/user/t2t-vit-7/commit/main",
    ]
    received = hub.repos[repo]
    assert received == {p.name: p.read_bytes() for p in pushed.iterdir()}  # exactly the folder, one commit
    card = received["README.md"].decode()
    assert 'timm.create_model("hf-hub:user/t2t-vit-7", pretrained=True)' in card
    assert 'model="user/t2t-vit-7"' in card

    fill_cache(hf_home / "hub", repo, received)
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(work / "image.jpg")
    for section, code in snippets(card).items():
        (work / f"snippet_{section}.py").write_text(code)
    torch.save(f.images, work / "images.pt")
    env = subprocess_env(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    cmd = [sys.executable, "-c", OFFLINE_LOADS, repo, "images.pt", "logits.pt"]
    run = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    direct = logits_of(load_model(f.file)[0], f.images)
    logits = torch.load(work / "logits.pt", weights_only=True)
    diffs = {k: _max_diff(v, direct) for k, v in logits.items()}
    print(f"hf-hub:{repo} offline: max |logit difference| to the file's {diffs}")
    assert diffs == dict(timm=0.0, transformers=0.0)
    from t2t_vit.deploy.predict import predict

    print(run.stdout)
    top = predict([str(work / "image.jpg")], str(f.file), top_k=5)[0]["top_k"]  # the file's answer, by name
    names = [t["class"] for t in top]
    lines = run.stdout.splitlines()
    answer = json.loads(lines[0].removeprefix("pipeline "))
    assert [a["label"] for a in answer] == names[:2]
    assert max(abs(a["score"] - t["prob"]) for a, t in zip(answer, top)) < 1e-6
    assert lines[1] == "image.jpg: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in top[:2])
    assert "hf-hub:user/t2t-vit-7-missing is not in the Hugging Face cache" in run.stderr
    assert lines[2] == "snippet timm" and [line.rsplit(": ", 1)[0] for line in lines[3:8]] == names
    assert lines[8] == "snippet transformers" and [a["label"] for a in eval(lines[9])] == names
    assert hub.requests[-1] == "POST /api/models/user/t2t-vit-7/commit/main"  # nothing went out offline


@pytest.fixture
def hub_client(stand_in_hub, monkeypatch, tmp_path):
    """huggingface_hub in this process pointed at the stand-in, as HF_ENDPOINT and HF_HUB_DISABLE_XET would at
    import, logged in with HF_TOKEN, no token file."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", stand_in_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_TOKEN", StandInHub.TOKEN)
    return stand_in_hub


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # inside the Hub client's LFS upload
def test_push_failures_are_one_line(own_checkpoint, hub_client, monkeypatch, tmp_path, capsys):
    f, hub = own_checkpoint, hub_client
    convert = ["convert", str(f.file), "--out", str(tmp_path / "out"), "--force"]  # each push rewrites the folder
    # someone else's repo: the Hub refuses the write (the folder is written, nothing is committed)
    assert cli_main([*convert, "--push-to-hub", "someone/t2t-vit"]) == 2
    one_line_error(capsys, "was written, but pushing it to someone/t2t-vit failed", "you may not write", "(403)")
    assert hub.repos["someone/t2t-vit"] == {}
    # yours already: a new commit
    assert cli_main([*convert, "--push-to-hub", "user/mine"]) == 0
    assert cli_main([*convert, "--push-to-hub", "user/mine"]) == 0
    assert hub.requests.count("POST /api/models/user/mine/commit/main") == 2
    assert "pushed it to the Hub as user/mine" in capsys.readouterr().out  # (stderr: the client's progress bars)
    # a token the Hub does not take
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    assert cli_main([*convert, "--push-to-hub", "user/mine"]) == 2
    one_line_error(capsys, "the Hub refused the login (401)")
    # no login at all: nothing is written, no request is made
    monkeypatch.delenv("HF_TOKEN")
    seen = len(hub.requests)
    assert cli_main(["convert", str(f.file), "--out", str(tmp_path / "new"), "--push-to-hub", "user/mine"]) == 2
    one_line_error(capsys, "not logged in to the Hugging Face Hub", "hf auth login")
    assert len(hub.requests) == seen and not (tmp_path / "new").exists()
    assert cli_main([*convert, "--push-to-hub", "not a repo"]) == 2
    one_line_error(capsys, "is not a Hub repo id")
    # no network: nothing listens where the Hub should be
    monkeypatch.setenv("HF_TOKEN", StandInHub.TOKEN)
    from huggingface_hub import constants

    hub.close()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    assert cli_main([*convert, "--push-to-hub", "user/mine"]) == 2
    one_line_error(capsys, f"could not reach the Hub at {hub.url}")


def test_convert_takes_its_checkpoint_as_every_command_does_too(tmp_path, tiny_checkpoint, capsys):
    """`convert --checkpoint FILE`, as eval, predict and export take it, was 'unrecognized arguments'."""
    assert cli_main(["convert", str(tiny_checkpoint), "--out", str(tmp_path / "a")]) == 0
    assert cli_main(["convert", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b")]) == 0
    weights = [(tmp_path / d / "model.safetensors").read_bytes() for d in ("a", "b")]
    assert weights[0] == weights[1]
    capsys.readouterr()
    assert cli_main(["convert", "--out", str(tmp_path / "c")]) == 2
    one_line_error(capsys, "no checkpoint to convert: give one, as FILE or --checkpoint FILE")
    assert cli_main(["convert", str(tiny_checkpoint), "--checkpoint", "x.pth", "--out", str(tmp_path / "c")]) == 2
    one_line_error(capsys, "two checkpoints (")


def test_a_convert_stopped_halfway_leaves_no_folder(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Ctrl-C after the weights were written left a folder without its model card, which the next convert refused
    as holding files."""
    import t2t_vit.pretrained as pretrained

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "model_card", ctrl_c)
    argv = ["convert", str(tiny_checkpoint), "--out", str(tmp_path / "conv")]
    assert cli_main(argv) == 130 and one_line_error(capsys) == "t2t-vit convert: interrupted"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert cli_main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "conv").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["conv"]
