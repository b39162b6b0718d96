#!/usr/bin/env python3
"""Self cost per function from one callgrind dump, per request: benches/bench.sh --callgrind.

    callgrind_top.py DUMP REQUESTS [TOP]

callgrind_annotate 3.19 ranks a dump taken after `callgrind_control --zero` by inclusive cost
(every function under the thread's entry point at 100 %), so this reads the format itself: a
function's self cost is the sum of its cost lines, leaving out the line after each `calls=`
(that one is the callee's inclusive cost). Names are compressed as `(id) name` on first use.
"""
import collections
import re
import sys


def main():
    dump, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    names = {}

    def name(kind, tok):
        m = re.match(r"\((\d+)\)(?: (.*))?", tok)
        if not m:
            return tok
        key = (kind, m.group(1))
        if m.group(2):
            names[key] = m.group(2)
        return names.get(key, tok)

    cost = collections.Counter()
    fn, after_calls, total = None, False, 0
    with open(dump, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                fn, after_calls = name("fn", line[3:]), False
            elif line.startswith("cfn="):
                name("fn", line[4:])
            elif line.startswith("calls="):
                after_calls = True
            elif line[:1].isdigit() or line[:1] in ("+", "-", "*"):
                parts = line.split()
                if len(parts) < 2 or fn is None:
                    continue
                if after_calls:
                    after_calls = False
                else:
                    c = int(parts[1])
                    cost[fn] += c
                    total += c
    print(f"self instructions per request, top {top} functions (of {total / requests:.0f} in all)")
    for f, c in cost.most_common(top):
        print(f"{c / requests:10.0f}  {100 * c / max(total, 1):5.1f}%  {f[:140]}")


if __name__ == "__main__":
    main()
