"""The ``tldr-jax`` command line: run a video model with token merging, visualise it, convert, benchmark.

Examples::

    tldr-jax run                                   # embedded clip, UMT-B/16 random weights, msrvtt preset
    tldr-jax run clip.mp4 --model ckpt/videomae_b_k400 --r 0.3,0.2
    tldr-jax vis clip.mp4 --model ckpt/umt_b16 --r msrvtt --out vis.png      # or .gif / .mp4
    tldr-jax convert SRC OUT ...                   # = python -m checkpoints_convert SRC OUT ...
    tldr-jax bench ...                             # = python -m benchmarks.run ...
    tldr-jax retrieve --model ckpt/umt_b16_ret --videos videos/ --captions captions.jsonl   # UMT retrieval
    tldr-jax index videos/ --model ckpt/umt_b16_ret --out videos.index --keep-tokens   # video search
    tldr-jax search videos.index "a dog catches a frisbee" --rerank 50
    tldr-jax qa --model ckpt/umt_b16_qa clip.mp4 "what is the man doing?" --answers answers.json  # video QA
    tldr-jax mc --model ckpt/umt_b16_ret --annotations msrvtt_mc_test.json --videos msrvtt/  # multiple choice

Every argument is checked before any heavy work (``--r`` against the model's config, before the
weights are loaded and the video decoded). Errors in the inputs (missing or unreadable videos and
checkpoints, bad options, unknown models) print one line and exit with status 2, writing nothing;
internal errors print one line and exit with status 1; set ``TLDR_JAX_DEBUG=1`` (or pass ``--debug``)
for the traceback. Warnings (a capped schedule, a truncated video) are one line each.

One module per command (:mod:`~tldr_jax.cli.run`, :mod:`~tldr_jax.cli.vis`,
:mod:`~tldr_jax.cli.finetune`, :mod:`~tldr_jax.cli.convert`, :mod:`~tldr_jax.cli.bench`,
:mod:`~tldr_jax.cli.retrieve`, :mod:`~tldr_jax.cli.index`, :mod:`~tldr_jax.cli.search`), each with
its ``add_parser``; what they share is in :mod:`~tldr_jax.cli.common` and
:mod:`~tldr_jax.cli.sources` (``--model``: every command takes the same model sources), above
:mod:`~tldr_jax.cli.base` (``PROG``, ``CliError``). A new command is one module and one entry in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from tldr_jax.cli import bench, convert, finetune, interrupt, retrieve, run, vis
from tldr_jax.cli import index as index_cmd
from tldr_jax.cli import qa as qa_cmd
from tldr_jax.cli import search as search_cmd
from tldr_jax.cli import serve as serve_cmd
from tldr_jax.cli.base import PROG, CliError

__all__ = ["COMMANDS", "FORWARDED", "USER_ERRORS", "build_parser", "main", "one_line"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


FORWARDED: tuple[str, ...] = ("convert", "bench")

#: The command modules, in ``--help`` order: each has ``add_parser(subparsers)``.
COMMANDS: tuple[Any, ...] = (
    run, vis, convert, bench, finetune, retrieve, index_cmd, search_cmd, serve_cmd, qa_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tldr-jax``."""
    parser = _Parser(
        prog=PROG, description="vid-TLDR / ToMe token merging for video transformers (JAX).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--no-compile-cache", action="store_true",
        help="do not use JAX's persistent compilation cache (on by default, in ~/.cache/tldr_jax/xla or "
        "$TLDR_JAX_COMPILE_CACHE; TLDR_JAX_COMPILE_CACHE=0 also turns it off)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


#: Exceptions that mean "a bad input or environment" (exit status 2); anything else is an internal error.
USER_ERRORS: tuple[type[BaseException], ...] = (CliError, ValueError, TypeError, OSError, ImportError)
#: Longest error line printed (the full message is one --debug away).
MAX_ERROR_CHARS = 600


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """A message on one line (line breaks and indentation folded to ``; ``), at most ``limit`` chars."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = "; ".join(parts) if parts else ""
    if len(line) > limit:
        line = line[: limit - 40].rstrip() + " ... (--debug for the whole message)"
    return line


def _error_line(command: str, err: BaseException) -> str:
    text = one_line(str(err)) or type(err).__name__
    if isinstance(err, ImportError):
        text = f"a required package is missing: {text}"
    if not isinstance(err, USER_ERRORS):
        return f"{PROG} {command}: internal error ({type(err).__name__}): {text} (--debug for the traceback)"
    return f"{PROG} {command}: error: {text}"


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show every warning as one ``tldr-jax: warning: ...`` line on stderr, each message once."""
    from tldr_jax.schedule import ScheduleCapWarning
    from tldr_jax.video import VideoReadWarning

    seen: set[str] = set()

    def show(message: Any, category: Any, filename: str, lineno: int, *rest: Any, **kw: Any) -> None:
        text = one_line(str(message))
        if text not in seen:
            seen.add(text)
            print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ScheduleCapWarning)
        warnings.simplefilter("always", VideoReadWarning)
        warnings.showwarning = show
        yield


def _compile_cache(off: bool) -> None:
    """Turn on JAX's persistent compilation cache, or with ``--no-compile-cache`` keep it off for this
    process and the ones it starts (the benchmarks' workers read ``TLDR_JAX_COMPILE_CACHE``)."""
    from tldr_jax.compile_cache import ENV, enable_compile_cache

    if off:
        os.environ[ENV] = "0"
        return
    try:
        enable_compile_cache()
    except OSError as err:  # a read-only home must not stop the command: it only compiles again
        print(f"{PROG}: warning: {one_line(str(err))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tldr-jax`` console script; returns the exit status.

    Exit status: 0 success; 2 a bad argument, input file or environment (one ``tldr-jax CMD: error:``
    line on stderr, nothing written); 1 an internal error (one line; ``--debug`` or
    ``TLDR_JAX_DEBUG=1`` shows the traceback); 130 / 143 interrupted by SIGINT / SIGTERM (one line).
    Called without ``argv`` (the console command, ``python -m tldr_jax.cli``), an interrupted command ends
    the process with ``os._exit`` once the line is printed (see :mod:`tldr_jax.cli.interrupt`).
    """
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    head = [a for a in argv[:3] if a not in ("--debug", "--no-compile-cache")][:1]
    if head and head[0] in FORWARDED:
        # convert / bench: everything after the subcommand (--help included) goes to the other tool.
        cut = argv.index(head[0])
        func = convert.cmd_convert if head[0] == "convert" else bench.cmd_bench
        args = argparse.Namespace(
            command=head[0], rest=argv[cut + 1 :], debug="--debug" in argv[:cut], func=func,
            no_compile_cache="--no-compile-cache" in argv[:cut],
        )
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
            return int(exc.code or 0)
    debug = args.debug or os.environ.get("TLDR_JAX_DEBUG") == "1"
    note = getattr(args, "interrupted_note", "")
    with interrupt.Interruption(args.command, hard_exit=argv_given is None, note=note) as stop:
        try:
            _compile_cache(args.no_compile_cache)
            with _warnings_as_lines():
                code = int(args.func(args) or 0)
        except KeyboardInterrupt as err:
            return stop.leave(interrupt.exit_code(err))
        except Exception as err:
            if debug:
                raise
            print(_error_line(args.command, err), file=sys.stderr)
            return 2 if isinstance(err, USER_ERRORS) else 1
        if code in (130, 143):  # a forwarded tool (convert) that was interrupted itself
            return stop.leave(code, say=False)
        return code
