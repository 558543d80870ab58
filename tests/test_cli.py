"""The command line apart from the library: no cycles, no argparse outside it, `--help` without torch, the models
table current, and the package working from a built wheel outside the repository."""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import t2t_vit
from t2t_vit.cli import main
from t2t_vit.cli.models import TABLE, compute_rows

SRC = Path(t2t_vit.__file__).parent
LIBRARY = sorted(
    m.name
    for m in pkgutil.walk_packages([str(SRC)], "t2t_vit.")
    if not m.name.startswith(("t2t_vit.cli", "t2t_vit.__main__"))
)


def test_every_library_module_imports_alone_without_the_cli():
    """Each module imported first in a process of its own (an import cycle fails in some order): one interpreter
    imports the third-party libraries, then forks a child per module, which starts with no t2t_vit module loaded."""
    code = """
import importlib, os, sys, traceback
import matplotlib, numpy, PIL, safetensors, sklearn, timm, torch, torchvision, tqdm, yaml  # shared, not ours
assert not any(m.startswith("t2t_vit") for m in sys.modules)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        cli = sorted(m for m in sys.modules if m.startswith("t2t_vit.cli"))
        print(name, "imported", cli, file=sys.stderr) if cli else None
        os._exit(2 if cli else 0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]):
        failed.append(name)
print(failed)
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, *LIBRARY], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout[-2000:] + done.stderr[-3000:]
    assert {"t2t_vit.training.run", "t2t_vit.training.engine", "t2t_vit.models.t2t_vit", "t2t_vit.pretrained"} <= set(
        LIBRARY
    )


def test_argparse_only_in_the_cli():
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            assert "argparse" not in names and module != "argparse", f"{path} imports argparse"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["finetune", "--help"],
        ["predict", "--help"],
        ["visualize", "features", "--help"],
        ["models"],
    ],
)
def test_help_and_models_load_no_torch(argv):
    code = (
        "import sys\nfrom t2t_vit.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout


def test_train_help_lists_the_config_keys_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--batch-size           64" in text and "per process; the global batch" in text
    assert "--model-ema-decay      0.99996" in text and "--log-interval" in text


def test_models_table_is_current():
    """`t2t-vit models` prints a stored table; it must equal the one counted from the models now.
    After adding a model or a release: python -c 'from t2t_vit.cli.models import write_table; write_table()'."""
    assert json.loads(TABLE.read_text()) == compute_rows()


def test_cli_choices_name_what_the_library_has():
    from t2t_vit.cli import deploy, study
    from t2t_vit.deploy import benchmark, export
    from t2t_vit.study import claims as reproduce

    assert study.CLAIMS == tuple(reproduce.CLAIMS) and deploy.FORMATS == export.FORMATS
    parser = main.__globals__["build_parser"]()
    bench = parser._subparsers._group_actions[0].choices["benchmark"]
    choices = {a.dest: a.choices for a in bench._actions if a.choices}
    assert tuple(choices["mode"]) == benchmark.MODES and tuple(choices["dtype"]) == tuple(benchmark.DTYPES)


def _commands(parser, path=()):
    for action in parser._actions:
        if action.choices and hasattr(action, "_name_parser_map"):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))
    yield " ".join(path), parser


def test_every_command_that_writes_takes_out_and_output_alike():
    """predict, convert and visualize took --out only, where export, reproduce and train take --output."""
    writers = {}
    for command, parser in _commands(main.__globals__["build_parser"]()):
        for action in parser._actions:
            if {"--out", "--output"} & set(action.option_strings):
                writers[command] = set(action.option_strings)
    assert {"predict", "convert", "export", "visualize curves", "reproduce"} <= set(writers)
    assert all({"--out", "--output"} <= flags for flags in writers.values()), writers


def test_python_m_t2t_vit_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "t2t_vit", "models"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "t2t_vit_14.in1k_ft_cifar10" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("verbose", [False, True])
def test_the_console_has_our_info_and_the_libraries_warnings(verbose):
    # matplotlib's "generated new fontManager" came out as the first line of a fresh machine's `make demo`
    code = """
import logging, sys
from t2t_vit.cli import main, models
def chatter(args):
    for name in ("t2t_vit.training.run", "matplotlib.font_manager", "httpx"):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING):
            logging.getLogger(name).log(level, "%s %s", name, logging.getLevelName(level))
models._models = chatter
sys.exit(main(sys.argv[1:]))
"""
    argv = ["-v", "models"] if verbose else ["models"]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = {line.split(": ", 1)[1] for line in done.stderr.splitlines()}
    ours = {"DEBUG", "INFO", "WARNING"} if verbose else {"INFO", "WARNING"}
    theirs = {"INFO", "WARNING"} if verbose else {"WARNING"}
    expected = {f"t2t_vit.training.run {level}" for level in ours}
    expected |= {f"{name} {level}" for name in ("matplotlib.font_manager", "httpx") for level in theirs}
    assert said == expected


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """Build the wheel, install it into a fresh venv (dependencies reached through the project's environment),
    and run `t2t-vit models` and a one-epoch digits training from a folder outside the repository."""
    import shutil
    import site
    import sysconfig

    root, project = SRC.parents[1], tmp_path / "project"  # built from a copy: no build/ left in the tree, none read
    shutil.copytree(SRC, project / "src" / "t2t_vit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, project / name)
    wheels = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(project),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("t2t_vit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = [p for p in [sysconfig.get_path("purelib"), *site.getsitepackages()] if Path(p).is_dir()]
    (purelib / "project_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")  # plain paths: no editable hooks
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # src/ on it would pass for t2t-vit installed
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import t2t_vit; print(t2t_vit.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(purelib)), where.stdout
    models = subprocess.run(
        [str(venv / "bin" / "t2t-vit"), "models"], cwd=work, env=env, capture_output=True, text=True
    )
    assert models.returncode == 0 and "t2t_vit_24.tl_in1k" in models.stdout, models.stderr[-2000:]
    train = subprocess.run(
        [
            str(venv / "bin" / "t2t-vit"),
            "train",
            "--config",
            "digits",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--no-progress",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert "held-out top-1" in train.stdout and (work / "runs" / "digits" / "last.pth.tar").is_file()
