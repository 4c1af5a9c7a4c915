#!/usr/bin/env python3
"""Stage the cp312 / CUDA 13 wheel set the GPU suite needs on the lent H200 machine.

Runs HERE (a machine with PyPI), never on the device. Steps, each idempotent:

  resolve   pip resolves the whole set for the device's interpreter (CPython 3.12, manylinux
            x86_64) and writes gpu/wheels.lock: the wheels to carry (name==version --hash=...)
            and, as comments, what the device already provides plus the requirement each
            staged wheel puts on it. Skipped when gpu/wheels.lock exists (use --re-resolve).
  download  pip downloads exactly the locked, carried wheels (hash-checked) into
            .gpu-stage/downloads/. Files already there are reused.
  split     cuts wheels larger than --part-mib into byte parts, xz-compresses a piece when a
            sample shows it saves >= 10 %, packs the pieces into .gpu-stage/chunk-NN/ folders
            of <= --chunk-mib MiB each and writes .gpu-stage/manifest.json (also copied into
            every chunk, so one device call carries one folder).

  check     (run it after `all`) simulates the device here: rebuilds the wheels from the chunks
            with gpu/kit.py and resolves every requirement offline from them plus the
            device-provided wheels (downloaded at the locked versions into .gpu-stage/device-ref/).

Usage: python3 gpu/stage.py [all|resolve|download|split|check] [--re-resolve] [--chunk-mib 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "gpu" / "wheels.lock"
STAGE = REPO / ".gpu-stage"
DOWNLOADS = STAGE / "downloads"
CACHE = STAGE / "cache"
# One sha256 and one MiB for the kit: the device side (kit.py, standard library only) owns them.
sys.path.insert(0, str(REPO / "gpu"))
from kit import MIB, sha256  # noqa: E402

# What the device's interpreter is (KINDS.md: Python 3.12.3 at /opt/torch/.venv/bin/python3).
TARGET = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
    "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64",
]

# The GPU stack (pinned to one RAPIDS release) plus the project's runtime dependencies
# (pyproject.toml [project.dependencies] and the test extra).
REQUIREMENTS = [
    "cuml-cu13[dask]==26.10.*",
    "dask-cudf-cu13==26.10.*",
    "dask-cuda==26.10.*",
    "numpy>=1.26", "pandas>=2.1", "pyarrow>=14", "scikit-learn>=1.4",
    "dask[array,dataframe]>=2024.8", "distributed>=2024.8", "dask-ml>=2024.4", "numba>=0.59",
    "mlflow>=3.0", "optuna>=4.0", "skops>=0.10", "matplotlib>=3.8", "pydantic>=2.5",
    "pyyaml>=6", "tqdm>=4.66",
    "pytest>=8", "pytest-timeout>=2.2",
]

# Distributions the device image already holds (KINDS.md "Python packages already there",
# normalized names). They are pruned from the carried set unless CARRY_ANYWAY names them.
DEVICE_HAS = set(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()  # noqa: SIM905
)

# Python-side CUDA toolkit pieces the image does not hold as wheels but has as a system toolkit
# (CUDA 13.0 with nvcc under /usr/local/cuda; cuda-pathfinder falls back to it). Not carried.
SYSTEM_CUDA = {"nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl"}

# Present on the device, but at versions the RAPIDS 26.10 pins rule out (or very likely do).
# Carried so that /tmp/site (first on PYTHONPATH) shadows the image's copy.
CARRY_ANYWAY = {
    "numba": "cudf/cuml 26.10 require numba<0.65; the image's numpy 2.5.2 needs numba>=0.65",
    "llvmlite": "numba 0.64 requires llvmlite<0.47,>=0.46",
    "numpy": "numba 0.64 requires numpy<2.5; the image has numpy 2.5.2",
    "numba-cuda": "cudf requires numba-cuda<0.31,>=0.22.2 built for numba 0.64; the image's is unread",
    "pandas": "cudf/dask-cudf require pandas<3.1,>=3.0; the image's version is unread (3.1 likely)",
    "nvidia-nvjitlink": "cuml requires nvidia-nvjitlink>=13.3; torch 2.11+cu130 ships 13.0",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_env() -> dict[str, str]:
    """PyPI only: no local find-links, extra indexes or constraint files, so the lock is portable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def log(msg: str) -> None:
    print(f"[stage] {msg}", flush=True)


# -- resolve -----------------------------------------------------------------------------------
def _evaluate(req_str: str, extras: set[str]):
    """Requirement if it applies on the device (Linux x86_64, CPython 3.12), else None."""
    from packaging.requirements import Requirement

    req = Requirement(req_str)
    if req.marker is None:
        return req
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    for extra in extras or {""}:
        if req.marker.evaluate({**env, "extra": extra}):
            return req
    return None


def resolve() -> None:
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
               "--report", str(report), "--target", str(Path(tmp) / "t"), *TARGET, *REQUIREMENTS]
        log("resolving: " + " ".join(REQUIREMENTS[:3]) + " + project dependencies")
        subprocess.run(cmd, check=True, env=pip_env())
        data = json.loads(report.read_text())

    items = {}
    for it in data["install"]:
        meta = it["metadata"]
        info = it["download_info"]
        url = info["url"]
        items[norm(meta["name"])] = {
            "name": meta["name"], "version": meta["version"], "file": url.rsplit("/", 1)[-1],
            "sha256": (info.get("archive_info", {}).get("hashes", {}) or {}).get("sha256"),
            "requires": meta.get("requires_dist", []), "extras": set(it.get("requested_extras") or []),
        }
    # Which extras each distribution is asked for (for marker evaluation).
    for it in items.values():
        for r in it["requires"]:
            req = _evaluate(r, it["extras"])
            if req is not None and norm(req.name) in items:
                items[norm(req.name)]["extras"] |= set(req.extras)

    carried, device, system = [], [], []
    for key in sorted(items):
        if key in CARRY_ANYWAY or (key not in DEVICE_HAS and key not in SYSTEM_CUDA):
            carried.append(key)
        elif key in SYSTEM_CUDA:
            system.append(key)
        else:
            device.append(key)
    # What the carried wheels require of the distributions left to the device.
    needs: dict[str, list[str]] = {}
    for key in carried:
        it = items[key]
        for r in it["requires"]:
            req = _evaluate(r, it["extras"])
            if req is not None and norm(req.name) not in carried:
                spec = str(req.specifier) or "any"
                needs.setdefault(norm(req.name), []).append(f"{spec} ({it['name']})")

    lines = [
        "# gpu/wheels.lock - written by gpu/stage.py resolve; do not edit by hand.",
        f"# Resolved {time.strftime('%Y-%m-%d')} with pip {_pip_version()} "
        "for CPython 3.12, manylinux x86_64, CUDA 13.",
        "# Requested: " + " ".join(REQUIREMENTS),
        "#",
        "# Carried to the device (a pip requirements file: pip download --require-hashes -r works):",
    ]
    for key in carried:
        it = items[key]
        why = f"  # {CARRY_ANYWAY[key]}" if key in CARRY_ANYWAY else ""
        lines.append(f"{key}=={it['version']} --hash=sha256:{it['sha256']}{why}")
    lines += ["#", "# Left to the device image (resolved here for reference; what the carried wheels require of it):"]
    for key in device:
        req = "; ".join(needs.get(key, [])) or "-"
        lines.append(f"# device: {key}=={items[key]['version']}  requires: {req}")
    lines += ["#", "# Left to the device's system CUDA 13 toolkit (/usr/local/cuda; found by cuda-pathfinder):"]
    for key in system:
        lines.append(f"# system: {key}=={items[key]['version']}")
    missing = sorted(k for k in needs if k not in items)
    if missing:
        lines.append("# not in the resolution (extras not requested): " + " ".join(missing))
    LOCK.write_text("\n".join(lines) + "\n")
    log(f"resolved {len(items)} distributions: {len(carried)} carried, {len(device)} on the device, "
        f"{len(system)} from its system CUDA ({time.time() - t0:.0f} s) -> {LOCK.relative_to(REPO)}")


def _pip_version() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    return out.stdout.split()[1] if out.returncode == 0 else "?"


def read_lock() -> tuple[list[dict], dict[str, str]]:
    """Carried pins [{name, version, sha256}] and the device requirements {name: text}."""
    carried, device = [], {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        if m:
            carried.append({"name": m[1], "version": m[2], "sha256": m[3]})
            continue
        m = re.match(r"^# (device|system): ([A-Za-z0-9._-]+)==(\S+)(?:  requires: (.*))?$", line)
        if m:
            device[m[2]] = {"resolved": m[3], "where": m[1], "requires": (m[4] or "-")}
    return carried, device


# -- download ----------------------------------------------------------------------------------
def download() -> list[Path]:
    t0 = time.time()
    carried, _ = read_lock()
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for c in carried:
            f.write(f"{c['name']}=={c['version']} --hash=sha256:{c['sha256']}\n")
        reqfile = f.name
    try:
        have = {sha256(p): p for p in DOWNLOADS.glob("*.whl")}
        todo = [c for c in carried if c["sha256"] not in have]
        if todo:
            log(f"downloading {len(todo)} of {len(carried)} wheels into {DOWNLOADS.relative_to(REPO)}")
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                            *TARGET, "-d", str(DOWNLOADS), "-r", reqfile], check=True, env=pip_env())
            have = {sha256(p): p for p in DOWNLOADS.glob("*.whl")}
        else:
            log(f"all {len(carried)} wheels already downloaded")
    finally:
        os.unlink(reqfile)
    files = []
    for c in carried:
        if c["sha256"] not in have:
            raise SystemExit(f"{c['name']}=={c['version']}: no downloaded wheel has the locked sha256")
        files.append(have[c["sha256"]])
    total = sum(p.stat().st_size for p in files)
    log(f"{len(files)} wheels, {total / MIB:.1f} MiB ({time.time() - t0:.0f} s)")
    return files


# -- split -------------------------------------------------------------------------------------
def _compress_piece(args: tuple[str, int, int, str, float]) -> dict:
    """Read bytes [start, start+size) of src; xz them if a 4 MiB sample shrinks by >= min_saving."""
    src, start, size, key, min_saving = args
    raw_path = CACHE / f"{key}.raw"
    xz_path = CACHE / f"{key}.xz"
    if xz_path.exists():
        return {"key": key, "codec": "xz", "path": str(xz_path)}
    if raw_path.exists():
        return {"key": key, "codec": "none", "path": str(raw_path)}
    with open(src, "rb") as f:
        f.seek(start)
        data = f.read(size)
    sample = data[: 4 * MIB]
    if len(sample) >= 256 * 1024 and len(lzma.compress(sample, preset=1)) <= (1 - min_saving) * len(sample):
        packed = lzma.compress(data, preset=6)
        if len(packed) <= (1 - min_saving) * len(data):
            tmp = xz_path.with_suffix(".tmp")
            tmp.write_bytes(packed)
            tmp.rename(xz_path)
            return {"key": key, "codec": "xz", "path": str(xz_path)}
    tmp = raw_path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(raw_path)
    return {"key": key, "codec": "none", "path": str(raw_path)}


def split(files: list[Path], chunk_mib: int, part_mib: int, min_saving: float) -> None:
    t0 = time.time()
    _, device = read_lock()
    CACHE.mkdir(parents=True, exist_ok=True)
    chunk_limit = chunk_mib * MIB
    wheels, pieces, jobs = [], [], []
    for path in sorted(files):
        size = path.stat().st_size
        digest = sha256(path)
        nparts = max(1, -(-size // (part_mib * MIB)))
        wheel = {"file": path.name, "sha256": digest, "size": size, "pieces": []}
        for i in range(nparts):
            start = i * part_mib * MIB
            psize = min(part_mib * MIB, size - start)
            name = path.name if nparts == 1 else f"{path.name}.part-{i:03d}"
            key = f"{digest[:16]}-{i:03d}-{part_mib}"
            piece = {"name": name, "wheel": path.name, "index": i, "offset": start, "raw_size": psize,
                     "key": key}
            wheel["pieces"].append(name)
            pieces.append(piece)
            jobs.append((str(path), start, psize, key, min_saving))
        wheels.append(wheel)

    log(f"preparing {len(pieces)} pieces (xz where a sample saves >= {min_saving:.0%}; cached)")
    with cf.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = {r["key"]: r for r in pool.map(_compress_piece, jobs)}
    for p in pieces:
        r = done[p["key"]]
        stored = Path(r["path"])
        p["codec"] = r["codec"]
        p["stored_name"] = p["name"] + (".xz" if r["codec"] == "xz" else "")
        p["stored_size"] = stored.stat().st_size
        p["stored_sha256"] = sha256(stored)
        p["_src"] = stored
        if p["stored_size"] > chunk_limit:
            raise SystemExit(f"{p['stored_name']} is {p['stored_size']} bytes > chunk limit {chunk_limit}")

    # First-fit decreasing by stored size.
    bins: list[dict] = []
    for p in sorted(pieces, key=lambda p: (-p["stored_size"], p["stored_name"])):
        for b in bins:
            if b["bytes"] + p["stored_size"] <= chunk_limit:
                break
        else:
            b = {"bytes": 0, "pieces": []}
            bins.append(b)
        b["pieces"].append(p)
        b["bytes"] += p["stored_size"]

    for old in STAGE.glob("chunk-*"):
        shutil.rmtree(old)
    manifest = {
        "format": 1,
        "kit_id": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": "3.12", "platform": "manylinux x86_64", "cuda": "13",
        "chunk_mib": chunk_mib, "part_mib": part_mib,
        "chunks": {}, "pieces": [], "wheels": wheels,
        "device_requirements": device,
        "totals": {},
    }
    for n, b in enumerate(bins):
        cid = f"{n:02d}"
        cdir = STAGE / f"chunk-{cid}"
        cdir.mkdir(parents=True)
        for p in sorted(b["pieces"], key=lambda p: p["stored_name"]):
            dst = cdir / p["stored_name"]
            try:
                os.link(p["_src"], dst)
            except OSError:
                shutil.copyfile(p["_src"], dst)
            manifest["pieces"].append({
                "name": p["stored_name"], "chunk": cid, "wheel": p["wheel"], "index": p["index"],
                "codec": p["codec"], "size": p["stored_size"], "sha256": p["stored_sha256"],
                "raw_size": p["raw_size"],
            })
        manifest["chunks"][cid] = {"bytes": b["bytes"], "files": sorted(x["stored_name"] for x in b["pieces"])}
    wheel_bytes = sum(w["size"] for w in wheels)
    stored_bytes = sum(b["bytes"] for b in bins)
    manifest["totals"] = {"wheels": len(wheels), "wheel_bytes": wheel_bytes, "stored_bytes": stored_bytes,
                          "chunks": len(bins), "pieces": len(pieces)}
    # Same wheels and same cut -> same id: re-running stage.py does not invalidate a half-staged device.
    manifest["kit_id"] = hashlib.sha256(json.dumps(
        [[p["name"], p["chunk"], p["sha256"]] for p in manifest["pieces"]]).encode()).hexdigest()[:16]
    text = json.dumps(manifest, indent=1, sort_keys=False) + "\n"
    (STAGE / "manifest.json").write_text(text)
    for n in range(len(bins)):
        (STAGE / f"chunk-{n:02d}" / "manifest.json").write_text(text)
    log(f"{len(wheels)} wheels, {wheel_bytes / MIB:.1f} MiB -> {len(pieces)} pieces, "
        f"{stored_bytes / MIB:.1f} MiB stored in {len(bins)} chunks of <= {chunk_mib} MiB "
        f"({time.time() - t0:.0f} s)")
    for cid, c in manifest["chunks"].items():
        log(f"  chunk-{cid}: {c['bytes'] / MIB:5.1f} MiB  {len(c['files'])} files")


# -- check -------------------------------------------------------------------------------------
def check() -> None:
    """Simulate the device: rebuild the wheels from the chunk folders with gpu/kit.py, then let pip
    resolve every requirement offline from those wheels plus the device-provided ones (downloaded
    here at the locked versions into .gpu-stage/device-ref/, never carried). Fails if a dependency
    is missing, if pip would pick another version, or if a carried wheel is not needed."""
    t0 = time.time()
    _, device = read_lock()
    ref = STAGE / "device-ref"
    ref.mkdir(parents=True, exist_ok=True)
    have = {"-".join(p.name.split("-")[:2]).lower() for p in ref.glob("*.whl")}
    todo = [f"{k}=={v['resolved']}" for k, v in device.items()
            if f"{k.replace('-', '_')}-{v['resolved']}".lower() not in have]
    if todo:
        log(f"downloading {len(todo)} device-provided reference wheels into {ref.relative_to(REPO)}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *TARGET, "-d", str(ref),
                        *todo], check=True, env=pip_env())
    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "stage"
        kit = [sys.executable, str(REPO / "gpu" / "kit.py")]
        for cdir in sorted(STAGE.glob("chunk-*")):
            subprocess.run([*kit, "add", str(cdir), str(sim)], check=False, stdout=subprocess.DEVNULL)
        subprocess.run([*kit, "status", str(sim)], check=True)
        subprocess.run([*kit, "assemble", str(sim)], check=True)
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--no-index", "--find-links", str(sim / "wheels"), "--find-links", str(ref),
                        "--report", str(report), "--target", str(Path(tmp) / "t"), *TARGET, *REQUIREMENTS],
                       check=True, env=pip_env())
        used = {Path(i["download_info"]["url"]).name for i in json.loads(report.read_text())["install"]}
        kit_files = {p.name for p in (sim / "wheels").glob("*.whl")}
        ref_files = {p.name for p in ref.glob("*.whl")}
    unused, foreign = sorted(kit_files - used), sorted(used - kit_files - ref_files)
    log(f"offline resolution: {len(used)} distributions, {len(used & kit_files)} of {len(kit_files)} carried "
        f"wheels and {len(used & ref_files)} device-provided ones ({time.time() - t0:.0f} s)")
    if unused or foreign:
        raise SystemExit(f"check failed: carried but unused {unused}; from neither {foreign}")
    log("check passed: the carried set plus the device's packages resolve with nothing missing")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", default="all", choices=["all", "resolve", "download", "split", "check"])
    ap.add_argument("--re-resolve", action="store_true", help="resolve again even if gpu/wheels.lock exists")
    ap.add_argument("--chunk-mib", type=int, default=60, help="largest chunk folder (the call limit is 64 MiB "
                    "including the ~1 MiB working tree)")
    ap.add_argument("--part-mib", type=int, default=0, help="byte-part size for large wheels (default: chunk-mib)")
    ap.add_argument("--min-saving", type=float, default=0.10, help="xz a piece only if it saves this fraction")
    args = ap.parse_args(argv)
    part_mib = args.part_mib or args.chunk_mib
    if part_mib > args.chunk_mib:
        ap.error("--part-mib must not exceed --chunk-mib")
    timings = {}
    if args.step in ("all", "resolve"):
        t = time.time()
        if args.re_resolve or args.step == "resolve" or not LOCK.exists():
            resolve()
        else:
            log(f"using {LOCK.relative_to(REPO)} (pass --re-resolve to resolve again)")
        timings["resolve"] = time.time() - t
    files = None
    if args.step in ("all", "download", "split"):
        t = time.time()
        files = download()
        timings["download"] = time.time() - t
    if args.step in ("all", "split"):
        t = time.time()
        split(files, args.chunk_mib, part_mib, args.min_saving)
        timings["split"] = time.time() - t
    if args.step == "check":
        t = time.time()
        check()
        timings["check"] = time.time() - t
    STAGE.mkdir(exist_ok=True)
    tfile = STAGE / "stage-timings.json"
    merged = json.loads(tfile.read_text()) if tfile.exists() else {}
    merged.update({k: round(v, 1) for k, v in timings.items()})
    tfile.write_text(json.dumps(merged) + "\n")
    log("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
