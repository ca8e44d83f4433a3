"""The ``convcheck`` command line: convert, gate, fuzz, replay.

Exit codes (DESIGN §1): 0 success; 1 a property failed (gate, fuzz, replay); 2 bad input or a bad
destination, reported as one line without a traceback; 130 interrupted (SIGINT) and 143
terminated (SIGTERM), also one line. Whatever ends a conversion, its temporary directory is
removed, a previous output is left as it was and no worker thread outlives it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

EXIT_OK, EXIT_PROPERTY_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

#: subcommands implemented by the property suite: name → (module, function, one-line help)
SUITE_COMMANDS = {
    "gate": ("fixtures.commands", "gate_main", "run the CI gate: architecture x property matrix"),
    "fuzz": ("fixtures.commands", "fuzz_main", "long randomized search on one architecture"),
    "replay": ("fixtures.commands", "replay_main", "re-run one saved failing case with full diagnostics"),
}


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between HF and native formats",
                       description="Convert SRC (an HF directory or a native checkpoint, detected from its "
                                   "contents) into the other format at DST. The write is atomic: DST appears "
                                   "complete or not at all.")
    p.add_argument("src", metavar="SRC", help="source checkpoint directory")
    p.add_argument("dst", metavar="DST", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--to", choices=("hf", "native"), help="target format (default: the other one)")
    p.add_argument("--dtype", default="keep", choices=("keep", "bf16", "fp16", "fp32", "fp64"),
                   help="cast floating tensors (integer and bool tensors are kept; default: keep, and config.json's "
                        "dtype is then the dominant floating dtype)")
    p.add_argument("--weight-dtype", choices=("bf16", "fp16", "fp32", "fp64"),
                   help="FP8 checkpoints: the dtype of the FP8-quantized weights (import: dequantize into it; "
                        "export: write them as plain weights in it, no scales, no quantization_config)")
    p.add_argument("--requantize", action="store_true",
                   help="native -> HF of a checkpoint imported from FP8: write the quantized weights as FP8 "
                        "blocks with their _scale_inv companions and restore quantization_config")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights holding NaN or Inf (refused by default, every offending tensor listed)")
    p.add_argument("--max-shard-size", default="5GB", help="HF output shard size, e.g. 500MB, 5GB (default 5GB)")
    p.add_argument("--pipeline-stages", type=int, default=1, metavar="N",
                   help="HF -> native: write pipeline-stage folders pp0..pp{N-1} (default 1: no stage folders)")
    p.add_argument("--model-type", help="HF model_type for a native checkpoint that does not record one")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST if it is a checkpoint or an empty folder (atomically: a killed run leaves "
                        "the previous DST)")
    p.add_argument("--force-overwrite", action="store_true",
                   help="replace DST even when it holds no checkpoint (any directory: its contents are lost)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read symbolic links in SRC that lead outside it (refused by default: a downloaded "
                        "checkpoint could link to your private files, which would be copied into DST)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_convert(args) -> int:
    from .pipeline import convert
    from .progress import progress_bar

    with progress_bar(disable=args.quiet) as progress:
        summary = convert(args.src, args.dst, to=args.to, dtype=args.dtype, max_shard_size=args.max_shard_size,
                          overwrite=args.overwrite, model_type=args.model_type, progress=progress,
                          weight_dtype=args.weight_dtype, requantize=args.requantize,
                          allow_nonfinite=args.allow_nonfinite, pipeline_stages=args.pipeline_stages,
                          follow_symlinks=args.follow_symlinks, force_overwrite=args.force_overwrite)
    print(summary.line())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convcheck", description="Checkpoint converters between a native PyTorch "
                                     "LLM format and HF transformers, and the property suite that proves them right.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _convert_parser(sub)
    for name, (_, _, help_text) in SUITE_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Large CPU tensors on transparent huge pages: faulting in fresh 4 KiB pages costs more than
    # the copy that fills them, and conversion allocates a few such tensors per layer. Set before torch allocates; opt out with 0.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUITE_COMMANDS:
        module, function, _ = SUITE_COMMANDS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    try:
        return _guarded(_parse_and_convert, argv)
    except KeyboardInterrupt:  # landed in the guard's own cleanup, after the output was complete or removed
        return _fail("interrupted (SIGINT); no partial output was left", EXIT_SIGINT)
    except Terminated:
        return _fail("terminated (SIGTERM); no partial output was left", EXIT_SIGTERM)


def _parse_and_convert(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    return run_convert(args)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that cleanup runs."""


def _terminate(signum, frame):
    raise Terminated()


def _guarded(command, args) -> int:
    """Bad input is one line on stderr and exit 2, never a traceback; SIGINT and SIGTERM are one
    line and 130 or 143, after the atomic writer has removed its temporary directory. The guard
    covers everything from the first instruction (argument parsing and the lazy imports too), so
    a signal that arrives early is the same one line."""
    previous = stop_producers = None
    try:  # the handler is installed inside the try: a SIGTERM pending as it is installed lands here
        if _main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        from converters.errors import ConversionError
        from native.schema import ConfigError

        from .native_format import CheckpointError
        from .prefetch import stop_producers

        try:
            return command(args)
        except (ConversionError, CheckpointError, ConfigError) as exc:
            return _fail(" ".join(str(exc).split()), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted (SIGINT); no partial output was left", EXIT_SIGINT)
    except Terminated:
        return _fail("terminated (SIGTERM); no partial output was left", EXIT_SIGTERM)
    finally:
        if stop_producers is not None:
            stop_producers()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _fail(message: str, code: int) -> int:
    print(f"convcheck: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
