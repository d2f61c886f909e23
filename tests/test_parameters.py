"""No function of the kernel or a built-in plugin takes more than MAX_PARAMETERS parameters.

A longer list is a chain of values passed along: they belong in a request or options record
(ConvertRequest, ValidationRequest, TuneOptions ...), the way simonw/llm hands one ``Prompt`` to
``execute``. Click commands are exempt: their parameters are the command's options, one each.

Counting: every positional, positional-only and keyword-only parameter counts one; ``self`` and
``cls`` in the first place do not; ``*args`` counts one and ``**kwargs`` counts one (each is a
way to pass values on, not a free pass).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = (REPO / "kernel" / "slmk", REPO / "plugins")
MAX_PARAMETERS = 8
#: ``@click.command()``, ``@group.command()``, ``@cli.group()``, ``@click.option(...)``, ``@click.argument(...)``
CLICK_DECORATORS = {"command", "group", "option", "argument"}


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = function.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def is_click_command(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in CLICK_DECORATORS:
            return True
    return False


def offenders(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_click_command(node):
            count = parameter_count(node)
            if count > MAX_PARAMETERS:
                found.append(f"{where}:{node.lineno} {node.name}() takes {count} parameters")
    return found


def test_the_rule_counts_as_documented():
    source = (
        "import click\n"
        "def nine(a, b, c, d, e, f, g, h, i): pass\n"
        "def eight_and_self(self, a, b, c, d, e, f, g, h): pass\n"
        "def starred(a, b, c, d, e, f, g, *args, **kwargs): pass\n"
        "def keywords(a, /, b, *, c, d, e, f, g, h, i): pass\n"
        "@click.command()\n@click.option('--x')\ndef command(a, b, c, d, e, f, g, h, i, j): pass\n"
        "@cli.command('name')\ndef grouped(a, b, c, d, e, f, g, h, i, j): pass\n"
    )
    found = offenders(source, "example.py")
    assert [line.split()[1] for line in found] == ["nine()", "starred()", "keywords()"]


def test_no_function_takes_more_than_eight_parameters():
    found = []
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            found += offenders(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "pass a request or options record instead:\n" + "\n".join(found)
