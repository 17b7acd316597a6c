"""`npedit corpus ...`: build a corpus, print its stats, diff two snapshots, write a duckdb CLI init file."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table


def _config(args: argparse.Namespace):
    import dataclasses

    from datasets_builder.config import CorpusConfig, SourceConfig, load_corpus_config
    from datasets_builder.fetch import FetchConfig

    if args.config:
        config = load_corpus_config(args.config)
    elif not (args.url_list or args.folder):
        raise SystemExit("npedit corpus build: give --config, --url-list or --folder")
    else:
        config = CorpusConfig(
            source=SourceConfig(url_list=args.url_list and str(args.url_list), folder=args.folder and str(args.folder)),
            work_dir=str(args.work_dir), lake_dir=str(args.lake_dir), catalog=args.catalog, data_path=args.data_path,
            fetch=FetchConfig(shard_size=args.shard_size),
        )
    if args.ray is not None:  # shard work as tasks on a Ray cluster (the rest of [build] stays as configured)
        config = dataclasses.replace(config, build=dataclasses.replace(config.build, engine="ray",
                                                                       ray_address=args.ray))
    return config


def _lake(args: argparse.Namespace):
    from datasets_builder.lake import LakeConfig

    return LakeConfig.of(args.lake_dir, args.catalog, args.data_path)


def print_result(console: Console, result) -> None:
    table = Table(title=f"{result.name}  ({result.seconds * 1000:.1f} ms)", title_justify="left")
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)


def build(args: argparse.Namespace) -> int:
    from dagster_project.build import build_corpus

    console = Console()
    metadata = build_corpus(_config(args), message=args.message, tag=args.tag, replace=args.replace,
                            on_event=console.print)
    if not metadata.get("new_snapshot", True):  # a rerun of a finished build: idempotent
        name = f"{metadata['tag']} (id {metadata['snapshot_id']})" if metadata.get("tag") else metadata["snapshot_id"]
        console.print(f"snapshot {name} already holds this content; nothing to publish", highlight=False)
        return 0
    console.print({k: v for k, v in metadata.items() if k != "preview"})
    return 0


def stats(args: argparse.Namespace) -> int:
    from datasets_builder.stats import snapshot_stats

    console = Console()
    for result in snapshot_stats(_lake(args), args.snapshot):
        print_result(console, result)
    return 0


def diff(args: argparse.Namespace) -> int:
    from datasets_builder.stats import snapshot_diff

    print_result(Console(), snapshot_diff(_lake(args), args.a, args.b))
    return 0


def sql_init(args: argparse.Namespace) -> int:
    from datasets_builder.stats import write_cli_init

    path = write_cli_init(_lake(args), args.out)
    print(f"{path}\nrun: duckdb -init {path}   (then e.g. SELECT edit_type, count(*) FROM edit_instructions GROUP BY 1)")
    return 0


def _add_lake_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake-dir", type=Path, default=Path("corpus_lake"))
    parser.add_argument("--catalog", default=None,
                        help="DuckLake catalog: a file, sqlite:PATH or 'postgres:dbname=... host=...' "
                             "(default: LAKE_DIR/corpus.ducklake)")
    parser.add_argument("--data-path", default=None, help="folder of the Parquet files (default: LAKE_DIR/data/)")


def add_corpus_commands(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="build and inspect the unpaired editing corpus")
    commands = corpus.add_subparsers(dest="corpus_command", required=True)

    b = commands.add_parser("build", help="materialize every asset in process and publish a snapshot")
    b.add_argument("--config", type=Path, help="corpus TOML (see configs/corpus_example.toml)")
    b.add_argument("--url-list", type=Path, help="parquet/csv/jsonl with a url (and optional caption) column")
    b.add_argument("--folder", type=Path, help="a folder of images instead of a URL list")
    b.add_argument("--work-dir", type=Path, default=Path("corpus_work"))
    _add_lake_options(b)
    b.add_argument("--shard-size", type=int, default=1000)
    b.add_argument("--message", default="corpus build")
    b.add_argument("--tag", default=None, help="a unique name for the snapshot (e.g. v1)")
    b.add_argument("--replace", action="store_true",
                   help="the new snapshot holds only this configuration's outputs (another model, prompt, sampling "
                        "or image limits); earlier snapshots keep theirs")
    b.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run shard work as tasks on a Ray cluster: its head's host:port, or auto (see README, "
                        "'Building on several machines')")
    b.set_defaults(func=build)

    for name, func, text in (("stats", stats, "print the users' questions answered at a snapshot"),
                             ("diff", diff, "row counts per table at two snapshots"),
                             ("sql-init", sql_init, "write an init file for the duckdb CLI")):
        p = commands.add_parser(name, help=text)
        _add_lake_options(p)
        if name == "stats":
            p.add_argument("--snapshot", default=None, help="id or tag; default: the latest")
        if name == "diff":
            p.add_argument("a")
            p.add_argument("b")
        if name == "sql-init":
            p.add_argument("--out", type=Path, default=Path("lake_init.sql"))
        p.set_defaults(func=func)
