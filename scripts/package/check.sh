#!/usr/bin/env bash
# Packages every library crate as crates.io would receive it, without publishing and
# without verifying (a verifying build compiles Burn and everything again, unoptimised:
# about 20 minutes on two cores), then checks what matters for a publication: cargo's
# warnings are errors, each packaged manifest has a description, licence, readme,
# keywords (at most 5) and categories, and every file a crate's sources include
# (`include_str!`, `include_bytes!`) is inside its package.
# Usage: scripts/package/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
crates=(ember-tokenizer ember-data ember-kernels ember-attention ember-model ember-train
    ember-finetune ember-hub ember-serve)
args=(--no-verify --allow-dirty)
for crate in "${crates[@]}"; do args+=(-p "$crate"); done
# Offline first (the tests' builds have filled the index cache: seconds instead of a
# minute of index updates), online when that is not enough. --allow-dirty: this checks
# the manifests and files, not the git state.
out="$(cargo package "${args[@]}" --offline 2>&1)" || out="$(cargo package "${args[@]}" 2>&1)" || {
    echo "$out" >&2
    exit 1
}
if grep -q '^warning' <<<"$out"; then
    echo "$out" >&2
    echo "cargo package warned (see above)" >&2
    exit 1
fi
python3 - target/package "${crates[@]}" <<'PY'
import posixpath, re, sys, tarfile, tomllib
folder, crates = sys.argv[1], sys.argv[2:]
version = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["package"]["version"]
include = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')
problems = []
for crate in crates:
    with tarfile.open(f"{folder}/{crate}-{version}.crate") as archive:
        root = f"{crate}-{version}"
        names = set(archive.getnames())
        package = tomllib.load(archive.extractfile(f"{root}/Cargo.toml"))["package"]
        for key in ["description", "license", "readme", "keywords", "categories"]:
            if not package.get(key):
                problems.append(f"{crate}: no {key} in Cargo.toml")
        if len(package.get("keywords", [])) > 5:
            problems.append(f"{crate}: more than 5 keywords")
        if package.get("readme") and f"{root}/{package['readme']}" not in names:
            problems.append(f"{crate}: its readme {package['readme']} is not in the package")
        for name in sorted(n for n in names if n.endswith(".rs") and "/src/" in n):
            text = archive.extractfile(name).read().decode("utf-8")
            for target in include.findall(text):
                path = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if path not in names:
                    problems.append(f"{name} includes {target}, which is not in the package")
    print(f"packaged {crate} {version}: {len(names)} files")
if problems:
    sys.exit("\n".join(problems))
PY
