"""The `t2t-vit` command and `python -m t2t_vit`: argument parsing, the console and exit codes live here only.

One module per command group registers its sub-commands; each command imports the library (torch, timm) only
when it runs, so `--help` answers at once.
"""

import argparse
import logging
import os
import sys
from typing import List, Optional

from ..errors import InputError
from . import demo, deploy, models, study, train

log = logging.getLogger(__name__)
# Read when `datasets` and `huggingface_hub` are imported, which a command does after main has set them.
HF_NO_BARS = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2t-vit", description="Tokens-to-Token ViT: models, training and tools.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log ours at debug level and the libraries' at info"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (models, train, demo, deploy, study):
        group.register(sub)
    _name_parsers(parser)
    return parser


def _name_parsers(parser: argparse.ArgumentParser) -> None:
    """Record in each sub-command's defaults its own parser (`args.parser`), the deepest one winning, so that an
    argument no command takes is reported with the usage of the command it was given to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.set_defaults(parser=child)
                _name_parsers(child)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; 0 on success, 2 with one line on stderr for a user mistake (InputError), 128 + the signal's
    number for a run stopped by SIGTERM (143) or Ctrl-C (130) after saving its checkpoint, 130 with one line for
    Ctrl-C in any other command."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = parser.parse_known_args(argv)
    args.argv = argv
    if rest and not getattr(args, "takes_overrides", False):
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "no_progress", False) or not sys.stderr.isatty():  # ours show only on a terminal; so do theirs
        for flag in HF_NO_BARS:
            os.environ.setdefault(flag, "1")
    # ours at INFO (-v: DEBUG); the libraries' INFO (matplotlib's font cache, the Hub client's requests) only with -v
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("t2t_vit").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code = args.func(args, rest) if getattr(args, "takes_overrides", False) else args.func(args)
    except InputError as e:
        print(f"t2t-vit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which stops and saves): nothing half-written
        print(f"t2t-vit {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_leftover_workers()
    if "t2t_vit.training.process" in sys.modules:  # a command that ran under torchrun: its process group, every rank
        from ..training.process import end_distributed

        end_distributed()
    return code or 0


def _end_leftover_workers() -> None:
    """Kills the daemonic children a command left running. Loader workers ignore SIGTERM (a preemption is the main
    process's to act on), so one alive at interpreter exit hangs multiprocessing's exit handler, which sends SIGTERM
    and waits. `data.workers_closed` ends them in order; this backstop finds none unless a code path forgot it."""
    import multiprocessing
    import signal

    left = [child for child in multiprocessing.active_children() if child.daemon]
    if not left:
        return
    log.warning("ended %d worker process(es) the command left running", len(left))
    sigchld = getattr(signal, "SIGCHLD", None)  # torch's handler raises in this thread for a worker killed by a signal
    handler = signal.signal(sigchld, signal.SIG_DFL) if sigchld else None
    for child in left:
        child.kill()
        child.join(timeout=10)
    if sigchld:
        signal.signal(sigchld, handler)
