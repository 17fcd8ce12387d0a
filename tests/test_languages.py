"""Hello, stdin, args and exit code in every language, plus the registry's contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sandlot.engine import Engine
from sandlot.errors import RejectedError
from sandlot.languages import INSTALLED_RECHECK_S, LanguageRegistry
from sandlot.models import Status
from sandlot.sandbox import Box
from tests.conftest import run_job

BOTH_LEVELS = True  # the behaviour suite: every test runs at isolation jail and gvisor

# Each program echoes its first stdin line and its args, then exits with 3.
PROGRAMS = {
    "python": """
import sys
line = sys.stdin.readline().strip()
print(f"hello {line} {' '.join(sys.argv[1:])}")
sys.exit(3)
""",
    "bash": """
read -r line
echo "hello $line $*"
exit 3
""",
    "javascript": """
const line = require("fs").readFileSync(0, "utf8").split("\\n")[0];
console.log(`hello ${line} ${process.argv.slice(2).join(" ")}`);
process.exitCode = 3;
""",
    "c": """
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char line[100] = "";
    if (!fgets(line, sizeof line, stdin)) return 9;
    line[strcspn(line, "\\n")] = 0;
    printf("hello %s", line);
    for (int i = 1; i < argc; i++) printf("%s%s", i == 1 ? " " : " ", argv[i]);
    printf("\\n");
    return 3;
}
""",
    "cpp": """
#include <iostream>
#include <string>
int main(int argc, char **argv) {
    std::string line;
    std::getline(std::cin, line);
    std::cout << "hello " << line;
    for (int i = 1; i < argc; i++) std::cout << " " << argv[i];
    std::cout << std::endl;
    return 3;
}
""",
    "go": """
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func main() {
	line, _ := bufio.NewReader(os.Stdin).ReadString('\\n')
	fmt.Printf("hello %s %s\\n", strings.TrimSpace(line), strings.Join(os.Args[1:], " "))
	os.Exit(3)
}
""",
    "java": """
import java.util.Scanner;

public class Main {
    public static void main(String[] args) {
        String line = new Scanner(System.in).nextLine();
        System.out.println("hello " + line + " " + String.join(" ", args));
        System.exit(3);
    }
}
""",
}


@pytest.mark.parametrize("language", sorted(PROGRAMS))
async def test_hello_stdin_args_exit_code(engine: Engine, box: Box, language: str) -> None:
    run = await run_job(engine, box, language, PROGRAMS[language], stdin=b"world\n", args=("a", "b c"))
    assert run.result.status is Status.RUNTIME_ERROR, run.result
    assert run.result.exit_code == 3
    assert run.stdout.strip() == "hello world a b c"
    assert run.result.language == language


@pytest.mark.parametrize("language", ["python", "go", "c", "java"])
async def test_samples_run(engine: Engine, box: Box, languages: LanguageRegistry, language: str) -> None:
    lang = languages.get(language)
    run = await run_job(engine, box, language, lang.sample, stdin=b"Ada\n")
    assert run.result.status is Status.OK, run.result
    assert "Hello, Ada!" in run.stdout


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("go", 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(x)\n}\n', "main.go:6:14: undefined: x"),
        ("c", "int main(void) { return y; }\n", "main.c:1:25: error:"),
        ("java", "public class Main { public static void main(String[] a) { int x = ; } }\n", "Main.java:1:"),
    ],
)
async def test_compile_error_shows_user_file(engine: Engine, box: Box, language: str, code: str, expected: str) -> None:
    run = await run_job(engine, box, language, code)
    assert run.result.status is Status.COMPILE_ERROR
    output = run.result.compile_output.decode()
    assert expected in output
    assert "/box/" not in output
    assert "command-line-arguments" not in output
    assert run.result.stdout == b""


def test_registry_offers_installed_languages(languages: LanguageRegistry) -> None:
    offered = {lang.name for lang in languages.offered()}
    assert {"python", "bash", "go", "c", "cpp", "javascript", "java"} <= offered
    assert languages.get("py").name == "python"
    assert languages.for_file("x.cc").name == "cpp"


def test_missing_toolchain_is_not_offered(tmp_path: object) -> None:
    registry = LanguageRegistry.load(None)
    ghost = LanguageRegistry(
        {
            "ghost": type(registry.get("python"))(
                name="ghost", display_name="Ghost", source_file="g", run=("/nope",), requires=("/nonexistent/ghost",)
            )
        }
    )
    assert ghost.offered() == []
    with pytest.raises(RejectedError, match="not installed"):
        ghost.get("ghost")


def test_a_toolchain_installed_while_serving_is_offered_after_the_recheck(tmp_path: Path) -> None:
    tool = tmp_path / "ghost"
    now = [0.0]
    python = LanguageRegistry.load(None).get("python")
    ghost = dataclasses.replace(python, name="ghost", aliases=(), requires=(str(tool),))
    registry = LanguageRegistry({"ghost": ghost}, clock=lambda: now[0])
    assert registry.offered() == []
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    now[0] += INSTALLED_RECHECK_S / 2
    assert registry.offered() == []  # believed for a while: no stat per request
    now[0] += INSTALLED_RECHECK_S
    assert registry.get("ghost").name == "ghost"
    tool.unlink()
    now[0] += INSTALLED_RECHECK_S
    with pytest.raises(RejectedError, match="not installed"):
        registry.get("ghost")


def test_unknown_language_and_extension(languages: LanguageRegistry) -> None:
    with pytest.raises(RejectedError, match="unknown language 'cobol'"):
        languages.get("cobol")
    with pytest.raises(RejectedError, match="extension"):
        languages.for_file("prog.xyz")


async def test_versions_are_probed(languages: LanguageRegistry) -> None:
    versions = await languages.probe_versions()
    assert versions["python"].startswith("3.")
    assert versions["go"].startswith("1.")
