"""Command line: ``nvfp4 <command>``. Each command's flags map one to one onto a config dataclass.

    nvfp4 train --recipe nvfp4 --model tiny --max-steps 300 --out runs/quickstart
    nvfp4 compare --suite paper --model small --max-tokens 2000000 --seeds 1,2 --out runs/paper
    nvfp4 probe --checkpoint runs/quickstart --recipes nvfp4,nvfp4-no-sr --draws 32 --out runs/probe
    nvfp4 generate runs/quickstart --prompt "And God said" --max-tokens 50
    nvfp4 eval runs/quickstart --data my_texts/
    nvfp4 export runs/quickstart --format compressed-tensors --out exported/quickstart
    nvfp4 recipes
    nvfp4 prepare --data corpus/ --out data/mine --tokenizer bpe --vocab-size 8192
    nvfp4 demo

Bad input ends with one ``error: ...`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, NoReturn

from nvfp4.data import DEFAULT_VAL_FRACTION

EXIT_USAGE = 2
EXIT_DIVERGED = 1
EXIT_INTERRUPTED = 130
EXIT_IO = 3  # the machine failed the run: disk full or an I/O error while writing (the message names path and space)


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors become a UsageError (one line, no usage dump, no SystemExit from main())."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--dash-case`` flag per dataclass field, typed from its annotation, help from its metadata.

    Flags default to "not given" (SUPPRESS) so that only what the user typed overrides the
    dataclass defaults or a config file.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f.metadata.get("help")}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs["required"] = True
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(base)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kwargs.update(nargs="+", type=typing.get_args(base)[0], metavar=f.name.upper())
        elif origin is tuple:
            item_types = typing.get_args(base)
            kwargs.update(nargs=len(item_types), type=item_types[0], metavar=f.name.upper())
        else:
            kwargs.update(type=base, metavar=f.name.upper() if "choices" not in f.metadata else None)
        if f.default is not dataclasses.MISSING and base is not bool and kwargs["help"]:
            kwargs["help"] += f" (default: {f.default})" if f.default is not None else ""
        parser.add_argument(flag, **kwargs)


# -- train ----------------------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    from nvfp4.train import TrainConfig, train

    values = {f: getattr(args, f) for f in TrainConfig.field_names() if hasattr(args, f)}
    config = TrainConfig.from_toml(args.config, **values) if args.config else TrainConfig(**values)
    result = train(config)
    if not config.quiet and result.rank == 0:
        print(result.summary())
    if result.diverged:
        return EXIT_DIVERGED
    if result.interrupted:  # 128 + the signal, as a shell reports it: 130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1
        return 128 + int(getattr(signal, result.stop_signal or "SIGINT", signal.SIGINT))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from nvfp4.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="pretrain a GPT with a precision recipe",
        description="Pretrain a GPT with a precision recipe. Writes OUT/config.json, OUT/metrics.jsonl, "
        "OUT/checkpoints/. Flags override the --config file; every flag is a TrainConfig field.",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of TrainConfig fields (flags win)")
    _add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=_train)


# -- compare --------------------------------------------------------------------------------------------

# What compare sets per run; every other TrainConfig flag is shared by all runs.
_PER_RUN_FIELDS = ("recipe", "seed", "out", "resume", "keep_steps", "branch_from")
# --quick: the CI-sized end-to-end check (tiny model, two recipes, a few steps).
QUICK_TRAIN = dict(
    model="tiny",
    n_layer=4,
    max_steps=20,
    batch_size=8,
    seq_len=64,
    eval_interval=10,
    eval_batches=2,
    log_interval=2,
    tokenizer="byte",
)


def _comma_list(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None

    return parse


def _compare(args: argparse.Namespace) -> int:
    from nvfp4.analysis.compare import CompareConfig, command_line, compare, write_outputs
    from nvfp4.train import TrainConfig

    train_fields = [f for f in TrainConfig.field_names() if f not in _PER_RUN_FIELDS]
    train = dict(QUICK_TRAIN) if args.quick else {}
    if args.config:
        import tomllib

        with open(args.config, "rb") as f:
            train.update(tomllib.load(f))
    train.update({f: getattr(args, f) for f in train_fields if hasattr(args, f)})
    suite = "quick" if args.quick and not args.recipes and not args.suite else args.suite
    config = CompareConfig(
        recipes=args.recipes,
        suite=suite,
        out=args.out,
        seeds=args.seeds,
        ablation_seeds=args.ablation_seeds,
        reference=args.reference,
        mxfp4_token_multiplier=args.mxfp4_token_multiplier,
        train=train,
        branch=not args.no_branch,
        probe=args.probe,
        probe_draws=args.probe_draws,
        command=command_line([a for a in args.argv if a != "--report-only"]),  # the command that made the runs
    )
    summary = write_outputs(config) if args.report_only else compare(config)
    for name, r in summary["recipes"].items():
        gap = r["val_gap_to_reference"]
        gap_text = "-" if gap is None else f"{100 * gap:+.2f}%"
        print(
            f"{name:22s} val {r['final_val_loss_mean']:.4f} ± {r['final_val_loss_std']:.4f}  gap {gap_text}"
            f"{'  DIVERGED' if r['diverged'] else ''}"
        )
    print(f"report: {config.out}/report.md")
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from nvfp4.train import TrainConfig

    p = sub.add_parser(
        "compare",
        help="train several recipes identically and report (the paper's comparisons)",
        description="Train each recipe with identical data order, initialisation and schedule, skipping runs "
        "already complete in OUT, then write OUT/summary.json, plots and OUT/report.md. Other flags are "
        "TrainConfig fields shared by every run.",
    )
    p.add_argument("--recipes", type=_comma_list(str), help="comma-separated recipe names")
    p.add_argument(
        "--suite",
        help="a named set of recipes: paper (the 12 of the paper's main figures), paper-full "
        "(paper + every other SPEC §6 ablation), main or quick",
    )
    p.add_argument("--out", required=True, help="output directory (runs/<recipe>/seed<k>/ inside)")
    p.add_argument("--seeds", type=_comma_list(int), default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--ablation-seeds", type=_comma_list(int), help="seeds for non-main recipes (default: --seeds)")
    p.add_argument("--reference", default="bf16", help="recipe the relative gaps refer to (default bf16)")
    p.add_argument(
        "--mxfp4-token-multiplier",
        type=float,
        help="also train mxfp4 this many times longer (run 'mxfp4-long') to measure how many more tokens it "
        "needs (default 1.5 for --suite paper/paper-full, else 1 = no such run)",
    )
    p.add_argument(
        "--no-branch",
        action="store_true",
        help="train late-switch recipes from scratch instead of branching them from their base recipe's "
        "checkpoint at the switch step (bit-identical, 80%% cheaper)",
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="after the runs, `nvfp4 probe` every recipe on fresh weights and on nvfp4's final checkpoint, "
        "for the mechanism verdicts (and log --probe-interval records in every run)",
    )
    p.add_argument("--probe-draws", type=int, default=32, help="stochastic-rounding draws of --probe (default 32)")
    p.add_argument("--quick", action="store_true", help="CI-sized run: tiny 4-layer model, bf16 vs nvfp4, 20 steps")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite summary, plots and report from the runs complete so far",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of shared TrainConfig fields (flags win)")
    _add_dataclass_flags(p, TrainConfig, skip=_PER_RUN_FIELDS)
    p.set_defaults(func=_compare)


# -- probe ----------------------------------------------------------------------------------------------


def _probe(args: argparse.Namespace) -> int:
    from nvfp4.analysis.compare import command_line
    from nvfp4.analysis.probe import ProbeConfig, run_probe

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ProbeConfig) if hasattr(args, f.name)}
    config = ProbeConfig(**values)
    run_probe(config, command=command_line(args.argv))
    print(f"report: {config.out}/report.md")
    return 0


def _add_probe(sub: argparse._SubParsersAction) -> None:
    from nvfp4.analysis.probe import ProbeConfig

    p = sub.add_parser(
        "probe",
        help="measure what each recipe does to operands and gradients (SQNR, gradient bias, concentration)",
        description="Probe recipes on a model (fresh, or a checkpoint of `nvfp4 train`) and fixed validation "
        "batches: per quantized linear, the operand and GEMM errors, the weight and input gradients of --draws "
        "stochastic-rounding draws against the FP32 gradient, and the forward/backward weight difference. Writes "
        "OUT/probe.json, OUT/report.md and plots.",
    )
    p.add_argument(
        "--recipes",
        type=_comma_list(str),
        default=argparse.SUPPRESS,
        help="comma-separated recipes or suites (paper, paper-full, main, quick); default nvfp4",
    )
    _add_dataclass_flags(p, ProbeConfig, skip=("recipes",))
    p.set_defaults(func=_probe)


# -- generate / eval ------------------------------------------------------------------------------------


@dataclass
class GenerateConfig:
    """Arguments of ``nvfp4 generate``: sample text from a trained checkpoint."""

    checkpoint: str = field(metadata={"help": "an `nvfp4 train` run directory or checkpoint file"})
    prompt: str = field(default="", metadata={"help": "text to continue (default: start of a document)"})
    max_tokens: int = field(default=100, metadata={"help": "tokens to generate at most (stops at end-of-text)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature; 0 = greedy"})
    top_k: int | None = field(default=50, metadata={"help": "sample among the k most likely tokens"})
    seed: int = field(default=0, metadata={"help": "sampling seed (the same seed gives the same text)"})
    samples: int = field(default=1, metadata={"help": "how many samples (seeds seed, seed+1, ...)"})
    precision: str = field(
        default="recipe",
        metadata={"help": "recipe: forward quantized as trained; bf16: not", "choices": ("recipe", "bf16")},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ("auto", "cpu", "cuda")})


@dataclass
class EvalConfig:
    """Arguments of ``nvfp4 eval``: loss, perplexity and bits per byte of a checkpoint on any text."""

    checkpoint: str = field(metadata={"help": "an `nvfp4 train` run directory or checkpoint file"})
    data: list[str] = field(metadata={"help": ".txt/.jsonl files or directories, or prepared shards / datasets"})
    seq_len: int | None = field(default=None, metadata={"help": "tokens per window (default: the model's context)"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    precision: str = field(
        default="recipe",
        metadata={"help": "recipe: forward quantized as trained; bf16: not", "choices": ("recipe", "bf16")},
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": ("auto", "cpu", "cuda")})
    json: bool = field(default=False, metadata={"help": "print the figures as one JSON object"})


def _dataclass_args(cls: type, args: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _generate(args: argparse.Namespace) -> int:
    from nvfp4.inference import generate, load_trained

    cfg = _dataclass_args(GenerateConfig, args)
    if cfg.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {cfg.samples}")
    trained = load_trained(cfg.checkpoint, device=cfg.device, precision=cfg.precision)
    for i in range(cfg.samples):
        text = generate(
            trained,
            cfg.prompt,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=cfg.seed + i,
        )
        if cfg.samples > 1:
            print(f"--- sample {i + 1} (seed {cfg.seed + i})")
        print(cfg.prompt + text)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from nvfp4.inference import evaluate_data, load_trained

    cfg = _dataclass_args(EvalConfig, args)
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    trained = load_trained(cfg.checkpoint, device=cfg.device, precision=cfg.precision)
    result = evaluate_data(trained, cfg.data, seq_len=cfg.seq_len, batch_size=cfg.batch_size)
    if cfg.json:
        record = {
            **dataclasses.asdict(result),
            "checkpoint": str(trained.checkpoint),
            "step": trained.step,
            "recipe": trained.recipe,
            "precision": cfg.precision,
        }
        print(json.dumps(record))
    else:
        print(f"{trained.checkpoint} (step {trained.step}, recipe {trained.recipe}, precision {cfg.precision})")
        print(result.summary())
    return 0


@dataclass
class ExportConfig:
    """Arguments of ``nvfp4 export``: a checkpoint as a transformers model or a vLLM NVFP4 checkpoint."""

    checkpoint: str = field(metadata={"help": "an `nvfp4 train` run directory or checkpoint file"})
    out: str = field(metadata={"help": "output directory (config.json, model.safetensors, tokenizer)"})
    format: str = field(
        default="hf",
        metadata={
            "help": "hf: LlamaForCausalLM; compressed-tensors: NVFP4 for vLLM",
            "choices": ("hf", "compressed-tensors"),
        },
    )
    dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype of the high-precision tensors", "choices": ("bfloat16", "float16", "float32")},
    )
    fuse_scales: bool = field(
        default=True,
        metadata={"help": "one tensor scale per q/k/v and gate/up group, as vLLM runs them (compressed-tensors)"},
    )
    calibrate: int = field(
        default=0,
        metadata={
            "help": "validation batches to calibrate activation scales (W4A4); 0 = weight-only (compressed-tensors)"
        },
    )
    tokenizer: bool = field(default=True, metadata={"help": "write the run's tokenizer too"})
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty --out"})


def _export(args: argparse.Namespace) -> int:
    from nvfp4.export import export

    cfg = _dataclass_args(ExportConfig, args)
    if cfg.calibrate < 0:
        raise UsageError(f"--calibrate must be >= 0, got {cfg.calibrate}")
    report = export(
        cfg.checkpoint,
        cfg.out,
        cfg.format,
        dtype=cfg.dtype,
        fuse_scales=cfg.fuse_scales,
        calibrate=cfg.calibrate,
        tokenizer=cfg.tokenizer,
        overwrite=cfg.overwrite,
    )
    print(report.summary())
    return 0


def _add_inference(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export",
        help="a checkpoint as a transformers model (hf) or vLLM's NVFP4 checkpoint (compressed-tensors)",
        description="Export an `nvfp4 train` checkpoint: --format hf writes "
        "a LlamaForCausalLM directory, --format compressed-tensors the nvfp4-pack-quantized "
        "checkpoint vLLM serves, with the recipe's own weight bits.",
    )
    exp.add_argument("checkpoint", help="run directory or checkpoint file")
    _add_dataclass_flags(exp, ExportConfig, skip=("checkpoint",))
    exp.set_defaults(func=_export)
    gen = sub.add_parser(
        "generate",
        help="sample text from a trained checkpoint",
        description="Sample text from an `nvfp4 train` checkpoint, its forward quantized as trained.",
    )
    gen.add_argument("checkpoint", help="run directory or checkpoint file")
    _add_dataclass_flags(gen, GenerateConfig, skip=("checkpoint",))
    gen.set_defaults(func=_generate)
    ev = sub.add_parser(
        "eval",
        help="loss, perplexity and bits per byte of a checkpoint on text files or shards",
        description="Evaluate an `nvfp4 train` checkpoint on any text (.txt/.jsonl files or "
        "directories) or prepared shards, with the run's tokenizer. Bits per byte compare across "
        "tokenizers.",
    )
    ev.add_argument("checkpoint", help="run directory or checkpoint file")
    _add_dataclass_flags(ev, EvalConfig, skip=("checkpoint",))
    ev.set_defaults(func=_eval)


# -- recipes --------------------------------------------------------------------------------------------


def _recipes(args: argparse.Namespace) -> int:
    import nvfp4

    print(nvfp4.recipes.describe())
    return 0


# -- prepare --------------------------------------------------------------------------------------------


@dataclass
class PrepareConfig:
    """Arguments of ``nvfp4 prepare``: tokenize text into a dataset directory of token shards."""

    out: str = field(metadata={"help": "output directory (train_*.bin, val_*.bin, tokenizer.json, dataset.json)"})
    data: list[str] | None = field(
        default=None, metadata={"help": ".txt/.jsonl files or directories (default: the built-in corpus)"}
    )
    tokenizer: str = field(default="bpe", metadata={"help": "bpe, byte, or the path of a tokenizer JSON file"})
    vocab_size: int = field(default=8192, metadata={"help": "BPE vocabulary size"})
    val_fraction: float = field(
        default=DEFAULT_VAL_FRACTION, metadata={"help": "fraction of the documents held out for validation"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a dataset already in --out"})


def _prepare(args: argparse.Namespace) -> int:
    from nvfp4.data import prepare_dataset

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareConfig) if hasattr(args, f.name)}
    cfg = PrepareConfig(**values)
    info = prepare_dataset(
        cfg.data,
        cfg.out,
        tokenizer=cfg.tokenizer,
        vocab_size=cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        overwrite=cfg.overwrite,
        progress=True,
    )
    print(
        f"wrote {info.path}: {info.train_tokens:,} train + {info.val_tokens:,} val tokens, "
        f"vocab {info.vocab_size} ({info.tokenizer_name})"
    )
    return 0


# -- demo -----------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """Quantize a heavy-tailed random matrix with every format and print error statistics."""
    import torch

    from nvfp4 import quantize_fp8_blockwise, quantize_mxfp4, quantize_nvfp4, random_hadamard_transform

    torch.manual_seed(args.seed)
    if args.heavy_tailed:
        x = torch.distributions.StudentT(3.0).sample((args.rows, args.cols))
    else:
        x = torch.randn(args.rows, args.cols)
    rows = [
        ("nvfp4 1x16 RN", quantize_nvfp4(x).dequantize()),
        ("nvfp4 1x16 SR", quantize_nvfp4(x, stochastic=True, seed=args.seed).dequantize()),
        ("nvfp4 16x16 RN", quantize_nvfp4(x, tile=(16, 16)).dequantize()),
        ("mxfp4 (ceil)", quantize_mxfp4(x).dequantize()),
        ("mxfp4 (OCP floor)", quantize_mxfp4(x, scale_rule="floor").dequantize()),
        ("fp8 1x128", quantize_fp8_blockwise(x).dequantize()),
        ("fp8 128x128", quantize_fp8_blockwise(x, tile=(128, 128)).dequantize()),
    ]
    h = random_hadamard_transform(x).float()
    rows.append(("RHT16 + nvfp4 (vs RHT(x))", quantize_nvfp4(h).dequantize() - h + x))
    print(f"{'format':28s} {'rel. RMS err':>12s} {'max abs err':>12s}")
    for name, y in rows:
        err = y - x
        print(f"{name:28s} {float(err.norm() / x.norm()):12.5f} {float(err.abs().max()):12.5f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nvfp4", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantization error of every format on a random matrix")
    demo.add_argument("--rows", type=int, default=1024)
    demo.add_argument("--cols", type=int, default=1024)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--heavy-tailed", action="store_true", help="Student-t (3 dof) instead of normal")
    demo.set_defaults(func=_demo)
    _add_train(sub)
    _add_compare(sub)
    _add_probe(sub)
    _add_inference(sub)
    sub.add_parser("recipes", help="list the precision recipes, one per line").set_defaults(func=_recipes)
    prepare = sub.add_parser("prepare", help="tokenize text files (or the built-in corpus) into token shards")
    _add_dataclass_flags(prepare, PrepareConfig)
    prepare.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 diverged, 2 bad input, 3 write failure such as a full disk,
    130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one `warning: ...` line on stderr (not Python's two-line form with a source excerpt)."""
    print(
        f"warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
        file=sys.stderr,
    )


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else list(argv)
        return args.func(args)
    except UsageError as e:
        return _fail(str(e))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (ValueError, OSError, ImportError) as e:
        if isinstance(e, OSError) and _is_write_failure(e):  # the machine's fault, not the input's
            print(f"error: {e.strerror or e}", file=sys.stderr)
            return EXIT_IO
        # Bad configs, unknown recipes/presets, missing or corrupt data: all raise these with a full message.
        return _fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _is_write_failure(error: OSError) -> bool:
    from nvfp4.train.checkpoint import CheckpointWriteError

    return isinstance(error, CheckpointWriteError)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
