import subprocess
import sys

import pytest

from cbir_dist.cli import build_parser, main


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t=time.time(); from cbir_dist.cli import build_parser; build_parser().format_help(); "
            "heavy=[m for m in ('torch','ray','pymilvus','cv2','skimage') if m in sys.modules]; "
            "print(heavy, time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[]"), out


@pytest.mark.parametrize("cmd", ["index", "query", "evaluate", "demo"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cbir-dist " + cmd in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "index" in capsys.readouterr().out


def test_library_errors_become_exit_1_with_message(tmp_path, capsys):
    rc = main(["index", str(tmp_path / "missing"), "--db", str(tmp_path / "x.db"), "--backbone", "none",
               "--descriptors", "glcm"])
    assert rc == 1
    assert "no such directory" in capsys.readouterr().err


def test_query_fringe_and_masks_are_exclusive():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["query", "q", "--fringe", "1", "--masks", "m", "--out", "o.parquet"])
