"""The programs the judge tests grade: solutions, checkers and interactors (kept apart from the assertions)."""

from __future__ import annotations

CPP_SUM = """#include <iostream>
int main() { long long a, b; std::cin >> a >> b; std::cout << a + b << "\\n"; }
"""
# Wrong on one input only: a judge must find it among the others.
CPP_SUM_WRONG = """#include <iostream>
int main() { long long a, b; std::cin >> a >> b; std::cout << a + b + (a == 7 ? 1 : 0) << "\\n"; }
"""
PY_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
PY_SUM_WRONG = "a, b = map(int, input().split())\nprint(a + b + (a == 7))\n"

# Reads a command: each test asks for one way to fail (or none).
PY_MISBEHAVES = """import sys
what = sys.stdin.read().strip()
if what == "loop":
    while True:
        pass
if what == "memory":
    hog = b"x" * (512 << 20)
if what == "crash":
    sys.exit(3)
print(what)
"""

# Any proper divisor of n is a right answer: the expected answer is just one of them.
CPP_SMALLEST_DIVISOR = """#include <iostream>
int main() {
    long n;
    std::cin >> n;
    for (long d = 2; d < n; d++) if (n % d == 0) { std::cout << d << "\\n"; return 0; }
}
"""
CPP_NOT_A_DIVISOR = """#include <iostream>
int main() { long n; std::cin >> n; std::cout << n << "\\n"; }
"""
PY_DIVISOR_CHECKER = """import sys
n = int(open(sys.argv[1]).read())
try:
    d = int(open(sys.argv[2]).read().split()[0])
except (ValueError, IndexError):
    print("no number", file=sys.stderr)
    sys.exit(2)
if 1 < d < n and n % d == 0:
    sys.exit(0)
print(f"{d} is not a proper divisor of {n}", file=sys.stderr)
sys.exit(1)
"""
PY_CRASHING_CHECKER = "raise SystemExit(7)\n"
PY_SLOW_CHECKER = "while True:\n    pass\n"

# The guessing game: the secret is the test's input; at most 30 guesses.
PY_GUESS_INTERACTOR = """import sys
secret = int(open(sys.argv[1]).read())
for _ in range(30):
    line = sys.stdin.readline()
    if not line:
        print("the solution stopped guessing", file=sys.stderr)
        sys.exit(1)
    guess = int(line)
    if guess == secret:
        print("=", flush=True)
        sys.exit(0)
    print("<" if secret < guess else ">", flush=True)
print("too many guesses", file=sys.stderr)
sys.exit(1)
"""
CPP_BINARY_SEARCH = """#include <iostream>
#include <string>
int main() {
    long lo = 1, hi = 1000000;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        std::cout << mid << std::endl;
        std::string reply;
        if (!(std::cin >> reply) || reply == "=") return 0;
        if (reply == "<") hi = mid - 1; else lo = mid + 1;
    }
}
"""
CPP_LINEAR_SEARCH = """#include <iostream>
#include <string>
int main() {
    for (long guess = 1;; guess++) {
        std::cout << guess << std::endl;
        std::string reply;
        if (!(std::cin >> reply) || reply == "=") return 0;
    }
}
"""
# Waits for the interactor, which waits for it: only the wall limit ends this.
PY_WAITS = "input()\n"
