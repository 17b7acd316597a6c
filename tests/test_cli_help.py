"""What the CLI's help and the docs point users at exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from npedit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CONFIG_PATH = re.compile(r"configs/[\w./-]*\w")


def _help_texts(parser: argparse.ArgumentParser) -> list[str]:
    """The help of `parser` and of every subcommand under it."""
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += _help_texts(sub)
    return texts


def test_every_configs_path_in_cli_help_and_docs_exists():
    helps = _help_texts(build_parser())
    assert len(helps) > 5 and any("corpus build" in text for text in helps)
    docs = [(ROOT / "README.md").read_text(), *(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))]
    mentioned = {m for text in helps + docs for m in CONFIG_PATH.findall(re.sub(r"\s+", " ", text))}
    assert mentioned, "no configs/ path found: the pattern is stale"
    missing = sorted(p for p in mentioned if not (ROOT / p).exists())
    assert not missing, f"named in help or docs but absent: {missing}"


def test_every_shipped_corpus_config_loads():
    from datasets_builder.config import load_corpus_config

    shipped = sorted((ROOT / "configs").glob("corpus_*.toml"))
    assert len(shipped) >= 3
    for path in shipped:
        load_corpus_config(path)
