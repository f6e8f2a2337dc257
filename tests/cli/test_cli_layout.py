"""The command line is a package with one-way registration: one module per subcommand, shared
flags defined once in ``cli.common``, flags of ``flops`` generated from a {flag: config key}
table, and no library module importing ``sparsetrain.cli``."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sparsetrain.cli import common, main as package_main
from sparsetrain.cli import flops as flops_cmd
from sparsetrain.cli.main import SUBCOMMANDS, build_parser
from helpers import run_cli as cli
from helpers import ROOT

PKG = ROOT / "src" / "sparsetrain"


def imported_modules(path: Path):
    """(module, level) of every import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, 0) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield from ((f"{node.module or ''}.{a.name}".lstrip("."), node.level) for a in node.names)


def test_library_never_imports_the_cli():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("cli", "__main__.py"):
            continue
        depth = len(rel.parts) - 1  # a relative import of level depth + 1 reaches the package root
        for module, level in imported_modules(path):
            absolute = module if level == 0 else ("sparsetrain." + module if level == depth + 1 else "")
            assert not absolute.startswith("sparsetrain.cli"), f"{rel} imports {module}"


def test_subcommand_modules_import_only_library_code_and_common():
    for path in (PKG / "cli").glob("*.py"):
        if path.name in ("__init__.py", "main.py"):
            continue
        for module, level in imported_modules(path):
            if level == 1:  # a sibling in sparsetrain.cli
                assert module.startswith("common."), f"{path.name} imports .{module}"


def test_every_subcommand_is_registered_once_with_help(capsys):
    names = [m.NAME for m in SUBCOMMANDS]
    assert names == ["train", "list", "flops", "sweep", "report", "landscape", "sanity"]
    for name in names:
        code, out, err = cli([name, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: sparsetrain {name}"), (name, err)
    # the console script `sparsetrain.cli:main` and `python -m sparsetrain` reach main.main
    from sparsetrain.cli.main import main as module_main

    assert package_main is module_main and build_parser().prog == "sparsetrain"


def test_shared_flags_are_defined_once():
    import re

    for flag in ("--device", "--data-dir", "--out-dir", "--quiet", "--config", "--set"):
        pattern = re.compile(r"add_argument\(\s*\"" + flag + '"')
        where = [p.name for p in (PKG / "cli").glob("*.py") if pattern.search(p.read_text())]
        assert where in ([], ["common.py"]), (flag, where)
        assert where == ["common.py"] or flag in common.COMMON


def test_shortcuts_become_set_assignments():
    p = build_parser()
    args = p.parse_args(["flops", "--model", "wrn", "--sparsity", "0.8", "--no-dense-first", "--dense-last",
                         "--delta-t", "7", "--set", "seed=1"])
    assert common.config_overrides(args, flops_cmd.SHORTCUTS) == (
        "seed=1", "model.name=wrn", "sparsity.sparsity=0.8", "sparsity.options.delta_t=7",
        "sparsity.dense_first=false", "sparsity.dense_last=true")
    args = p.parse_args(["train", "--quiet", "--device", "cpu"])
    assert common.shortcut_overrides(args, common.common("--device", "--quiet")) == [
        "train.device=cpu", "train.progress=off"]


def test_flops_help_takes_types_and_defaults_from_the_config(capsys):
    code, out, _ = cli(["flops", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "config key sparsity.sparsity, float, default 0.9" in text
    assert "--dense-first, --no-dense-first" in text and "--config" in text and "--set" in text


def flops_json(capsys, *args):
    code, out, err = cli(["flops", "--json", *args], capsys)
    assert code == 0, err
    return json.loads(out)


def test_flops_reads_the_same_config_as_train(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[model]\nname = "mlp"\n[data]\nname = "digits"\n[sparsity]\nsparsity = 0.5\n'
                   'distribution = "uniform"\n[sparsity.options]\ndelta_t = 10\n[train]\nmultiplier = 2\n')
    by_flags = flops_json(capsys, "--model", "mlp", "--dataset", "digits", "--sparsity", "0.5",
                          "--distribution", "uniform", "--delta-t", "10", "--multiplier", "2")
    assert flops_json(capsys, "--config", str(cfg)) == by_flags
    by_set = flops_json(capsys, "--set", "model.name=mlp", "--set", "data.name=digits", "--set", "sparsity.sparsity=0.5",
                        "--set", "sparsity.distribution=uniform", "--set", "sparsity.options.delta_t=10",
                        "--set", "train.multiplier=2")
    assert by_set == by_flags
    # a shortcut wins over --set of its key, as --data-dir does for train
    assert flops_json(capsys, "--config", str(cfg), "--set", "sparsity.sparsity=0.7", "--sparsity", "0.5") == by_flags


@pytest.mark.parametrize("args,message", [
    (["--dataset", "digits"], "--model"),
    (["--model", "mlp", "--dataset", "digits", "--sparsity", "abc"], "sparsity.sparsity must be a number"),
    (["--model", "mlp", "--dataset", "digits", "--width", "x"], "model.width must be a number"),
    (["--model", "mlp", "--dataset", "digits", "--set", "nope=1"], "unknown config key"),
    # ΔT is an option of the dynamic methods; other methods reject it as train does
    (["--model", "mlp", "--dataset", "digits", "--method", "static", "--delta-t", "10"],
     "unknown option(s) ['delta_t'] for method 'static'"),
])
def test_flops_bad_flags_are_one_line(capsys, args, message):
    code, out, err = cli(["flops", *args], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err
