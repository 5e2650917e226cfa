"""What the ``depthkv`` subcommands share: budget arguments, a model's card defaults, workloads
(and the split of a user's file into calibration and evaluation parts), the comparison's options,
report folders, run information and tables."""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from depthkv.profile import Budget, parse_budget
from depthkv.profile.budget import is_fraction

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_BUDGETS = (0.1, 0.2, 0.3)
DEMO_STRATEGIES = ("proportional", "softmax", "rank", "greedy")
CALIB_FRACTION = 1 / 3
MIN_CALIBRATION = 2  # the permutation and Friedman tests need two examples


def budget_arg(text: str) -> Budget:
    """argparse type of ``--budget``: ``0.2`` / ``1.0`` a fraction of the context, ``512`` tokens."""
    try:
        return parse_budget(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fraction_arg(text: str) -> float:
    """argparse type of a budget that must be a fraction of the context (``0.2``, ``1.0``)."""
    budget = budget_arg(text)
    if not is_fraction(budget):
        raise argparse.ArgumentTypeError(
            f"{text} is a number of tokens; this option takes a fraction of the context in (0, 1], e.g. 0.2"
        )
    return budget


def add_placement_args(parser: argparse.ArgumentParser) -> None:
    """Where the model runs: one device, or split over several by a device map (accelerate)."""
    parser.add_argument(
        "--device", default="cpu",
        help="device of the whole model (cpu, cuda, cuda:1); under torchrun 'cuda' is each rank's own GPU (LOCAL_RANK)",
    )
    parser.add_argument(
        "--device-map", default=None, type=device_map_arg,
        help="split the model over devices instead: auto, balanced, sequential, a JSON object "
        "('{\"model.layers.0\": \"cuda:0\", ...}') or a JSON file; 'disk' entries go to --offload-folder",
    )
    parser.add_argument("--offload-folder", default=None, help="folder for a device map's 'disk' entries")


def device_map_arg(text: str) -> str | dict[str, Any]:
    """argparse type of ``--device-map``: accelerate's strategy names, a JSON object, or a JSON file."""
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    if text.endswith(".json") and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"device map file {text} does not exist")
    try:
        data = json.loads(Path(text).read_text(encoding="utf-8")) if Path(text).is_file() else json.loads(text)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither auto/balanced/balanced_low_0/sequential, a JSON object nor a readable JSON file ({exc})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in data.items()):
        raise argparse.ArgumentTypeError(
            f"a device map is a JSON object from module names to devices, e.g. "
            f'{{"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:1", "lm_head": "cpu"}}; got {text!r}'
        )
    return data


def load(name: str, args: argparse.Namespace | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model name or a local checkpoint folder, placed as
    :func:`add_placement_args`' options say (on the CPU without them)."""
    from depthkv.distributed import local_device
    from depthkv.models import load_model

    device_map = getattr(args, "device_map", None)
    offload = getattr(args, "offload_folder", None)
    if device_map is not None:
        return load_model(name, device_map=device_map, offload_folder=offload)
    if offload is not None:
        raise ValueError("--offload-folder holds a device map's 'disk' entries; give --device-map with it")
    return load_model(name, device=local_device(getattr(args, "device", "cpu")))


def card_path(name: str) -> Path:
    """Where the card of model ``name`` lives: ``evaluation.json`` beside a shipped tiny model's
    weights, ``depthkv/models/cards/<name>.json`` for a real model (written by ``depthkv card``)."""
    folder = MODELS_DIR / str(name)
    return folder / "evaluation.json" if folder.is_dir() else MODELS_DIR / "cards" / f"{name}.json"


def card(name: str) -> dict[str, Any]:
    """A model's measured card (full-cache accuracy per task and length), or {}."""
    path = card_path(name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def default_tasks(name: str, tokenizer: Any = None) -> list[str]:
    """The tasks the model's card lists as learned (full-cache accuracy at its default length at
    least the card's ``learned_threshold``, 0.8): a task the model does not do is left out of the
    default workload, as the card says. Without a card: the byte-level tasks for a byte tokenizer
    (depthkv's tiny models), the natural-text tasks for any other."""
    from depthkv.workload import DEFAULT_TASKS, NATURAL_TASKS, ByteTokenizer

    learned = card(name).get("learned_tasks")
    if learned:
        return list(learned)
    return list(DEFAULT_TASKS) if tokenizer is None or isinstance(tokenizer, ByteTokenizer) else list(NATURAL_TASKS)


def default_context(name: str) -> int:
    """The model's default context length: its card's (the trained length of a tiny model), else 1024."""
    data = card(name)
    return int(data.get("default_length", data.get("trained_length", 1024)))


def builtin_for(tokenizer: Any, tasks: list[str], n_per_task: int, context_length: int, split: str, seed: int) -> Any:
    """A built-in workload: byte-level tasks (:func:`depthkv.builtin_workload`, lengths in
    characters) or natural-text tasks (:func:`depthkv.workload.natural_workload`, lengths in tokens
    of ``tokenizer``), whichever ``tasks`` are."""
    from depthkv.workload import NATURAL_TASKS, TASKS, builtin_workload, natural_workload

    natural = [t for t in tasks if t in NATURAL_TASKS]
    if natural and len(natural) != len(tasks):
        raise ValueError(
            f"tasks {tasks} mix natural-text tasks ({', '.join(NATURAL_TASKS)}) with byte-level ones "
            f"({', '.join(TASKS)}); choose one kind"
        )
    if natural:
        return natural_workload(tokenizer, tasks, n_per_task=n_per_task, context_length=context_length, split=split, seed=seed)
    return builtin_workload(tasks, n_per_task=n_per_task, context_length=context_length, split=split, seed=seed)


def decoding(workload: Any) -> dict[str, Any]:
    """How answers are generated for ``workload`` (keyword arguments of :func:`depthkv.evaluate`).

    Byte-level tasks (exact answers): 2 tokens beyond the answer's length, stop at a newline. Where
    answers are found in the prediction (``"contains"``: real models add spaces, punctuation, a few
    words, or start a list on a new line): 4 tokens beyond it, and a newline does not stop them (the
    scorer judges the first paragraph).
    """
    from depthkv.workload import scorer_of

    found = any(scorer_of(ex) == "contains" for ex in getattr(workload, "examples", workload))
    return {"extra_tokens": 4, "stop_at_newline": False} if found else {"extra_tokens": 2, "stop_at_newline": True}


def add_policy_args(parser: argparse.ArgumentParser) -> None:
    """The eviction policy inside each layer and its observation window and pooling kernel."""
    parser.add_argument("--policy", default="snapkv", help="eviction policy inside each layer (snapkv)")
    parser.add_argument("--window", type=int, default=None, help="the policy's observation window (8)")
    parser.add_argument("--kernel", type=int, default=None, help="snapkv's pooling kernel (5)")


def policy_from_args(args: argparse.Namespace) -> Any:
    """The :class:`depthkv.PolicyConfig` of :func:`add_policy_args`' options."""
    from depthkv.policies import PolicyConfig

    given = {k: v for k, v in (("window", args.window), ("kernel", args.kernel)) if v is not None}
    return PolicyConfig(name=args.policy, **given)


def add_workload_args(parser: argparse.ArgumentParser, split: str, n_per_task: int) -> None:
    """Options that choose a workload: a JSONL file, or a built-in split."""
    parser.add_argument("--workload", default=None, help="JSONL file (default: a built-in split, below)")
    parser.add_argument("--tasks", nargs="+", default=None, help="built-in tasks (default: the model card's learned ones)")
    parser.add_argument("--n-per-task", type=int, default=n_per_task, help=f"built-in examples per task ({n_per_task})")
    parser.add_argument("--context-length", type=int, default=None, help="built-in context length (default: the model's card)")
    parser.add_argument("--split", default=split, choices=["calibration", "evaluation"], help=f"built-in split ({split})")
    parser.add_argument("--seed", type=int, default=0, help="built-in workload seed (0)")


def workload_from_args(args: argparse.Namespace, tokenizer: Any) -> Any:
    """The workload :func:`add_workload_args`' options name (natural-text tasks are sized in
    tokens of ``tokenizer``)."""
    from depthkv.workload import from_jsonl

    if args.workload:
        return from_jsonl(args.workload)
    return builtin_for(
        tokenizer,
        args.tasks or default_tasks(args.model, tokenizer),
        args.n_per_task,
        args.context_length or default_context(args.model),
        args.split,
        args.seed,
    )


def calibration_workload(profile: Any, path: str | None, tokenizer: Any) -> Any:
    """The workload ``profile`` was calibrated on: ``path`` (JSONL), or the built-in split rebuilt
    from the profile's description (:func:`depthkv.workload.rebuild_workload`, which checks the
    examples' digest)."""
    from depthkv.workload import from_jsonl, rebuild_workload

    if path:
        return from_jsonl(path)
    desc = profile.workload or {}
    if desc.get("source") not in ("builtin", "natural"):
        raise ValueError("the profile was calibrated on a custom workload; pass the same file with --workload my.jsonl")
    try:
        return rebuild_workload(desc, tokenizer)
    except ValueError as exc:
        raise ValueError(f"{exc}; pass the calibration examples with --workload") from None


def split_hash(example: Any, seed: int) -> float:
    """A number in [0, 1) fixed by the example's content and ``seed``: the first 8 bytes of
    ``sha256("depthkv-split/<seed>/" + canonical JSON of the example)`` over 2**64."""
    text = json.dumps(example.to_dict(), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"depthkv-split/{int(seed)}/{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_examples(examples: list[Any], fraction: float, seed: int, source: str = "the workload") -> tuple[list[Any], list[Any]]:
    """``(calibration, evaluation)``: an example is for calibration iff ``split_hash(example, seed) <
    fraction``. Deterministic and order-free: each example's side depends on its content and the
    seed only (adding examples to the file moves none of the others, and identical examples land on
    the same side, so the parts never share one). The parts keep the file's order; their sizes are
    ``fraction`` of the file's on average, not exactly.

    Raises:
        ValueError: ``fraction`` not in (0, 1), or fewer than 2 calibration or 1 evaluation examples.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the calibration fraction must be in (0, 1), e.g. 0.33; got {fraction}")
    calib = [ex for ex in examples if split_hash(ex, seed) < fraction]
    evalw = [ex for ex in examples if split_hash(ex, seed) >= fraction]
    if len(calib) < MIN_CALIBRATION or not evalw:
        raise ValueError(
            f"{source}: its {len(examples)} examples split into {len(calib)} for calibration and {len(evalw)} for "
            f"evaluation (fraction {fraction:.3g}, seed {seed}); at least {MIN_CALIBRATION} calibration examples and 1 "
            "evaluation example are needed: add examples, change --calib-fraction or --seed, or give the "
            "evaluation examples in their own file with --eval-workload"
        )
    return calib, evalw


def mean_context_tokens(tokenizer: Any, workload: Any) -> float:
    """Mean number of tokens of the examples' contexts."""
    from depthkv.calibration.engine import encode_text

    lengths = [len(encode_text(tokenizer, ex.context, True)) for ex in workload]
    return float(sum(lengths) / len(lengths)) if lengths else 0.0


def add_comparison_args(parser: argparse.ArgumentParser) -> None:
    """What is compared with DepthKV's plans: the baselines and the controls."""
    parser.add_argument(
        "--baselines", nargs="*", default=None, metavar="NAME",
        help="profile-free allocations at each budget: uniform, pyramid (default: both; none: --baselines alone)",
    )
    parser.add_argument(
        "--no-controls", action="store_true",
        help="leave out each DepthKV plan's controls (its budgets shuffled over the layers, seeded by --seed, "
             "and inverted: the largest to the least sensitive layers)",
    )


def baselines_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--baselines`` named (default: uniform and pyramid), checked before any work starts."""
    from depthkv.evaluation import BASELINES

    names = BASELINES if args.baselines is None else tuple(args.baselines)
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BASELINES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--baselines names one twice: {list(names)}")
    return names


def report_folder(path: str) -> Path:
    """``--out`` of a command that writes a report folder: refuses an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {path} is a file; the report is written into a folder")
    return out


def run_info(args: argparse.Namespace, started: float, **extra: Any) -> dict[str, Any]:
    """Where and how a result was made: model, the command, machine, versions, wall time."""
    import time

    import torch
    import transformers

    return {
        "model": args.model,
        "command": " ".join(["depthkv", *args.argv]),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        **extra,
        "wall_s": time.time() - started,
    }


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
