"""``meddeblur pacs`` through a real Orthanc: instances per second by DICOMweb and by C-STORE, beside a folder run.

A script, not a test. ``--instances`` generated dermoscopy-like photographs (Dermoscopic Photography Image Storage,
8-bit RGB, sides 192 to --max-side px) are uploaded to a fresh Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``,
started on 127.0.0.1 from a generated configuration, authentication on, stopped by its PID at the end), then:

* DICOMweb: one ``--once`` pass of the node (QIDO-RS listing, WADO-RS retrieve, a QIDO-RS look for each derived
  instance, STOW-RS store), in this process;
* C-STORE: the node listening in this process, a pynetdicom SCU in a process of its own (a modality is another program)
  sending every instance to it, the node forwarding each derived instance to Orthanc's DICOM port; timed until the node
  has forwarded them all (each forward answered "success" by Orthanc, whose count is checked after);
* folder: what ``meddeblur deblur FOLDER -o OUT --workers 1`` does (planning, then deblurring in this process, one
  instance at a time as the node) on the same instances as ``.dcm`` files.

Each with the same model, loaded once before timing (its loading is reported apart). The share of time in the
network is the DICOMweb calls (or the sending and forwarding) over the wall time; the share in deblurring is
decoding, the network and encoding of each instance (:mod:`meddeblur.pacs.derive`) over the wall time. With C-STORE
the sender and the node run at once, so the two shares may add up to more than 100 %.

    python -m benchmarks.pacs                          # 200 instances: benchmarks/results/pacs.{json,md}
    python -m benchmarks.pacs --instances 10 --out /tmp/pacs-check    # a quick check that it works

On a machine whose cores other work shares, ``--threads 1`` keeps torch from fighting it for them, so that the three
rows compare the ways in, not the load; figures are measured on a quiet machine with the default threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.runs.plan import plan_run
from meddeblur.runs.execute import InProcess, execute
from meddeblur.runs.jobs import Settings
from meddeblur.runs.workers import ModelSpec
from meddeblur.pacs.config import AE, Auth, Filters
from meddeblur.pacs.dicomweb import Archive, run_dicomweb
from meddeblur.pacs.node import Node
from meddeblur.pacs.scp import Forwarder, run_listener

from benchmarks.common import RESULTS, command, machine_line, write_result

ORTHANC, PLUGIN = "/usr/sbin/Orthanc", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "bench", "bench-pw"
DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """A fresh Orthanc in ``folder``, on free ports; ``stop()`` ends it by its PID."""

    def __init__(self, folder: Path) -> None:
        import requests

        self.http, self.dicom = _free_port(), _free_port()
        config = {"Name": "meddeblur-bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [PLUGIN],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "UnknownSopClassAccepted": True,
                  "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StorageCompression": False}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self._log = open(folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.session.get(f"{self.root}/system", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.2)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def count(self) -> int:
        return len(self.session.get(f"{self.root}/instances", timeout=60).json())

    def upload(self, data: bytes) -> None:
        self.session.post(f"{self.root}/instances", data=data, timeout=60).raise_for_status()

    def clear(self) -> None:
        for patient in self.session.get(f"{self.root}/patients", timeout=60).json():
            self.session.delete(f"{self.root}/patients/{patient}", timeout=60)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s; a second call does nothing."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def orthanc_with_instances(prefix: str, instances: int, max_side: int):
    """A temporary folder with ``instances`` generated instances in ``files/`` and a fresh Orthanc on ``orthanc/``.

    Yields (the folder, the instances' paths, the Orthanc, its version); Orthanc is stopped on leaving (or earlier by
    its ``stop()``), the folder removed.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
        work = Path(temporary)
        (work / "files").mkdir()
        (work / "orthanc").mkdir()
        paths = make_instances(work / "files", instances, max_side)
        orthanc = Orthanc(work / "orthanc")
        try:
            version = orthanc.session.get(f"{orthanc.root}/system", timeout=10).json().get("Version", "?")
            yield work, paths, orthanc, version
        finally:
            orthanc.stop()


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments of this benchmark and pacs_crash: --instances, --max-side, --model, --out (for NAME.json and NAME.md)."""
    parser.add_argument("--instances", type=int, default=200, help="instances to send through (default 200)")
    parser.add_argument("--max-side", type=int, default=512, help="largest side of the generated images (default 512)")
    parser.add_argument("--model", help="weights or run folder (default: the shipped model)")
    parser.add_argument("--out", default=str(RESULTS), help=f"folder for {name}.json and {name}.md (default benchmarks/results)")


def require_orthanc() -> None:
    if not (Path(ORTHANC).is_file() and Path(PLUGIN).is_file()):
        raise SystemExit("Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb")


def make_instances(folder: Path, count: int, max_side: int, seed: int = 0) -> list[Path]:
    """``count`` dermoscopic instances in one study and series, written as ``.dcm`` files."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        height, width = (int(side) for side in rng.integers(192, max_side + 1, size=2))
        rgb = np.round(synthetic_dermoscopy(height, width, seed=index) * 255).astype(np.uint8)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = DERMOSCOPIC, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "Bench^Pacs", "BENCH", study, series
        ds.Modality, ds.InstanceNumber, ds.ImageType = "XC", index + 1, ["ORIGINAL", "PRIMARY"]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = height, width, 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation, ds.PixelData = 7, 0, rgb.tobytes()
        path = folder / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class _Timed:
    """An Archive whose calls are timed: the network's share of a DICOMweb pass."""

    def __init__(self, archive: Archive) -> None:
        self.archive, self.seconds = archive, 0.0

    def __getattr__(self, name: str):
        function = getattr(self.archive, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = function(*args, **kwargs)
                if name == "listing":
                    result = list(result)
                return result
            finally:
                self.seconds += time.perf_counter() - started

        return timed


def _row(name: str, count: int, wall: float, network: float | None, deblur: float) -> dict:
    return {"run": name, "instances": count, "wall_s": round(wall, 3), "instances_per_s": round(count / wall, 3),
            "network_share": None if network is None else round(network / wall, 3), "deblur_share": round(deblur / wall, 3)}


def run_dicomweb_pass(orthanc: Orthanc, engine, paths: list[Path], work: Path) -> dict:
    orthanc.clear()
    for path in paths:
        orthanc.upload(path.read_bytes())
    archive = _Timed(Archive(f"{orthanc.root}/dicom-web", Auth(USER, PASSWORD)))
    node = Node(engine, work / "dicomweb.sqlite", Filters(), archive.store, archive.exists)
    started = time.perf_counter()
    counts = run_dicomweb(archive, node, Filters(), 1.0, once=True)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    node.close()
    assert counts.stored == len(paths), counts.line()
    return _row("DICOMweb (QIDO-RS, WADO-RS, STOW-RS)", len(paths), wall, archive.seconds, counts.deblur_seconds)


_MODALITY = """
import sys, time
import pydicom
from pynetdicom import AE
port, paths = int(sys.argv[1]), sys.argv[2:]
datasets = [pydicom.dcmread(path) for path in paths]
sender = AE(ae_title="MODALITY")
sender.add_requested_context(datasets[0].SOPClassUID)
while True:  # until the listener answers
    association = sender.associate("127.0.0.1", port, ae_title="MEDDEBLUR")
    if association.is_established:
        break
    time.sleep(0.05)
started = time.time()
statuses = [association.send_c_store(ds) for ds in datasets]
association.release()
print(started, time.time() - started, sum(1 for s in statuses if s and s.Status == 0), flush=True)
"""


def run_cstore_pass(orthanc: Orthanc, engine, paths: list[Path], work: Path) -> dict:
    """The node listening in this process (as the CLI runs it), a modality sending from a process of its own (as a
    modality is another program), timed from the modality's association until the node has forwarded every instance
    (each forward a C-STORE Orthanc answered "success"); Orthanc's count is checked after."""
    orthanc.clear()
    port, stop = _free_port(), threading.Event()
    forwarder = Forwarder(AE("ORTHANC", "127.0.0.1", orthanc.dicom), "MEDDEBLUR", (DERMOSCOPIC,))
    node = Node(engine, work / "cstore.sqlite", Filters(), forwarder.store)
    times: dict[str, float] = {}
    modality = subprocess.Popen([sys.executable, "-c", _MODALITY, str(port), *map(str, paths)], stdout=subprocess.PIPE, text=True)

    def watch() -> None:
        while node.counts.stored < len(paths):
            time.sleep(0.01)
        times["end"] = time.time()
        stop.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    run_listener(AE("MEDDEBLUR", "127.0.0.1", port), node, set(), work / "spool", stop)
    watcher.join()
    out, _ = modality.communicate(timeout=60)
    started, sending, acknowledged = out.split()
    assert int(acknowledged) == len(paths), out
    forwarder.close()
    node.close()
    assert orthanc.count() == len(paths)
    wall = times["end"] - float(started)
    return _row("C-STORE in, C-STORE forward", len(paths), wall, float(sending) + node.counts.store_seconds, node.counts.deblur_seconds)


def run_folder(engine, folder: Path, out: Path, count: int) -> dict:
    """What ``meddeblur deblur FOLDER -o OUT --workers 1`` does (plan, then deblur in this process), with the loaded engine."""
    started = time.perf_counter()
    plan = plan_run([folder], out, engine.provenance)
    report = execute(plan, InProcess(engine, Settings()), engine.provenance, progress=False)
    wall = time.perf_counter() - started
    assert len(report.written) == count
    seconds = sum(outcome.seconds or 0 for outcome in report.outcomes)
    return _row("folder: meddeblur deblur (1 worker)", count, wall, None, seconds)


def markdown(result: dict) -> str:
    lines = [f"# meddeblur pacs through Orthanc ({result['instances']} instances)", "",
             f"`{result['command']}` on {result['machine']}; load average {result['load_before']} before, {result['load_after']} after.",
             "", f"{result['instances']} generated dermoscopic instances (8-bit RGB, sides 192–{result['max_side']} px), model "
             f"{result['model_id']} on the CPU (loaded once before timing: {result['model_load_s']} s), Orthanc {result['orthanc']} "
             "on 127.0.0.1.", "",
             "| run | wall s | instances/s | share in the network | share in deblurring |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        network = "—" if row["network_share"] is None else f"{row['network_share']:.1%}"
        lines.append(f"| {row['run']} | {row['wall_s']} | {row['instances_per_s']} | {network} | {row['deblur_share']:.1%} |")
    lines += ["", "Network: the DICOMweb calls (listing, retrieving, looking for each derived instance, storing), or the "
              "C-STOREs in and out; deblurring: decoding, the network and encoding of each instance. The rest is the "
              "node's records, pydicom's parsing and waiting for Orthanc to index. With C-STORE, sending overlaps deblurring: "
              "the shares may add up to more than 100 %.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "pacs")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice, every core)")
    args = parser.parse_args(argv)
    require_orthanc()
    load_before = [round(x, 2) for x in os.getloadavg()]
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    spec = ModelSpec(args.model, device="cpu")
    started = time.perf_counter()
    engine = spec.load()
    load_s = time.perf_counter() - started
    engine.deblur_rgb(synthetic_dermoscopy(256, 256, seed=99))  # warm-up: the first forward pass is not any run's
    with orthanc_with_instances("meddeblur-pacs-bench-", args.instances, args.max_side) as (work, paths, orthanc, version):
        rows = [run_dicomweb_pass(orthanc, engine, paths, work), run_cstore_pass(orthanc, engine, paths, work)]
        orthanc.stop()  # the folder run has the machine to itself
        rows.append(run_folder(engine, work / "files", work / "out", len(paths)))
    result = {"command": command("pacs", argv),
              "machine": machine_line(), "instances": args.instances, "max_side": args.max_side, "model_id": engine.model_id,
              "model_load_s": round(load_s, 3), "orthanc": version, "rows": rows, "load_before": load_before,
              "load_after": [round(x, 2) for x in os.getloadavg()]}
    write_result("pacs", result, markdown(result), Path(args.out))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
