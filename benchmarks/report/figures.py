"""The figures of README.md and docs/*.md, rendered from benchmarks/results/*.json (run through ``python -m benchmarks.report.model_card``).

A document marks each figure as a block that the script rewrites::

    <!-- figures:quality-full -->
    | method | ... |
    <!-- /figures -->

A figure that is one line stays inline (``… <!-- figures:assess -->ROC AUC …<!-- /figures --> …``); tables take lines
of their own. :data:`RENDERERS` names every block; an unknown name is an error, so a typo cannot leave a stale figure.
Every function reads its results files afresh through a :class:`Source` (the test suite points it at a changed copy).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (ESTIMATED_ROW, INPUT_ROW, MODEL_ROW, PNP_ROW, PROTOCOL_TITLES, PSF_ROW, RESULTS, RL_ROW, UNBLURRED,
                               WIENER_ROW)
from benchmarks.report import psf_card

#: A figure block: its opening marker with the name, the rendered text, the closing marker.
BLOCK = re.compile(r"(<!-- figures:([a-z0-9-]+) -->)(.*?)(<!-- /figures -->)", re.S)


@dataclass(frozen=True)
class Source:
    """Where a figure reads its numbers (``results``) and the document it goes into (``document``: links are relative to it)."""

    results: Path
    document: Path

    def load(self, name: str) -> dict:
        return json.loads((self.results / name).read_text())

    def link(self, name: str) -> str:
        """A Markdown link from the document to the committed ``benchmarks/results/name``."""
        return f"[`{name}`]({os.path.relpath(RESULTS / name, self.document.resolve().parent)})"


def _machine(machine: dict | str) -> str:
    if isinstance(machine, str):
        return machine
    threads = f", {machine['torch_threads']} thread{'s' if machine['torch_threads'] != 1 else ''}" if "torch_threads" in machine else ""
    return f"{machine['cpu']}, {machine['cores']} cores{threads}"


def _quality(src: Source, protocol: str) -> str:
    """PSNR per family against the input and the classical methods given the true kernel (the card has SSIM too)."""
    quality = src.load(f"quality_{protocol}.json")
    families = list(quality["families"])
    model_id = quality["rows"][MODEL_ROW]["model"]["id"]
    names = {INPUT_ROW: "input", WIENER_ROW: "Wiener (true kernel)", RL_ROW: "Richardson–Lucy (true kernel)",
             MODEL_ROW: f"**meddeblur** (`{model_id}`)"}
    source = quality["rows"]["input"]["families"]
    lines = ["| method | " + " | ".join(families) + " | mean of blurs | gain |", "|" + "---|" * (len(families) + 3)]
    for label, shown in names.items():
        row = quality["rows"][label]
        cells = [f"{row['families'][f]['psnr']:.2f}".replace("inf", "∞") for f in families]
        gains = [row["families"][f]["psnr"] - source[f]["psnr"] for f in families if f not in UNBLURRED]
        gain = "—" if label == "input" else f"{sum(gains) / len(gains):+.2f}"
        lines.append(f"| {shown} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} | {gain} |")
    # The model's row may be kept from an earlier run than the file's last command (quality.py --keep)
    command = quality.get("kept_rows", {}).get(MODEL_ROW, quality["command"])
    machine = quality.get("kept_machines", {}).get(MODEL_ROW, quality["machine"])
    lines.append(f"\n{quality['test_images']} test images, PSNR in dB; `{command}` on {_machine(machine)} "
                 f"({src.link(f'quality_{protocol}.md')}).")
    return "\n".join(lines)


def _flops_row(flops: dict, label: str) -> dict:
    return next(row for row in flops["rows"] if row["label"] == label)


def _shipped_row(flops: dict) -> dict:
    config = flops["paired"]["shipped_config"]
    return next(row for row in flops["rows"] if row["config"] == config)


def model(src: Source) -> str:
    """One line: the shipped network's size and CPU speed."""
    flops = src.load("flops.json")
    row = _shipped_row(flops)
    return (f"{row['parameters'] / 1e6:.1f} M parameters, {row['gflop_256']:.2f} GFLOP per 256×256 image; "
            f"{row['256x256']['median_s'] * 1000:.0f} ms per 256×256 and {row['1024x768']['median_s']:.2f} s per 1024×768 "
            f"image on a {flops['machine']['cores']}-core {flops['machine']['cpu']} CPU ({flops['machine']['torch_threads']} threads; "
            f"`python -m benchmarks.flops`, row {row['label']})")


def sharp_kept(src: Source) -> str:
    """One line: how little the model changes an image that is already sharp, at full resolution."""
    quality = src.load("quality_full.json")
    value = next(v["psnr"] for f, v in quality["rows"][MODEL_ROW]["families"].items() if f in UNBLURRED)
    return f"{value:.1f} dB"


def speed(src: Source) -> str:
    """The shipped network against the former one and the reference, from one run of flops.py."""
    flops = src.load("flops.json")
    paired = flops["paired"]
    rows = [("meddeblur (shipped network)", _shipped_row(flops)), (f"former network ({paired['former']})", _flops_row(flops, paired["former"])),
            ("reference Attention U-Net w64", next(r for r in flops["rows"] if "reference" in r["label"]))]
    lines = ["| network | parameters | GFLOP / 256² | ms / 256×256 | s / 1024×768 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {row['parameters']:,} | {row['gflop_256']:.2f} | {row['256x256']['median_s'] * 1000:.0f} | "
              f"{row['1024x768']['median_s']:.2f} |" for name, row in rows]
    lines.append(f"\nMedians of single-image passes, `{flops['command']}` on {_machine(flops['machine'])}, {flops['date'][:10]} "
                 f"({src.link('flops.md')}). Timed in {paired['pairs']} alternating passes in the same run, the "
                 f"shipped network takes {paired['shipped_median_s']:.2f} s per {paired['size'].replace('x', '×')} against "
                 f"{paired['former_median_s']:.2f} s for the former one ({paired['ratio']:.2f}×).")
    return "\n".join(lines)


def onnx(src: Source) -> str:
    """PyTorch against ONNX Runtime, both engines in the same run."""
    data = src.load("onnx_speed.json")
    stages = {s["id"]: s["stage"] for s in src.load("default_training_stages.json")}
    lines = ["| model | image | PyTorch (ms) | ONNX Runtime (ms) | largest difference |", "|---|---|---|---|---|"]
    for row in data["rows"]:
        name = row["model"]
        if name == "default":
            name = f"the shipped network (stage-{stages[row['model_id']]} weights)" if row["model_id"] in stages else "the shipped network"
        else:
            name = f"{row['arch']} w{row['width']}, random weights"
        lines.append(f"| {name} | {row['size'].replace('x', '×')} | {row['torch_ms_median']:.0f} | {row['onnx_ms_median']:.0f} | "
                     f"{row['max_abs_diff']:.1e} |")
    lines.append(f"\nMedians of {data['rows'][0]['repeats']}, {data['threads']} threads for both engines, `{data['command']}` on "
                 f"{_machine(data['machine'])}, {data['date']} ({src.link('onnx_speed.md')}). Each row's two "
                 "engines ran side by side; the machine is shared, so other runs give other absolute times.")
    return "\n".join(lines)


def tiling(src: Source) -> str:
    """Time and peak memory of one large image deblurred in tiles."""
    data = src.load("tiling_memory.json")
    flops = src.load("flops.json")
    labels = {json.dumps(r["config"], sort_keys=True): r["label"] for r in flops["rows"]}
    lines = ["| network | tiles | seconds | peak memory (RSS) |", "|---|---|---|---|"]
    for label, row in data["rows"].items():
        name = labels.get(json.dumps(row["config"], sort_keys=True), label)
        lines.append(f"| {name} | {row['tiles']} | {row['seconds']:.0f} | {row['peak_rss_mib'] / 1024:.2f} GiB |")
    lines.append(f"\nOne {data['image']} image, tiles of {data['tile']} px with {data['overlap']} px overlap, `{data['command']}` on "
                 f"{_machine(data['machine'])} ({src.link('tiling_memory.md')}).")
    return "\n".join(lines)


def load(src: Source) -> str:
    """The server under 16 concurrent clients."""
    data = src.load("load.json")
    requests, latency, rss = data["requests"], data["latency_ms"], data["rss_mib"]
    return (f"{requests['sent']:,} requests ({', '.join(s.replace('x', '×') for s in data['sizes'])}) from {data['clients']} clients to one "
            f"worker with {data['server']['threads']} threads (model `{data['server']['model_id']}`): {requests['ok']:,} answered 200, "
            f"{requests['busy_503']} answered 503, {requests['unexpected']} unexpected errors; {data['throughput_rps']:.1f} requests/s, "
            f"latency p50 / p95 / p99 {latency['p50'] / 1000:.2f} / {latency['p95'] / 1000:.2f} / {latency['p99'] / 1000:.2f} s with the "
            f"queue full; server memory {rss['after_warmup']:.0f} MiB after warm-up and {rss['end']:.0f} MiB at the end "
            f"(`{data['command']}` on {_machine(data['machine'])})")


def assess(src: Source) -> str:
    """The blur score against blurred copies of the ISIC photographs."""
    data = src.load("assess_auc.json")
    sigma = data["headline_sigma"]
    key = f"{float(sigma):g}" if f"{float(sigma):g}" in data["auc"] else str(sigma)
    sharp, blurred = data["scores"]["sharp"], data["scores"][f"blurred σ={float(sigma):g}"]
    every = "; every blurred copy scores above its original" if data["paired_higher"][key] == 1.0 else ""
    at = data["at_default"]
    return (f"ROC AUC **{data['auc'][key]:.3f}** between the {data['images']} ISIC photographs and copies blurred with a Gaussian "
            f"σ = {float(sigma):g} px{every}; sharp {sharp['mean']:.2f} ± {sharp['std']:.2f}, blurred {blurred['mean']:.2f} ± "
            f"{blurred['std']:.2f}; at the default threshold {data['default_threshold']:g}, sensitivity {at['sensitivity']:.1%} and "
            f"specificity {at['specificity']:.1%} (`{data['command']}`)")


def fuzz(src: Source) -> str:
    data = src.load("fuzz_decode.json")
    return (f"{data['examples']:,} mutated files from {data['seeds']} seed images, {data['outcomes']['finding']} findings "
            f"(every one decoded or refused with a one-line error)")


def train_speed(src: Source) -> str:
    """The default recipe against the former one, from scratch at equal CPU time."""
    data = src.load("train_speed.json")
    former, current = data["rows"].values()
    start = data["inputs"]["val mix"]["psnr"]
    f, c = former["val"]["val mix"]["psnr"], current["val"]["val mix"]["psnr"]
    return (f"after {data['minutes']:g} CPU-minutes from scratch on one thread, the default recipe reaches {c:.2f} dB on the validation mix "
            f"({current['steps']:,} steps) against {f:.2f} dB for the former recipe ({former['steps']:,} steps), whose input is "
            f"{start:.2f} dB: {c - f:+.2f} dB (`{data['command']}`, {_machine(data['machine'])})")


def train_speed_psf(src: Source) -> str:
    """The kernel-conditioned restorer against the blind network, both fine-tuned from the shipped blind weights at equal CPU time."""
    data = src.load("train_speed_psf.json")
    lines = ["| model | steps | samples / CPU-s | val mix PSNR: start → end | gain per CPU-minute | sharp inputs kept: start → end |",
             "|---|---|---|---|---|---|"]
    for label, row in data["rows"].items():
        start, end = row["start"]["val mix"], row["val"]["val mix"]
        kept = f"{start['sharp_psnr']:.2f} → {end['sharp_psnr']:.2f} dB" if "sharp_psnr" in end else "—"
        lines.append(f"| {label} | {row['steps']:,} | {row['samples_per_cpu_second']:.2f} | {start['psnr']:.2f} → {end['psnr']:.2f} dB | "
                     f"{row['gain_per_cpu_minute']:+.3f} dB | {kept} |")
    lines.append(f"\n{data['minutes']:g} CPU-minutes each, one thread, from the shipped blind weights (`{data['init_id']}`); validation mix of "
                 f"{data['val_images']} images, input {data['inputs']['val mix']['psnr']:.2f} dB; `{data['command']}` on {_machine(data['machine'])} "
                 f"({src.link('train_speed_psf.md')}).")
    return "\n".join(lines)


def parallel(src: Source) -> str:
    data = src.load("train_speed.json")
    lines = ["| setup | samples / s |", "|---|---|"]
    lines += [f"| {name} | {row['samples_per_second']:.1f} |" for name, row in data["parallel"].items()]
    lines.append(f"\nThe default recipe, wall clock including one validation round, `{data['parallel_command']}` on {_machine(data['machine'])}.")
    return "\n".join(lines)


def loss_probe(src: Source) -> str:
    """Each probed loss, learning rate and crop at equal CPU time."""
    data = src.load("loss_probe.json")
    lines = ["| loss, learning rate, crop | start | CPU minutes | steps | val mix PSNR (input) | sharp inputs kept |", "|---|---|---|---|---|---|"]
    for label, row in data.items():
        options = row["options"]
        setting = label.split(", from ")[0]
        setting += "" if ", crop " in setting else f", crop {options['crop']}"
        start = "shipped weights" if options.get("init") else "scratch"
        lines.append(f"| {setting} | {start} | {row['cpu_minutes']:.0f} | {row['steps']:,} | {row['val']['val mix']['psnr']:.2f} "
                     f"({row['inputs']['val mix']['psnr']:.2f}) | {row['val']['val mix']['sharp_psnr']:.1f} dB |")
    machine = next(iter(data.values()))["machine"]
    lines.append(f"\nOne thread each, `python -m benchmarks.experiments.loss_probe LOSS --minutes M [--lr LR] [--crop C] [--init default]` on {_machine(machine)} "
                 f"({src.link('loss_probe.md')}).")
    return "\n".join(lines)


SAME_DB = 0.05  # closer than this, neither is called ahead


def method_psf(src: Source) -> str:
    """Per protocol: the mean gains of the blind default and of method psf, the families where each is ahead, the default."""
    lines = ["| protocol | blind network (default) | `--method psf` | `--method psf` ahead on | blind network ahead on |", "|---|---|---|---|---|"]
    measured = {}
    for protocol, title in PROTOCOL_TITLES.items():
        quality = src.load(f"quality_{protocol}.json")
        rows = quality["rows"]
        if ESTIMATED_ROW not in rows:
            continue
        measured[protocol] = quality
        blind, estimated = rows[MODEL_ROW], rows[ESTIMATED_ROW]
        lead = {f: estimated["families"][f]["psnr"] - blind["families"][f]["psnr"] for f in quality["families"] if f not in UNBLURRED}

        def ahead(sign: int) -> str:
            return ", ".join(f"{f} ({sign * d:+.2f})" for f, d in lead.items() if sign * d > SAME_DB) or "—"

        lines.append(f"| {title} | {blind['gain_psnr']:+.2f} | {estimated['gain_psnr']:+.2f} | {ahead(1)} | {ahead(-1)} |")
    allowed, reasons = psf_card.ship_rule(measured)
    lines.append(f"\nMean gain over the input (dB) across the blur families; per family, by how much the one is ahead of the other "
                 f"(differences under {SAME_DB} dB not listed). " + ("`--method psf` beats the blind network by the ship rule." if allowed else
                 "The blind network stays the default: " + "; ".join(reasons) + ".") + " Tables: " + ", ".join(src.link(f"quality_{p}.md") for p in measured) + ".")
    return "\n".join(lines)


def pnp_ship_rule(measured: dict[str, dict]) -> tuple[bool, list[str]]:
    """Whether the plug-and-play restorer may be what a known PSF is restored with by default: on every protocol measured
    (all four required) its mean beats the kernel-conditioned network's, and every blur family stays at or above its input."""
    reasons = [f"{PROTOCOL_TITLES[p]} not measured" for p in PROTOCOL_TITLES if p not in measured]
    for protocol, quality in measured.items():
        rows, title = quality["rows"], PROTOCOL_TITLES[protocol]
        pnp, network, source = rows[PNP_ROW], rows[PSF_ROW], rows["input"]["families"]
        if pnp["mean_psnr"] <= network["mean_psnr"]:
            reasons.append(f"{title}: mean {pnp['mean_psnr']:.2f} ≤ the network's {network['mean_psnr']:.2f} dB")
        reasons += [f"{title}: {f} {v['psnr'] - source[f]['psnr']:+.2f} dB below its input" for f, v in pnp["families"].items()
                    if f not in UNBLURRED and v["psnr"] < source[f]["psnr"]]
    return not reasons, reasons


def known_blur(src: Source) -> str:
    """Told the true PSF, per protocol: each known-blur method's mean gain, plug-and-play against Richardson–Lucy per family."""
    lines = ["| protocol | Wiener | Richardson–Lucy | kernel-conditioned network | plug-and-play | plug-and-play − RL, per family |",
             "|---|---|---|---|---|---|"]
    measured = {}
    for protocol, title in PROTOCOL_TITLES.items():
        quality = src.load(f"quality_{protocol}.json")
        rows = quality["rows"]
        if PNP_ROW not in rows or PSF_ROW not in rows:
            continue
        measured[protocol] = quality
        lead = ", ".join(f"{f} {rows[PNP_ROW]['families'][f]['psnr'] - rows[RL_ROW]['families'][f]['psnr']:+.2f}"
                         for f in quality["families"] if f not in UNBLURRED)
        lines.append(f"| {title} | " + " | ".join(f"{rows[r]['gain_psnr']:+.2f}" for r in (WIENER_ROW, RL_ROW, PSF_ROW, PNP_ROW))
                     + f" | {lead} |")
    allowed, reasons = pnp_ship_rule(measured)
    lines.append("\nMean gain over the input (dB) across the blur families, every method told the true kernel (Wiener's and "
                 "Richardson–Lucy's parameters tuned per family on validation images). "
                 + ("Plug-and-play is what `--psf` restores with by default: it beats the network's mean on every protocol and keeps "
                    "every family above its input." if allowed else "The kernel-conditioned network stays the `--psf` default: "
                    + "; ".join(reasons) + ".") + " Tables: " + ", ".join(src.link(f"quality_{p}.md") for p in measured) + ".")
    return "\n".join(lines)


def reference_speed(src: Source) -> str:
    """The reference Attention U-Net's training speed on the CPU."""
    data = src.load("speed.json")
    lines = ["| width | parameters | seconds per training step (batch 8) | images / s | seconds per epoch | ms per 256×256 (inference) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['width']} | {r['parameters']:,} | {r['train_step_s']:.1f} | {r['images_per_s']:.2f} | {r['epoch_s']:.0f} | "
              f"{r['infer_ms_median']:.0f} |" for r in data["rows"]]
    lines.append(f"\n{data['protocol']}; `{data['command']}` on {_machine(data['machine'])}.")
    return "\n".join(lines)


def reference_protocol(src: Source) -> str:
    """The reference's own scenario (ESPCN ×2 blur, 20 test pairs): its result beside ours, from benchmarks.reference_protocol."""
    from benchmarks.reference_protocol import REFERENCE

    data = src.load("reference_protocol.json")
    rows = data["score"]["rows"]
    base = rows["input"]["psnr"]
    lines = ["| model | input PSNR | PSNR | gain | SSIM |", "|---|---|---|---|---|",
             f"| reference system (its own 20 pairs; GPU, up to 100 epochs) | {REFERENCE['input_psnr']:.2f} | {REFERENCE['model_psnr']:.2f} "
             f"| {REFERENCE['model_psnr'] - REFERENCE['input_psnr']:+.2f} | {REFERENCE['model_ssim']:.4f} |"]
    lines += [f"| {label} | {base:.2f} | {row['psnr']:.2f} | {row['psnr'] - base:+.2f} | {row['ssim']:.4f} |"
              for label, row in rows.items() if label != "input"]
    lines.append(f"\n{data['score']['test_pairs']} test pairs of {data['make']['images']} made as the reference's were (an ESPCN ×2 "
                 "trained here, both images resized to 256×256 by its loader's bilinear); TF-exact PSNR (dB) and SSIM; "
                 f"`{data['score_command'].split(' --note ')[0]}` on {_machine(data['machine'])} ({src.link('reference_protocol.md')}).")
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Source], str]] = {
    **{f"quality-{p}": (lambda src, p=p: _quality(src, p)) for p in PROTOCOL_TITLES},
    "model": model, "sharp-kept": sharp_kept, "method-psf": method_psf, "known-blur": known_blur, "speed": speed, "onnx": onnx, "tiling": tiling, "load": load, "assess": assess,
    "fuzz": fuzz, "train-speed": train_speed, "train-speed-psf": train_speed_psf, "parallel": parallel, "loss-probe": loss_probe, "reference-speed": reference_speed,
    "reference-protocol": reference_protocol,
}


def render(text: str, results: Path, document: Path) -> str:
    """``text`` (of ``document``) with every figure block re-rendered from ``results``; SystemExit on an unknown block."""
    src = Source(results, document)
    cache: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        name = match[2]
        if name not in RENDERERS:
            raise SystemExit(f"{document}: unknown figure block {name!r}; known: {', '.join(RENDERERS)}")
        if name not in cache:
            cache[name] = RENDERERS[name](src)
        body = cache[name]
        return match[1] + (f"\n{body}\n" if "\n" in body else body) + match[4]

    return BLOCK.sub(replace, text)
