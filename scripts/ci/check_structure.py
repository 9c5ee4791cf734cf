#!/usr/bin/env python3
"""Structure checks (issue #17), run by scripts/test.sh:
1. Package.swift declares exactly what each target imports: every `import M` of a package module names a declared
   dependency, and every declared dependency is imported by at least one file of the target.
2. Sources: no line over 150 characters, no file over 600 lines.
Exit 1 with one line per problem."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
# Modules that come with the toolchain, not from Package.swift.
SYSTEM = {"Foundation", "FoundationEssentials", "Dispatch", "Glibc", "Musl", "Darwin", "Testing", "XCTest", "Synchronization",
          "_Builtin_intrinsics", "Swift", "_Concurrency", "os", "WinSDK"}
MAX_LINE, MAX_FILE = 150, 600


def targets(package):
    """(kind, name, path, [dependency module names]) for every target, from Package.swift's text."""
    out = []
    for m in re.finditer(r"\.(target|testTarget|executableTarget)\(\s*name:\s*\"([^\"]+)\"", package):
        kind, name = m.group(1), m.group(2)
        # The call's argument text: up to the matching parenthesis.
        i, depth = m.end(), 1
        while depth:
            depth += {"(": 1, ")": -1}.get(package[i], 0)
            i += 1
        args = package[m.end():i - 1]
        deps = []
        d = re.search(r"dependencies:\s*\[", args)
        if d:
            j, depth = d.end(), 1
            while depth:
                depth += {"[": 1, "]": -1}.get(args[j], 0)
                j += 1
            body = args[d.end():j - 1]
            body_wo_products = re.sub(r"\.product\(\s*name:\s*\"([^\"]+)\"[^)]*\)", lambda p: "@" + p.group(1), body)
            deps = re.findall(r"\"([^\"]+)\"", body_wo_products) + re.findall(r"@([A-Za-z0-9_]+)", body_wo_products)
        p = re.search(r"path:\s*\"([^\"]+)\"", args)
        path = p.group(1) if p else ("Tests/" if kind == "testTarget" else "Sources/") + name
        out.append((kind, name, path, deps))
    return out


def imports(folder):
    """{module: first file importing it} over the Swift files (and C files' includes are not modules) of `folder`."""
    found = {}
    for dp, _, files in os.walk(folder):
        for f in sorted(files):
            if not f.endswith(".swift"):
                continue
            p = os.path.join(dp, f)
            for line in open(p, encoding="utf-8"):
                m = re.match(r"\s*(?:@testable\s+|@_exported\s+|@preconcurrency\s+|public\s+|internal\s+)*import\s+(?:struct\s+|func\s+|enum\s+|class\s+)?([A-Za-z0-9_]+)", line)
                if m:
                    found.setdefault(m.group(1), os.path.relpath(p, ROOT))
    return found


def main():
    problems = []
    package = open(os.path.join(ROOT, "Package.swift"), encoding="utf-8").read()
    ts = targets(package)
    if not ts:
        problems.append("Package.swift: no targets found (the checker's parser is out of date)")
    for kind, name, path, deps in ts:
        folder = os.path.join(ROOT, path)
        if not os.path.isdir(folder):
            problems.append(f"{name}: its folder {path} does not exist")
            continue
        imp = imports(folder)
        if not imp and not any(f.endswith(".swift") for _, _, fs in os.walk(folder) for f in fs):
            continue  # a C target
        for mod, where in sorted(imp.items()):
            if mod in SYSTEM or mod == name:
                continue
            if mod not in deps:
                problems.append(f"{name}: {where} imports {mod}, which Package.swift does not declare for {name}")
        for d in deps:
            if d not in imp:
                problems.append(f"{name}: Package.swift declares {d}, which no file of {name} imports")
    for dp, _, files in os.walk(os.path.join(ROOT, "Sources")):
        for f in sorted(files):
            if not f.endswith(".swift"):
                continue
            p = os.path.join(dp, f)
            lines = open(p, encoding="utf-8").read().split("\n")
            rel = os.path.relpath(p, ROOT)
            if len(lines) > MAX_FILE:
                problems.append(f"{rel}: {len(lines)} lines (at most {MAX_FILE})")
            for n, line in enumerate(lines, 1):
                if len(line) > MAX_LINE:
                    problems.append(f"{rel}:{n}: {len(line)} characters (at most {MAX_LINE})")
    for p in problems:
        print("check_structure: " + p)
    print(f"check_structure: {len(ts)} targets, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
