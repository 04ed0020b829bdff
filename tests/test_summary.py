"""zoo.summary shows its table exactly once, in a script and in a REPL, and returns it with its rows."""

from __future__ import annotations

import code
import contextlib
import io
import subprocess
import sys

import zoo

CALL = "zoo.summary('nin', input_size=(224, 224))"  # the README's example, without a framework to stay fast
HEADER = "Layer "


def test_script_shows_the_table_once():
    out = subprocess.run([sys.executable, "-c", f"import zoo; {CALL}"], capture_output=True, text=True, check=True)
    assert out.stdout.count(HEADER) == 1 and out.stdout.count("Total params: 1,992,166") == 1, out.stdout


def test_repl_shows_the_table_once():
    """The interactive interpreter prints an expression's value with sys.displayhook, as `python -i` does."""
    repl = code.InteractiveInterpreter({"zoo": zoo})
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert repl.runsource(CALL) is False  # complete, ran
    text = shown.getvalue()
    assert text.count(HEADER) == 1 and text.count("Total params") == 1, text
    assert text.rstrip().splitlines()[-1] == "<Summary: nin (spec, input (1, 1, 224, 224) NCHW); 30 layers, " \
                                             "1,992,166 params>"


def test_returns_the_table_and_its_rows(capsys):
    table = zoo.summary("nin", print_fn=None)
    assert capsys.readouterr().out == ""
    assert isinstance(table, str) and table.splitlines()[3].startswith("blocks.0.conv0")
    assert len(table.rows) == len(zoo.get_spec("nin").layers()) == 30
    assert table.rows[0] == ("blocks.0.conv0", "Conv 11x11/4 pad 0, 1->96", "(1, 96, 54, 54)", "11,712")
    assert table.total_params == sum(int(r[3].replace(",", "")) for r in table.rows if r[3] != "-") == 1992166
