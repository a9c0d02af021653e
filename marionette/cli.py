"""The ``marionette`` command: train, decompose, generate data, evaluate, sweep."""

import argparse
import errno
import sys
import typing
import warnings
from pathlib import Path

import numpy as np

from .config import ALIASES, CHOICES, Config
from .core import CODE_KINDS

__all__ = ["main"]

#: Settings with flags of their own (``--data DIR``, ``--synthetic NAME``).
_SOURCE_FLAGS = ("data", "synthetic")
_LAUNCHER_SETTINGS = ("world_size",)  # recorded from torchrun, never a flag


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, spelled with underscores (the original's) or dashes."""
    group = parser.add_argument_group("settings (see marionette.config for their meaning)")
    group.add_argument(
        "--canvas_size",
        "--canvas-size",
        type=int,
        default=argparse.SUPPRESS,
        help="square canvas side (sets --height and --width)",
    )
    for f in Config.fields():
        if f.name in _SOURCE_FLAGS or f.name in _LAUNCHER_SETTINGS:
            continue
        spellings = [f.name] + [old for old, new in ALIASES.items() if new == f.name]
        names = [f"--{name}" for name in spellings]
        names += [f"--{name.replace('_', '-')}" for name in spellings if "_" in name]
        kwargs: dict = {"default": argparse.SUPPRESS, "dest": f.name}
        if f.type is bool:  # the original's flags take no value; --flag false works too
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(f.type) is tuple:
            kwargs.update(nargs="+", metavar="X")
        elif f.name == "background":  # the original's --background means the learned strip
            kwargs.update(nargs="?", const="strip", choices=CHOICES[f.name])
        elif f.name in CHOICES:
            kwargs.update(choices=CHOICES[f.name])
        group.add_argument(*names, **kwargs)
    group.add_argument(
        "--spatial_transformer_bg",
        "--spatial-transformer-bg",
        action="store_const",
        const="strip_st",
        dest="background",
        default=argparse.SUPPRESS,
        help="the original's flag: learned strip with a spatial-transformer window",
    )


def _settings(args: argparse.Namespace) -> dict:
    names = (set(Config.names()) | {"canvas_size"}) - set(_SOURCE_FLAGS)
    return {k: v for k, v in vars(args).items() if k in names}


def _base_config(args: argparse.Namespace) -> Config:
    from .presets import preset_config

    if args.config and args.preset:
        raise SystemExit("error: give either --config or --preset, not both")
    if args.config:
        return Config.load(args.config)
    if args.preset:
        return preset_config(args.preset)
    return Config()


def _train(args: argparse.Namespace) -> int:
    from .distributed import from_environment
    from .presets import preset_config
    from .rundir import CONFIG_FILE, ConfigMismatch, RunInUse
    from .trainer import OutOfMemory, TrainingDiverged, TrainingFailed, train

    settings = _settings(args)
    if args.data is not None:
        settings["data"] = args.data
    if args.synthetic is not None:
        settings["synthetic"] = args.synthetic
        settings["data"] = None
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / (args.preset or args.synthetic or Path(args.data or "demo").name)
    )
    if args.resume and (out / CONFIG_FILE).exists() and not args.config and not args.preset:
        config = Config.load(out / CONFIG_FILE).replace(**settings)
    elif args.config or args.preset:
        config = _base_config(args).replace(**settings)
    elif args.data is None and args.synthetic is None:
        config = preset_config("demo").replace(**settings)  # no data at all: the built-in demo
    else:
        from .autoconfig import auto_config

        config = auto_config(settings)
        launched = from_environment()
        if launched is None or launched[0] == 0:
            print("settings from the data (config.json records them with their reasons):")
            for line in _chosen(config):
                print(f"  {line}")
    try:
        result = train(
            config,
            out,
            resume=args.resume,
            progress=not args.no_progress,
            tensorboard=not args.no_tensorboard,
        )
    except (ConfigMismatch, RunInUse, TrainingDiverged, TrainingFailed, OutOfMemory) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    launched = from_environment()
    if launched is not None and launched[0] != 0:
        return 0  # under torchrun rank 0 reports for the group
    m = result.metrics
    print(
        f"trained {result.step} steps into {out}: PSNR soft {m.get('psnr', float('nan')):.2f} "
        f"dB, hard {m.get('psnr_hard', float('nan')):.2f} dB "
        f"({m['train_seconds']:.0f} s this session)"
    )
    return 0


def _chosen(config: Config) -> list[str]:
    """Each data-chosen setting with its value and reason (``canvas``: height, width, resize)."""
    lines = []
    for name, reason in config.reasons.items():
        if name == "canvas":
            m = config.model
            value = f"{m.height} x {m.width}, resize {config.data.resize}"
        else:
            value = config.get(name)
            value = ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
        lines.append(f"{name} = {value}: {reason}")
    return lines


def _data_stats(args: argparse.Namespace) -> int:
    from .autoconfig import auto_config, data_stats, describe
    from .data import open_frames

    settings = {**_settings(args), "data": args.folder}
    if args.split:  # a MOC game folder's split, by its frames' folder
        settings["data"] = str(open_frames(args.folder, split=args.split).folder)
    stats = data_stats(settings)
    for line in describe(stats):
        print(line)
    print("settings marionette train would choose (flags override any of them):")
    for line in _chosen(auto_config(settings, stats)):
        print(f"  {line}")
    return 0


def _decompose(args: argparse.Namespace) -> int:
    from .api import load
    from .build import build_data, resolve_device
    from .data import open_frames
    from .decompose import decompose_frames

    model, config = load(args.run, args.checkpoint)
    if args.data:
        size = (config.model.height, config.model.width)
        frames = open_frames(args.data, size, args.resize or config.data.resize, default="test")
    else:  # the training frames, or held-out clips of a synthetic world
        frames = build_data(config, "train" if config.data.data else "test")
    if args.frames:
        frames = frames.head(args.frames)
    out = Path(args.out) if args.out else Path(args.run) / "decomposition"
    tqdm = _tqdm_factory(not args.no_progress)
    progress = (lambda batches: tqdm(batches, desc="decompose", unit="batch")) if tqdm else None
    summary = decompose_frames(
        model,
        frames,
        out,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        progress=progress,
    )
    print(
        f"decomposed {summary['frames']} frames into {out} "
        f"({summary['objects_per_frame']:.1f} objects per frame: "
        f"{summary['sprites_per_frame']:.1f} visible sprites less their repeats; hard PSNR "
        f"{summary['psnr_hard']:.2f} dB)"
    )
    print(f"sprite sheet: {summary['sprite_sheet']}")
    print(f"summary:      {summary['summary']}")
    return 0


def _data_synthetic(args: argparse.Namespace) -> int:
    from .data import generate, write_dataset
    from .data.dataset import package_versions

    overrides = {}
    if args.clips:
        overrides["num_images" if args.world == "tetrominoes" else "num_clips"] = args.clips
    if args.seed is not None:
        overrides["seed"] = args.seed
    data = generate(args.world, args.split, **overrides)
    frames = data.frames.data.permute(0, 2, 3, 1).numpy()
    settings = {
        **data.settings,
        "world": args.world,
        "split": args.split,
        "class_names": data.class_names,
        "versions": package_versions(),
    }
    out = write_dataset(
        args.out,
        frames,
        data.frames.names,
        data.frames.clips,
        data.frames.times,
        settings,
        data.groundtruth,
        data.masks,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(frames)} frames of the {args.world!r} world to {out}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from .data import load_dataset

    dataset = load_dataset(args.folder, split=args.split)  # ground-truth rows checked
    frames = dataset.frames
    if dataset.info.get("layout") == "moc":
        print(
            f"MOC layout: game {dataset.info['game']}, split {dataset.info['split']}; frames "
            f"from {frames.folder} ({frames.channels.upper()} files, read as RGB)"
        )
    frames.check()  # every frame decodes, at one size
    lengths = np.bincount(np.unique(frames.clips, return_inverse=True)[1])
    print(
        f"{frames.folder}: {len(frames)} frames of {frames.height} x {frames.width} (H x W), "
        f"{len(lengths)} clip(s) of {lengths.min()}-{lengths.max()} frames; every frame decodes"
    )
    gt = dataset.groundtruth
    if gt is None:
        missing = dataset.info.get("no_groundtruth", "no groundtruth.csv")
        print(f"no ground truth ({missing}): fine for training, needed for marionette eval")
    else:
        print(
            f"ground truth: {len(gt)} objects in {len(set(gt.frame.tolist()))} frames, "
            f"{int(gt.moving.sum())} moving; classes {gt.class_names}"
        )
    print(f"instance masks: {'yes' if dataset.masks is not None else 'no'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .api import load_run
    from .build import build_eval_data, resolve_device
    from .data import load_dataset
    from .eval import OVERLAP, evaluate, first_frames, summary, write_metrics

    model, config, step, _ = load_run(args.run, args.checkpoint)
    if args.data:
        data = load_dataset(
            args.data, (config.model.height, config.model.width), args.resize or config.data.resize
        )
    else:
        data = build_eval_data(config)
        if data is None:
            raise ValueError(f"{args.run} trained on data without ground truth; pass --data DIR")
    data = first_frames(data, args.frames)
    metrics = evaluate(
        model, data, args.code, args.game, args.seed, args.batch_size,
        resolve_device(args.device), OVERLAP if args.overlap is None else args.overlap,
    )  # fmt: skip
    out = Path(args.out) if args.out else Path(args.run) / "eval"
    path = write_metrics(out, metrics, step)
    if not args.no_tensorboard:
        _log_tensorboard(Path(args.run) / "tensorboard", metrics, step)
    print(f"evaluated {metrics['frames']} frames, {metrics['objects']} objects ({args.code} codes)")
    for key, value in summary(metrics).items():
        print(f"  {key:36s} {value:.4f}")
    by_class = metrics.get("relevant", {}).get("recall_by_class")
    if by_class:
        found = ", ".join(f"{name} {value:.2f}" for name, value in by_class.items())
        print(f"  relevant recall by class: {found}")
    print(f"metrics: {path} (and a row in {out / 'metrics_eval.csv'})")
    return 0


def _log_tensorboard(directory: Path, metrics: dict, step: int) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    from .eval import flatten_metrics

    with SummaryWriter(str(directory)) as writer:
        for key, value in flatten_metrics(metrics).items():
            if isinstance(value, int | float):
                writer.add_scalar(f"eval/{key}", value, step)


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepFailed, parse_grid, run_sweep, summarise

    grid = parse_grid(args.grid)
    settings = parse_grid_settings(args.set) if args.set else {}
    if not (args.config or args.preset) and {"data", "synthetic"} & set(settings):
        from .autoconfig import auto_config

        base = auto_config(settings)  # as train: settings from the data, the grid on top
    else:
        base = _base_config(args).replace(**settings)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    failed = None
    try:
        runs = run_sweep(
            base,
            grid,
            args.out,
            evaluate_runs=not args.no_eval,
            progress=not args.no_progress and args.jobs == 1,
            jobs=args.jobs,
            devices=devices,
        )
    except SweepFailed as error:
        failed, runs = error, error.runs
    summarise(args.out, runs, grid)
    print(Path(args.out, "summary.md").read_text())
    print(f"table: {Path(args.out) / 'summary.csv'} and summary.md")
    if failed is not None:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    return 0


def parse_grid_settings(items: list[str]) -> dict[str, str]:
    """``["num_steps=500"]`` -> ``{"num_steps": "500"}`` (fixed settings of a sweep)."""
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set entries must look like key=value, got {item!r}")
        settings[key.strip().replace("-", "_")] = value.strip()
    return settings


def _at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _frame_size(text: str) -> tuple[int, int] | None:
    """``native``, ``N`` (square) or ``HxW``."""
    if text == "native":
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise argparse.ArgumentTypeError(
            f"size must be 'native', N or HxW with sides of at least 8, got {text!r}"
        )
    return (parts[0], parts[-1])


def _stage(text: str) -> tuple[int, int]:
    """A Super Mario Bros stage ``W-S`` (world 1-8, stage 1-4)."""
    from .data.mario import ALL_STAGES

    try:
        stage = tuple(int(v) for v in text.split("-"))
    except ValueError:
        stage = ()
    if stage not in ALL_STAGES:
        raise argparse.ArgumentTypeError(
            f"a stage must be WORLD-STAGE with world 1-8 and stage 1-4 (e.g. 1-1), got {text!r}"
        )
    return stage


def _tqdm_factory(enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _data_atari(args: argparse.Namespace) -> int:
    from .data.atari import AtariConfig, generate_atari

    config = AtariConfig(
        game=args.game,
        clips=args.clips,
        frames_per_clip=args.frames_per_clip,
        frameskip=args.frameskip,
        seed=args.seed,
        burn_in=args.burn_in,
        size=args.size,
        rows=tuple(args.rows) if args.rows else None,
        hud=not args.no_hud,
        hidden=args.hidden,
    )
    out = generate_atari(
        args.out,
        config,
        args.split,
        args.layout,
        overwrite=args.overwrite,
        progress=_tqdm_factory(not args.no_progress),
    )
    print(f"wrote {config.clips} clips of {config.frames_per_clip} {config.game} frames to {out}")
    return 0


def _data_mario(args: argparse.Namespace) -> int:
    from .data.mario import MarioConfig, generate_mario

    stages = {"stages": tuple(dict.fromkeys(args.stages))} if args.stages else {}
    config = MarioConfig(
        frames=args.frames, every=args.every, size=args.size, seed=args.seed, **stages
    )
    out = generate_mario(
        args.out, config, overwrite=args.overwrite, progress=_tqdm_factory(not args.no_progress)
    )
    print(f"wrote {config.frames} Super Mario Bros frames to {out}")
    return 0


def _add_run_arguments(
    parser: argparse.ArgumentParser, data_help: str, default_out: str, batch_size: int
) -> None:
    """The flags of commands that apply a trained run to frames (decompose, eval)."""
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--data", help=data_help)
    parser.add_argument("--out", help=f"output folder (default: {default_out})")
    parser.add_argument("--checkpoint", help="a specific checkpoint file")
    parser.add_argument(
        "--resize", choices=CHOICES["resize"], help="resize policy for --data (default: the run's)"
    )
    parser.add_argument(
        "--frames", type=_at_least(0), default=0, help="only the first N frames (0: all)"
    )
    parser.add_argument("--batch-size", type=_at_least(1), default=batch_size)
    parser.add_argument("--device", default="auto")


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train a model (with no data argument: the built-in demo world)",
        description="Train a model. Settings come from --preset or --config, then the flags; "
        "with --data or --synthetic and neither, they are chosen from the frames (see "
        "`marionette data stats`; --preset original: the original's defaults). Training into "
        "an existing run directory with the same settings resumes it up to the same total "
        "--num_steps.",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        help="folder of numbered frames (0.png, 1.png, ...), or a MOC dataset (<Game>-v0: its "
        "train split; or a split folder)",
    )
    source.add_argument(
        "--synthetic", help="built-in synthetic world (demo, tiny, stars, large, tetrominoes)"
    )
    train.add_argument("--out", help="run directory (default: runs/<preset or data name>)")
    train.add_argument(
        "--preset",
        help="demo, space_invaders, space_invaders_moc, mario, tetrominoes or original "
        "(default with --data: settings chosen from the data)",
    )
    train.add_argument("--config", help="a config.json to start from (e.g. of another run)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out with its stored settings (only run "
        "length, logging and hardware settings may change)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard events")
    _add_setting_flags(train)
    train.set_defaults(handler=_train)


def _add_decompose(commands) -> None:
    decompose = commands.add_parser(
        "decompose",
        help="write the explicit decomposition of frames (JSON, PNGs)",
        description="Decompose frames with a trained run: per-frame JSON of the visible "
        "sprites, hard reconstructions, per-layer images, the sprite sheet and a "
        "summary picture.",
    )
    _add_run_arguments(
        decompose,
        "frame folder or MOC dataset (its test split) (default: the run's held-out synthetic "
        "clips, or its training folder)",
        "RUN/decomposition",
        batch_size=16,
    )
    decompose.add_argument("--no-progress", action="store_true")
    decompose.set_defaults(handler=_decompose)


def _add_eval(commands) -> None:
    evaluation = commands.add_parser(
        "eval",
        help="evaluate a run's objects against ground truth (few-shot, AMI, detection, ...)",
        description="Evaluate the objects of a trained run against ground truth (the "
        "generators' groundtruth.csv). Writes metrics.json and a row of metrics_eval.csv.",
    )
    _add_run_arguments(
        evaluation,
        "dataset folder with groundtruth.csv, or a MOC dataset (<Game>-v0: its test split; or "
        "a split folder) (default: the run's held-out data)",
        "RUN/eval",
        batch_size=32,
    )
    evaluation.add_argument(
        "--code",
        default="codes",
        choices=CODE_KINDS,
        help="object vector: anchor code (MOC's z_what), projected query, or selection weights",
    )
    evaluation.add_argument("--game", help="HUD filter of the relevant view (default: the data's)")
    evaluation.add_argument("--seed", type=int, default=0, help="k-means and random splits")
    evaluation.add_argument(
        "--overlap",
        type=float,
        metavar="IOU",
        help="of two objects of a frame whose boxes overlap by more than this IoU, the less "
        "present one is a repeat and left out (default: marionette.eval.OVERLAP, 0.5; 1 keeps "
        "every present slot)",
    )
    evaluation.add_argument("--no-tensorboard", action="store_true")
    evaluation.set_defaults(handler=_eval)


def _add_sweep(commands) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="train and evaluate a grid of settings and seeds; mean +- std table",
        description="Train every combination of --grid on top of --preset/--config (and --set), "
        "each in OUT/<settings>, evaluate it, and write OUT/summary.csv and summary.md with "
        "mean +- std over seeds. Finished runs are skipped, interrupted ones resume.",
    )
    sweep.add_argument(
        "--grid", nargs="+", required=True, help="key=v1,v2 ... e.g. seed=0,1,2 aow=0,10"
    )
    sweep.add_argument(
        "--set",
        nargs="+",
        help="fixed settings key=value for every run (with data= or synthetic= and no "
        "--preset or --config, the other settings are chosen from the data)",
    )
    sweep.add_argument("--preset")
    sweep.add_argument("--config")
    sweep.add_argument("--out", required=True)
    sweep.add_argument("--no-eval", action="store_true")
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument(
        "--jobs",
        type=_at_least(1),
        default=1,
        help="runs at a time, each in its own process (CPU: the cores are split between them)",
    )
    sweep.add_argument(
        "--devices", help="devices the jobs take in turn, e.g. cuda:0,cuda:1 (default: --device)"
    )
    sweep.set_defaults(handler=_sweep)


def _add_data_synthetic(generators) -> None:
    synthetic = generators.add_parser(
        "synthetic", help="a built-in synthetic world with ground truth"
    )
    synthetic.add_argument(
        "--world", default="demo", help="demo, tiny, stars, large or tetrominoes"
    )
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--split", default="train", choices=("train", "test"))
    synthetic.add_argument("--clips", type=int, default=0, help="clips (images for tetrominoes)")
    synthetic.add_argument("--seed", type=int)
    synthetic.add_argument("--overwrite", action="store_true")
    synthetic.set_defaults(handler=_data_synthetic)


def _add_data_check(generators) -> None:
    check = generators.add_parser(
        "check", help="decode every frame of a dataset folder and check its ground truth"
    )
    check.add_argument(
        "folder", help="a folder of frames (with groundtruth.csv if any), or a MOC dataset"
    )
    check.add_argument("--split", help="split of a MOC game folder (default: test)")
    check.set_defaults(handler=_data_check)


def _add_data_stats(generators) -> None:
    stats = generators.add_parser(
        "stats",
        help="measure a frame folder and print the settings training would choose from it",
        description="Background, sprite sizes, looks and crowding of a sample of the frames, "
        "and the settings `marionette train --data FOLDER` chooses from them without a preset "
        "(with any settings given as flags kept).",
    )
    stats.add_argument("folder", help="a folder of frames, or a MOC dataset")
    stats.add_argument("--split", help="split of a MOC game folder (default: train)")
    _add_setting_flags(stats)
    stats.set_defaults(handler=_data_stats)


def _add_data_atari(generators) -> None:
    atari = generators.add_parser(
        "atari",
        help="Atari clips with OCAtari ground truth (pip install 'marionette[atari]')",
        description="Record clips of consecutive Atari frames with a seeded random policy "
        "(ALE v5, deterministic frameskip, no sticky actions) and per-frame object boxes from "
        "OCAtari's RAM mode.",
    )
    atari.add_argument("--game", default="SpaceInvaders", help="ALE game name, e.g. Pong")
    atari.add_argument("--clips", type=int, default=100)
    atari.add_argument("--frames-per-clip", type=int, default=8)
    atari.add_argument("--frameskip", type=int, default=2)
    atari.add_argument("--burn-in", type=int, default=50, help="steps after each reset")
    atari.add_argument(
        "--size", type=_frame_size, default=(128, 128), help="N, HxW or native (210x160)"
    )
    atari.add_argument(
        "--rows", type=int, nargs=2, metavar=("Y0", "Y1"), help="crop native rows first"
    )
    atari.add_argument("--no-hud", action="store_true", help="leave out score and lives")
    atari.add_argument(
        "--hidden",
        action="store_true",
        help="also label objects the frame does not show (flickered or stacked sprites), and "
        "keep OCAtari's boxes as the RAM gives them (not shrunk to the drawn pixels)",
    )
    atari.add_argument("--split", default="train", choices=("train", "validation", "test"))
    atari.add_argument("--seed", type=int, help="default: 0, 1, 2 for train, validation, test")
    atari.add_argument(
        "--layout",
        default="marionette",
        choices=("marionette", "moc"),
        help="moc: also write MOC's layout and CSVs under OUT/moc/",
    )
    atari.add_argument("--out", required=True)
    atari.add_argument("--overwrite", action="store_true")
    atari.add_argument("--no-progress", action="store_true")
    atari.set_defaults(handler=_data_atari)


def _add_data_mario(generators) -> None:
    mario = generators.add_parser(
        "mario",
        help="Super Mario Bros frames with Mario's box (pip install 'marionette[mario]')",
    )
    mario.add_argument("--frames", type=int, default=2000)
    mario.add_argument("--every", type=int, default=4, help="save every n-th NES frame")
    mario.add_argument("--size", type=_frame_size, default=None, help="N, HxW or native")
    mario.add_argument("--seed", type=int, default=0)
    mario.add_argument(
        "--stages", nargs="+", type=_stage, metavar="W-S",
        help="stages to play, e.g. 1-1 (one level); default: all 32",
    )  # fmt: skip
    mario.add_argument("--out", required=True)
    mario.add_argument("--overwrite", action="store_true")
    mario.add_argument("--no-progress", action="store_true")
    mario.set_defaults(handler=_data_mario)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``marionette`` command."""
    parser = argparse.ArgumentParser(
        prog="marionette",
        description="Self-supervised sprite learning: train MarioNette, decompose frames into "
        "sprites, generate data, evaluate object representations.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_decompose, _add_eval, _add_sweep):
        add(commands)
    data = commands.add_parser(
        "data",
        help="generate datasets (synthetic worlds, Atari, Mario), check one or measure one",
    )
    generators = data.add_subparsers(dest="generator", required=True)
    for add in (
        _add_data_synthetic,
        _add_data_atari,
        _add_data_mario,
        _add_data_check,
        _add_data_stats,
    ):
        add(generators)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``marionette`` command: expected failures (bad input, a bad
    checkpoint, a full disk, a failed run) print one ``error:`` line, never a traceback."""
    from .checkpoint import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.handler(args)
    except OSError as error:  # a full disk, a missing or unreadable file, ...
        if error.errno == errno.ENOSPC:
            where = error.filename or "the output folder"
            print(f"error: no space left on device while writing {where}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, ImportError, CheckpointError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
