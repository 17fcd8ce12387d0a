import platform
import sys

name = sys.stdin.readline().strip() or "world"
print(f"Hello, {name}! This is Python {platform.python_version()} inside a sandlot box.")
