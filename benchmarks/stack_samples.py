"""Count a sampling profiler's samples by function, from collapsed stacks.

Reads the collapsed-stack text that ``py-spy record --format raw`` writes (one line per
distinct stack: frames joined by ``;``, outermost first, then a space and the number of
samples) and prints the number of samples in all, then for each name given:

* ``--in NAME``: samples whose stack contains a frame of that function at any depth;
* ``--leaf NAME``: samples whose innermost frame is that function (time spent in it or in
  the C code it calls).

A frame matches when its function name (the text before `` (``) equals NAME or ends with
``.NAME``.  Example, the SuperLink's samples during a deployment benchmark::

    py-spy record -p <SuperLink pid> -d 20 -r 200 --format raw -o link.raw
    python benchmarks/stack_samples.py link.raw --leaf do_execute --in check_abort \\
        --in _cleanup_expired_task_tokens --in authenticate_node --in store_traffic \\
        --in push_object --in pull_object
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def _stacks(path: str) -> Iterator[tuple[list[str], int]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                raise SystemExit(f"{path}:{number}: not a collapsed stack line: {line[:80]!r}")
            # a stack py-spy could not read has no frames; it still counts in the total
            yield [frame.split(" (")[0] for frame in stack.split(";") if frame], int(count)


def _matches(function: str, name: str) -> bool:
    return function == name or function.endswith("." + name)


def count(path: str, inside: list[str], leaves: list[str]) -> tuple[int, dict[str, int], dict[str, int]]:
    """(total samples, samples per ``inside`` name, samples per ``leaves`` name)."""
    total = 0
    per_in = dict.fromkeys(inside, 0)
    per_leaf = dict.fromkeys(leaves, 0)
    for frames, n in _stacks(path):
        total += n
        for name in inside:
            if any(_matches(f, name) for f in frames):
                per_in[name] += n
        for name in leaves:
            if frames and _matches(frames[-1], name):
                per_leaf[name] += n
    return total, per_in, per_leaf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="collapsed stacks (py-spy record --format raw)")
    ap.add_argument("--in", dest="inside", action="append", default=[], metavar="NAME",
                    help="count samples with this function anywhere in the stack (repeatable)")
    ap.add_argument("--leaf", action="append", default=[], metavar="NAME",
                    help="count samples with this function innermost (repeatable)")
    args = ap.parse_args(argv)
    total, per_in, per_leaf = count(args.path, args.inside, args.leaf)
    print(f"{total} samples in all")
    for name, n in per_leaf.items():
        print(f"  innermost {name}: {n} ({100 * n / max(total, 1):.0f} %)")
    for name, n in per_in.items():
        print(f"  in {name}: {n} ({100 * n / max(total, 1):.0f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
