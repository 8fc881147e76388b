"""Runs the benches whose figures BENCHMARKS.md holds and rewrites each one's table in place.

    .venv/bin/python -m bench.run_all                  # make bench: the fast sections (about 30 minutes)
    .venv/bin/python -m bench.run_all --group detection # make bench-detection: the dev sets (hours)
    .venv/bin/python -m bench.run_all --group soak      # the 100,000-frame soak (up to an hour)
    .venv/bin/python -m bench.run_all --only health,publish
    .venv/bin/python -m bench.run_all --list

Each section's table sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` and is replaced
whole: its commands, the date, the machine (cores, load average before and after) and the versions,
then what the bench printed. A section whose hardware, service or data is absent is skipped with
the reason, and its table is left as it was. Everything it builds goes under runs/bench.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "BENCHMARKS.md"
SHARED = Path("../shared/datasets")
PY = ".venv/bin/python"
HLGFA = ".venv/bin/hlgfa"
DEMO = "runs/bench/demo"
MODEL = f"{DEMO}/model"
ELPV_SMALL = "runs/bench/elpv100"
NOISE = ("Loaded pretrained weights for",)  # printed by the backbone's package on every load
VERSIONS = ("torch", "onnxruntime", "numpy", "opencv-python-headless", "pyzmq")


@dataclass
class Section:
    name: str
    commands: list[str]  # shell lines run in the repository root, in order; shown above the table
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    group: str = "fast"
    setup: list[str] = field(default_factory=list)  # run first, output not shown (building inputs)
    shown_from: str | None = None  # show the output from the first line holding this (a report after progress)


def _missing_model() -> str | None:
    return None if (ROOT / MODEL / "model.onnx").is_file() else f"no {MODEL}/model.onnx: run the demo section first"


def _missing_shared(*names: str) -> Callable[[], str | None]:
    def check() -> str | None:
        absent = [name for name in names if not (ROOT / SHARED / name).is_dir()]
        return f"needs {', '.join(str(SHARED / n) for n in absent)}" if absent else None
    return check


def _missing_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "needs a CUDA GPU (torch sees none)"


def _missing_mosquitto() -> str | None:
    return None if shutil.which("mosquitto") else "needs the mosquitto broker on PATH (make system-packages)"


def _missing_chromium() -> str | None:
    return None if Path("/usr/bin/chromium").is_file() else "needs /usr/bin/chromium (make system-packages)"


def _detection(dataset: str, holdout: str) -> list[str]:
    out = f"runs/bench/detection/{Path(dataset).name}"
    return [f"{HLGFA} train --data {dataset} --out {out} --holdout {holdout} --seed 0 --threads 1",
            f"{HLGFA} eval --model {out} --data {dataset} --out {out}.metrics.json --scores {out}.scores.csv"]


SECTIONS = [
    Section("demo", [f"{HLGFA} demo --out {DEMO}"], shown_from="frames replayed"),
    Section("camera", [f"{PY} -m bench.perf.camera"]),
    Section("camera-reconnects", [f"{PY} -m bench.perf.camera --reconnects 300"]),
    Section("health", [f"{PY} -m bench.perf.health"]),
    Section("publish", [f"{PY} -m bench.perf.publish"]),
    Section("calibration", [f"OMP_NUM_THREADS=1 {PY} -m bench.detection.calibration_coverage"]),
    Section("quality-gate", [f"{PY} -m bench.detection.quality_gate --model {MODEL} --thresholds {MODEL}/thresholds.json "
                             f"--data {ELPV_SMALL} --backend onnxruntime"
                             + (f" --wrong-product {SHARED}/magnetic_tile" if (ROOT / SHARED / "magnetic_tile").is_dir()
                                else "")],
            needs=_missing_model,
            setup=[f"{PY} -m bench.detection.elpv_layout --out {ELPV_SMALL} --limit 100"]),
    Section("daemon", [f"OMP_NUM_THREADS=1 {PY} -m bench.perf.pipeline --model {MODEL} --onnx {MODEL}/model.onnx "
                       f"--images {DEMO}/data/replay --frames 300 --rounds 3"], needs=_missing_model),
    Section("preprocess", [f"{PY} -m bench.perf.preprocess"]),
    Section("backends", [f"OMP_NUM_THREADS={threads} {PY} -m bench.perf.backends --model {MODEL} --onnx "
                         f"{MODEL}/model.onnx --onnx-fp16 runs/bench/model.fp16.onnx --images {DEMO}/data/replay "
                         f"--threads {threads} --iters 30 --backends torch,onnxruntime,onnxruntime-spin"
                         for threads in (2, 1)],
            needs=_missing_model, setup=[f"{HLGFA} export --model {MODEL} --out runs/bench/model.fp16.onnx --fp16"]),
    Section("parity", [f"OMP_NUM_THREADS=1 {PY} -m bench.detection.parity_backends --model {MODEL} --data {ELPV_SMALL} "
                       f"--onnx {MODEL}/model.onnx --onnx-fp16 runs/bench/model.fp16.onnx --torch-half --threads 1"],
            needs=_missing_model, setup=[f"{PY} -m bench.detection.elpv_layout --out {ELPV_SMALL} --limit 100",
                                         f"{HLGFA} export --model {MODEL} --out runs/bench/model.fp16.onnx --fp16"]),
    Section("cuda", [f"{PY} -m bench.perf.cuda --model runs/bench/detection/magnetic_tile --data {SHARED}/magnetic_tile"],
            needs=lambda: _missing_cuda() or (None if (ROOT / "runs/bench/detection/magnetic_tile").is_dir()
                                              else "needs the magnetic tile model of the detection section")),
    Section("bridge", [f"{PY} -m bench.perf.bridge --frames 2000 --rate 200 --cameras 4"], needs=_missing_mosquitto),
    Section("drift", [f"{PY} -m bench.detection.drift --out runs/bench/drift"]),
    Section("hostile-flood", [f"{PY} -m bench.reliability.hostile flood --seconds 60"]),
    Section("quality-floor", [f"{PY} -m bench.detection.quality_floor --draws 200"]),
    # 100,000 frames: half an hour to an hour on the shared 2-core machine, so its own group
    Section("soak", [f"{PY} -m bench.reliability.hostile soak --frames 100000"], group="soak"),
    Section("records", [f"{PY} -m bench.perf.records --seconds 120 --baseline-seconds 20"]),
    Section("view", [f"{PY} -m bench.perf.view latency --baseline-rev e6d590d",
                     f"{PY} -m bench.perf.view load --records 100000", f"{PY} -m bench.perf.view hash"],
            needs=_missing_chromium),
    Section("detection", [*_detection(f"{SHARED}/magnetic_tile", "0.2"), *_detection(f"{SHARED}/bsdata", "0.2"),
                          *_detection("runs/bench/elpv", "0"),
                          f"{PY} -m bench.detection.detection_table runs/bench/detection/*.metrics.json"],
            needs=_missing_shared("magnetic_tile", "bsdata"), group="detection",
            setup=[f"{PY} -m bench.detection.elpv_layout --out runs/bench/elpv"]),
    Section("map-gate", [f"{PY} -m bench.detection.map_gate --model runs/bench/detection/{name} --data {data}"
                         for name, data in (("magnetic_tile", f"{SHARED}/magnetic_tile"),
                                            ("bsdata", f"{SHARED}/bsdata"), ("elpv", "runs/bench/elpv"))],
            needs=lambda: None if all((ROOT / f"runs/bench/detection/{name}").is_dir()
                                      for name in ("magnetic_tile", "bsdata", "elpv"))
            else "needs the models of the detection section", group="detection"),
    Section("calibration-real", [f"{PY} -m bench.detection.calibration --model runs/bench/detection/magnetic_tile "
                                 f"--data {SHARED}/magnetic_tile --train-split-seed 0 --backend onnxruntime"],
            needs=lambda: None if (ROOT / "runs/bench/detection/magnetic_tile").is_dir()
            else "needs the magnetic tile model of the detection section", group="detection",
            setup=[f"{HLGFA} export --model runs/bench/detection/magnetic_tile "
                   f"--out runs/bench/detection/magnetic_tile/model.onnx"]),
]


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with what lies between the markers of `name` replaced by `body`; nothing else changes.
    Raises ValueError when the markers are missing, repeated, out of order or nested, or when `body`
    holds a marker itself (it would end up outside its own section)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    for marker in (start, end):
        if text.count(marker) != 1:
            raise ValueError(f"BENCHMARKS.md: expected exactly one {marker!r}, found {text.count(marker)}")
    if "<!-- bench:" in body or "<!-- /bench:" in body:
        raise ValueError(f"section {name}: the generated table holds a bench marker")
    begin, finish = text.index(start) + len(start), text.index(end)
    if finish < begin:
        raise ValueError(f"BENCHMARKS.md: {end!r} comes before {start!r}")
    inside = text[begin:finish]
    if "<!-- bench:" in inside or "<!-- /bench:" in inside:
        raise ValueError(f"BENCHMARKS.md: another section's marker lies inside {name}'s")
    return text[:begin] + "\n" + body.strip("\n") + "\n" + text[finish:]


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|")


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_record(line: str) -> dict | None:
    """A printed line as a table row: a JSON object, or a name followed by one ("torch {...}")."""
    head, _, rest = line.partition(" ")
    for candidate, name in ((line, None), (rest, head)):
        if candidate.startswith("{"):
            try:
                record = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                return _flatten({"name": name, **record} if name else record)
    return None


def _same_table(a: dict, b: dict) -> bool:
    """Consecutive objects are rows of one table when they have the same keys or are all named."""
    return set(a) == set(b) or ("name" in a and "name" in b)


def _table(records: list[dict]) -> list[str]:
    if len(records) == 1:  # one record: a key | value table reads better than one wide row
        return ["| measure | value |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in records[0].items()]
    keys = list(dict.fromkeys(k for record in records for k in record))
    return (["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            + ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in records])


def render(output: str) -> str:
    """What a bench printed, as Markdown: its own Markdown tables kept, JSON objects (one a line, or
    the whole output) as tables (consecutive objects with the same keys as rows of one), other
    lines as a code block."""
    lines = output.splitlines()
    if "{" in lines[1:]:  # a report printed with indent after other lines: render the two parts apart
        split = lines.index("{", 1)
        try:
            json.loads("\n".join(lines[split:]))
            return render("\n".join(lines[:split])) + "\n\n" + render("\n".join(lines[split:]))
        except json.JSONDecodeError:
            pass
    try:
        whole = json.loads(output)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):  # scalars as one key | value table, each list of objects as a table of its own
        rows = {k: v for k, v in whole.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
        rest = _flatten({k: v for k, v in whole.items() if k not in rows})
        return "\n\n".join(["\n".join(_table([rest]))] * bool(rest)
                           + [f"{k}:\n\n" + "\n".join(_table([_flatten(r) for r in v])) for k, v in rows.items()])
    blocks: list[tuple[str, list]] = []  # ("table", records) | ("markdown", lines) | ("text", lines)
    for line in output.splitlines():
        record = _as_record(line.strip())
        kind = "table" if record is not None else "markdown" if line.startswith("|") else "text"
        if kind == "text" and not line.strip():
            continue
        item = record if record is not None else line
        previous = blocks[-1] if blocks else None
        if previous and previous[0] == kind and (kind != "table" or _same_table(previous[1][-1], record)):
            previous[1].append(item)
        else:
            blocks.append((kind, [item]))
    parts = []
    for kind, items in blocks:
        parts.append("\n".join(_table(items) if kind == "table" else items if kind == "markdown"
                               else ["```", *items, "```"]))
    return "\n\n".join(parts)


def _without_local_paths(output: str) -> str:
    """Paths as a reader's checkout has them: relative to the repository, ../shared, a temporary folder."""
    output = output.replace(str(ROOT.parent / "shared"), "../shared").replace(f"{ROOT}/", "").replace(str(ROOT), ".")
    return re.sub(r"/tmp/[^\s\"',)]*", "<temporary folder>", output)


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        named = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True)
        gpu = named.stdout.strip().replace("\n", ", ") or gpu
    return f"{os.cpu_count()}-core {platform.machine()}, {memory:.0f} GiB, {gpu}"


def versions() -> str:
    found = [f"Python {platform.python_version()}"]
    for package in VERSIONS:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def run_section(section: Section) -> str:
    """Runs the section's setup and commands; returns its table (header and rendered output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    for command in section.setup:
        subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    load_before, began = _load(), time.monotonic()
    outputs = []
    for command in section.commands:
        print(f"$ {command}", flush=True)
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            raise RuntimeError(f"`{command}` exited {done.returncode}")
        shown = "".join(line for line in _without_local_paths(done.stdout).splitlines(keepends=True)
                        if not line.startswith(NOISE))
        if section.shown_from and section.shown_from in shown:
            shown = shown[shown.rindex("\n", 0, shown.index(section.shown_from)) + 1:]
        outputs.append(render(shown))
    header = "\n".join(f"    {command}" for command in section.setup + section.commands)
    stamp = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {time.monotonic() - began:.0f} s; {machine()}; load average "
             f"(1/5/15 min) {load_before} before, {_load()} after; {versions()}.")
    return f"{header}\n\n_Regenerated by `make bench` ({section.name}): {stamp}_\n\n" + "\n\n".join(outputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", default="fast", choices=("fast", "detection", "soak"))
    parser.add_argument("--only", help="comma-separated section names (any group)")
    parser.add_argument("--list", action="store_true", help="print the sections and what they need, run nothing")
    args = parser.parse_args(argv)
    chosen = [s for s in SECTIONS if (s.name in args.only.split(",") if args.only else s.group == args.group)]
    if args.only:
        unknown = set(args.only.split(",")) - {s.name for s in SECTIONS}
        if unknown:
            parser.error(f"--only: no section {', '.join(sorted(unknown))}; see --list")
    if args.list:
        for section in SECTIONS:
            print(f"{section.name:18s} {section.group:9s} {section.needs() or 'can run here'}")
        return 0
    for section in chosen:  # every marker checked before hours of running, not after
        replace_block(DOCUMENT.read_text(), section.name, "")
    results = {}
    for section in chosen:
        reason = section.needs()
        if reason:
            print(f"skipping {section.name}: {reason}; its table is left as it was", flush=True)
            results[section.name] = f"skipped: {reason}"
            continue
        try:
            table = run_section(section)
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"section {section.name} failed: {error}; its table is left as it was", flush=True)
            results[section.name] = f"failed: {error}"
            continue
        # Written after each section, so that a later failure keeps what this one measured.
        DOCUMENT.write_text(replace_block(DOCUMENT.read_text(), section.name, table))
        results[section.name] = "regenerated"
    print(json.dumps(results, indent=2))
    return 1 if any(r.startswith("failed") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
