"""A run directory's one owner: the names of its files (checkpoints, config.yaml, metrics.csv, curves.png, tb/), its
lock, creating and opening it, and the scan for the checkpoint a resume or a rollback reads."""

import contextlib
import csv
import errno
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import hub
from ..checkpoint import link_or_copy, read_checkpoint, save_checkpoint
from ..config import data_tag, read_history, save_config
from ..errors import InputError
from .process import agree

_logger = logging.getLogger(__name__)


class RunDir:
    """One run's directory, output/name: last.pth.tar (the one it replaced as previous.pth.tar), best.pth.tar,
    epoch_N.pth.tar, config.yaml with the resume history, metrics.csv, curves.png, tb/ and the lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.last, self.previous, self.best = (self.path / f"{n}.pth.tar" for n in ("last", "previous", "best"))
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.csv"
        self.curves = self.path / "curves.png"
        self.tb = self.path / "tb"
        self.lock = RunLock(self.path / ".lock")

    @classmethod
    def of(cls, cfg: Dict[str, Any]) -> "RunDir":
        """output/name; name defaults to model-data (model-task-data for a dense task)."""
        start = str(cfg["init_checkpoint"]).removeprefix(hub.LOCAL_PREFIX).removeprefix(hub.HUB_PREFIX)
        model = cfg["model"] or Path(start).name.split(".")[0]
        task = "" if cfg.get("task", "classification") == "classification" else f"{cfg['task']}-"
        return cls(Path(cfg["output"]).expanduser() / (cfg["name"] or f"{model}-{task}{data_tag(cfg['data'])}"))

    def __str__(self) -> str:
        return str(self.path)

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.path / f"epoch_{epoch}.pth.tar"

    @contextlib.contextmanager
    def opened(self, is_main: bool = True, world: int = 1) -> Iterator["RunDir"]:
        """Hold the directory, created if needed, and its lock for the block; rank 0 takes them, and every rank
        fails with the InputError (the output path a file, not writable, the directory in use by another run) if
        that fails. A block that fails before a checkpoint is saved leaves nothing of what this created."""
        created, error = None, None
        if is_main:
            try:
                created = self._create()
            except InputError as e:
                error = str(e)
        agree(error, world)
        try:
            yield self
        except BaseException:
            if created is not None and not self.saved_checkpoints():
                shutil.rmtree(created, ignore_errors=True)  # a failed start: nothing of it is worth keeping
            raise
        finally:
            self.lock.release()

    def _create(self) -> Optional[Path]:
        """Create the directory and take its lock; the topmost directory this created, if any."""
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        existing = self.path.parents[len(missing) - 1] if missing else self.path
        if not existing.is_dir():
            raise InputError(f"output {str(existing)!r} is a file, not a directory: choose another --output or --name")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"output {str(existing)!r} is not writable: choose another --output")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create run directory {str(self)!r} ({why_not_written(e, existing)})") from None
        try:
            self.lock.acquire()
        except BaseException:
            if missing:
                shutil.rmtree(missing[-1], ignore_errors=True)
            raise
        return missing[-1] if missing else None

    # ------------------------------------------------------------------------------------------- checkpoints

    def save(self, state: Dict[str, Any], is_best: bool = False, epoch: Optional[int] = None) -> None:
        """Write `state` as last.pth.tar (the one it replaces stays as previous.pth.tar), and link it as
        best.pth.tar and, given its `epoch`, as epoch_N.pth.tar; all atomic and flushed to disk."""
        if self.last.is_file():
            link_or_copy(self.last, self.previous)
        save_checkpoint(state, self.last)
        if is_best:
            link_or_copy(self.last, self.best)
        if epoch is not None:
            link_or_copy(self.last, self.epoch_checkpoint(epoch))

    def saved_checkpoints(self) -> List[Path]:
        """The last, previous and best checkpoints that exist, in the order a resume or a rollback tries them."""
        return [p for p in (self.last, self.previous, self.best) if p.is_file()]

    def checkpoints_to_resume(self, resume: Optional[str]) -> List[Path]:
        """The checkpoints `resume` names, best first ("auto": the last, then the previous, then the best; or a
        path); empty to start afresh, which a directory already holding a run refuses."""
        found = self.saved_checkpoints()
        if resume is None:
            if found:
                raise InputError(
                    f"run directory {str(self)!r} already holds a run: pass --resume auto to continue it, or "
                    "--name NAME to start another"
                )
            return []
        if resume == "auto":
            if not found:
                _logger.info("--resume auto: no checkpoint in %s yet, starting fresh", self)
            return found
        path = Path(resume)
        if not path.is_file():
            raise InputError(f"--resume {resume!r}: no such checkpoint file (or use --resume auto)")
        return [path]

    def read_saved(self) -> Tuple[Path, Dict[str, Any]]:
        """The first saved checkpoint that reads (a rollback's)."""
        return read_first_good(self.saved_checkpoints())

    # ------------------------------------------------------------------------------------------- records

    def history(self) -> List[Dict[str, Any]]:
        """The resume history of config.yaml (empty if none)."""
        return read_history(self.config)

    def write_config(self, cfg: Dict[str, Any], history: List[Dict[str, Any]]) -> None:
        """config.yaml: the config in effect with the resume history."""
        save_config(cfg, self.config, history)

    def metric_rows(self) -> List[Dict[str, str]]:
        """The rows of metrics.csv as written (empty if none)."""
        if not self.metrics.is_file():
            return []
        with open(self.metrics, newline="") as f:
            return list(csv.DictReader(f))

    def read_metrics(self) -> Dict[str, List[float]]:
        """metrics.csv as columns of floats (NaN where empty); InputError if there is none."""
        if not self.metrics.is_file():
            raise InputError(
                f"{str(self)!r} has no {self.metrics.name}: pass a run directory written by `t2t-vit train`"
            )
        rows = self.metric_rows()
        return {
            k: [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]
            for k in (rows[0] if rows else {})
        }


def why_not_written(error: OSError, folder: Path) -> str:
    """Why a file could not be written in `folder`, with what to do: free space on a full disk, else another
    --output."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no free space left in {str(folder)!r}: free space there, or choose another --output"
    return f"{error.strerror or error}: choose another --output"


def read_first_good(paths: List[Path]) -> Tuple[Path, Dict[str, Any]]:
    """The first of `paths` that reads as a training checkpoint of ours, warning for each one passed over; if none
    does, one InputError naming them all and the first one's reason."""
    errors: List[Tuple[Path, str]] = []
    for path in paths:
        try:
            state = read_checkpoint(path)
            if not isinstance(state, dict) or "optimizer" not in state or "epoch" not in state:
                raise InputError(f"checkpoint {str(path)!r} is not a training checkpoint of ours (no optimizer state)")
        except InputError as e:
            errors.append((path, str(e)))
            continue
        if errors:
            _logger.warning("%s; resuming from %s instead", "; ".join(e for _, e in errors), path)
        return path, state
    if len(errors) <= 1:
        raise InputError(f"{errors[0][1] if errors else 'no checkpoint given'}: no checkpoint to resume from")
    first, reason = errors[0]
    reason = reason.removeprefix(f"checkpoint {str(first)!r} ").removesuffix(". Download or copy it again")
    folders = {str(p.parent) for p, _ in errors}
    where = f" in {folders.pop()!r}" if len(folders) == 1 else ""
    names = ", ".join(p.name if where else str(p) for p, _ in errors)
    raise InputError(
        f"none of {names}{where} can be resumed from ({first.name} {reason}): move them aside to start afresh, or "
        "pass --name NAME for another run"
    )


class RunLock:
    """One run per run directory: the lock file holds the owner's pid, host and torchrun run id.

    A lock whose owner is gone (same host, pid not running), or that a torchrun restart of the same run left
    behind, is taken over with a warning; a live owner is an InputError naming it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.held = False

    def acquire(self) -> None:
        me = dict(
            pid=os.getpid(),
            host=socket.gethostname(),
            run_id=os.environ.get("TORCHELASTIC_RUN_ID"),
            since=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me)
                continue
            except OSError as e:
                raise InputError(f"cannot take the lock {str(self.path)!r} ({why_not_written(e, self.path.parent)})")
            try:
                try:
                    os.write(fd, json.dumps(me).encode())
                finally:
                    os.close(fd)
            except OSError as e:
                self.path.unlink(missing_ok=True)
                raise InputError(
                    f"cannot write the lock {str(self.path)!r} ({why_not_written(e, self.path.parent)})"
                ) from None
            self.held = True
            return
        raise InputError(f"could not take the lock {str(self.path)!r}: another run keeps taking it")

    def _take_over_if_stale(self, me: Dict[str, Any]) -> None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            owner = {}
        if not owner:  # unreadable or half-written: an owner dying while writing it
            _logger.warning("taking over the unreadable lock %s", self.path)
        elif owner.get("run_id") and owner.get("run_id") == me["run_id"]:
            _logger.warning(
                "taking over %s from pid %s on %s: a torchrun restart of the same run",
                self.path,
                owner.get("pid"),
                owner.get("host"),
            )
        elif owner.get("host") == me["host"] and not _alive(int(owner.get("pid", 0))):
            _logger.warning(
                "taking over the stale lock %s of pid %s (no longer running) on %s",
                self.path,
                owner.get("pid"),
                owner.get("host"),
            )
        else:
            raise InputError(
                f"run directory {str(self.path.parent)!r} is in use by pid {owner.get('pid')} on "
                f"{owner.get('host')} (since {owner.get('since')}): wait for that run, stop it, or pass --name NAME "
                f"for a separate run (if that run is gone, delete {str(self.path)!r})"
            )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
