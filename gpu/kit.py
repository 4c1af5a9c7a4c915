#!/usr/bin/env python3
"""Device-side bookkeeping for gpu/device.sh: receive chunks, reassemble wheels, check requirements.

Standard library only (plus `packaging`, which the device image has, for `depcheck`).

  kit.py add CHUNK_DIR STAGE_DIR     copy one chunk's pieces into STAGE_DIR/pieces, verify their sha256
  kit.py status STAGE_DIR            which chunks are still missing (exit 3 if any)
  kit.py assemble STAGE_DIR          decompress/join pieces into STAGE_DIR/wheels, verify every wheel
  kit.py depcheck STAGE_DIR [SITE]   requirements of the staged wheels vs what is importable here
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import sys
from pathlib import Path

MIB = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MIB), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(stage: Path) -> dict:
    return json.loads((stage / "manifest.json").read_text())


def received(stage: Path) -> set[str]:
    path = stage / "received.json"
    return set(json.loads(path.read_text())) if path.exists() else set()


def missing_chunks(stage: Path, manifest: dict) -> list[str]:
    have = received(stage)
    return [c for c in sorted(manifest["chunks"]) if c not in have]


def cmd_add(chunk_dir: Path, stage: Path) -> int:
    new = json.loads((chunk_dir / "manifest.json").read_text())
    stage.mkdir(parents=True, exist_ok=True)
    mpath = stage / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old["kit_id"] != new["kit_id"]:
            print(f"ERROR: {stage} holds a different kit ({old['kit_id']}, this chunk's {new['kit_id']}): "
                  f"rm -rf {stage} and start again from chunk 00", file=sys.stderr)
            return 2
    else:
        mpath.write_text(json.dumps(new))
    cid = chunk_dir.name.removeprefix("chunk-")
    if cid not in new["chunks"]:
        print(f"ERROR: chunk {cid} is not in the manifest", file=sys.stderr)
        return 2
    pieces_dir = stage / "pieces"
    pieces_dir.mkdir(exist_ok=True)
    bad = []
    expected = [p for p in new["pieces"] if p["chunk"] == cid]
    for p in expected:
        src = chunk_dir / p["name"]
        if not src.exists():
            bad.append(f"{p['name']}: missing from the carried folder")
            continue
        if src.stat().st_size != p["size"] or sha256(src) != p["sha256"]:
            bad.append(f"{p['name']}: size/sha256 differs from the manifest")
            continue
        tmp = pieces_dir / (p["name"] + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.rename(pieces_dir / p["name"])
    if bad:
        print("ERROR: chunk " + cid + " is damaged:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    have = received(stage) | {cid}
    (stage / "received.json").write_text(json.dumps(sorted(have)))
    got = sum(p["size"] for p in expected)
    print(f"chunk {cid}: {len(expected)} files, {got / MIB:.1f} MiB verified")
    return cmd_status(stage)


def cmd_status(stage: Path) -> int:
    if not (stage / "manifest.json").exists():
        print(f"no kit in {stage}: carry chunk 00 first")
        return 3
    manifest = load_manifest(stage)
    miss = missing_chunks(stage, manifest)
    n = len(manifest["chunks"])
    if miss:
        print(f"have {n - len(miss)} of {n} chunks; missing: {' '.join(miss)}")
        return 3
    print(f"have all {n} chunks")
    return 0


def cmd_assemble(stage: Path) -> int:
    manifest = load_manifest(stage)
    miss = missing_chunks(stage, manifest)
    if miss:
        print(f"ERROR: chunks missing: {' '.join(miss)}", file=sys.stderr)
        return 3
    wheels_dir = stage / "wheels"
    wheels_dir.mkdir(exist_ok=True)
    by_wheel: dict[str, list[dict]] = {}
    for p in manifest["pieces"]:
        by_wheel.setdefault(p["wheel"], []).append(p)
    bad = []
    for w in manifest["wheels"]:
        dst = wheels_dir / w["file"]
        if dst.exists() and dst.stat().st_size == w["size"] and sha256(dst) == w["sha256"]:
            continue
        tmp = dst.with_name(dst.name + ".tmp")
        with open(tmp, "wb") as out:
            for p in sorted(by_wheel[w["file"]], key=lambda p: p["index"]):
                src = stage / "pieces" / p["name"]
                data = src.read_bytes()
                if p["codec"] == "xz":
                    data = lzma.decompress(data)
                if len(data) != p["raw_size"]:
                    bad.append(f"{p['name']}: {len(data)} bytes after decoding, expected {p['raw_size']}")
                out.write(data)
        if sha256(tmp) != w["sha256"]:
            bad.append(f"{w['file']}: sha256 differs from the manifest after reassembly")
            tmp.unlink()
            continue
        tmp.rename(dst)
    if bad:
        print("ERROR:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    total = sum(w["size"] for w in manifest["wheels"])
    print(f"{len(manifest['wheels'])} wheels reassembled and verified, {total / MIB:.1f} MiB in {wheels_dir}")
    # The pieces are no longer needed; free the disk.
    shutil.rmtree(stage / "pieces", ignore_errors=True)
    return 0


def cmd_depcheck(stage: Path, site: str | None) -> int:
    """Check what the staged wheels require against the distributions importable here.

    Run with PYTHONPATH=SITE so the staged distributions shadow the image's, as they will at run time.
    Reports the device's versions of everything the kit leaves to the image.
    """
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    manifest = load_manifest(stage)
    installed: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name and name not in installed:  # first on sys.path wins, as for imports
            installed[name] = (dist.version, str(getattr(dist, "_path", "")))
    staged = {canonicalize_name(w["file"].split("-")[0]) for w in manifest["wheels"]}
    problems, lines = [], []
    for name in sorted(staged):
        if name not in installed:
            problems.append(f"{name}: staged but not importable (PYTHONPATH={site}?)")
            continue
        dist = metadata.distribution(name)
        for r in dist.requires or []:
            req = Requirement(r)
            # Extras: checked only for those the kit resolved (cu13, ctk, dask), see wheels.lock.
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in ("", "cu13", "ctk", "dask")
            ):
                continue
            dep = canonicalize_name(req.name)
            if dep not in installed:
                problems.append(f"{name} needs {req}: not installed")
            elif req.specifier and not req.specifier.contains(installed[dep][0], prereleases=True):
                problems.append(f"{name} needs {req}: have {dep} {installed[dep][0]}")
    for name, info in sorted(manifest.get("device_requirements", {}).items()):
        have = installed.get(canonicalize_name(name), ("MISSING", ""))[0]
        lines.append(f"  {name:28s} device {have:16s} resolved {info['resolved']:14s} ({info['where']})")
    print("device-provided distributions (device version vs what the kit was resolved with):")
    print("\n".join(lines))
    if problems:
        print(f"{len(problems)} unmet requirement(s):")
        for p in sorted(set(problems)):
            print("  " + p)
        return 1
    print("depcheck: every requirement of the staged wheels is met")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "add" and len(args) == 2:
        return cmd_add(Path(args[0]), Path(args[1]))
    if cmd == "status" and len(args) == 1:
        return cmd_status(Path(args[0]))
    if cmd == "assemble" and len(args) == 1:
        return cmd_assemble(Path(args[0]))
    if cmd == "depcheck" and len(args) in (1, 2):
        return cmd_depcheck(Path(args[0]), args[1] if len(args) == 2 else None)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
