"""``meddeblur pacs`` killed midway through 200 instances, then restarted: every instance derived exactly once, by both ways in.

A script, not a test (the tests do the same with 8 instances). ``--instances`` generated dermoscopic instances
(:func:`benchmarks.pacs.make_instances`) go through a fresh Orthanc (:class:`benchmarks.pacs.Orthanc`, authentication on), with the node run as
a user runs it — ``python -m meddeblur pacs ...`` in its own process — and killed with SIGKILL at a point drawn at
random (seeded) once Orthanc holds between a quarter and three quarters of the derived instances:

* DICOMweb: the node polling (``--poll-seconds 0.2``) is killed, then ``--once`` finishes; the originals stay in
  Orthanc, and their stored files' MD5 (Orthanc's own) is compared before and after;
* C-STORE: a modality sends every instance to the listening node, which forwards the derived ones to Orthanc; the node
  is killed, restarted, and the modality sends again whatever it was not told "success" for, as a modality retries;
  the files it sent are compared (SHA-256) before and after. Twice: killed while forwarding (the drawn number of
  derived instances in Orthanc) and killed while receiving (the drawn number of instances acknowledged).

Then each stored instance's header is read: every source must have exactly one derived instance (its Source Image
Sequence names it), and nothing else may be there.

    python -m benchmarks.pacs_crash                 # 200 instances: benchmarks/results/pacs_crash.{json,md}
    python -m benchmarks.pacs_crash --instances 20 --out /tmp/crash-check
"""

from __future__ import annotations

import argparse
import hashlib
import io
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import command, machine_line, write_result
from benchmarks.pacs import DERMOSCOPIC, PASSWORD, USER, Orthanc, _free_port, add_arguments, orthanc_with_instances, require_orthanc


def _node_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "meddeblur", "pacs", *map(str, args)]


def _wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _headers(orthanc: Orthanc) -> list:
    """Every stored instance's header (pixels left out)."""
    import pydicom

    ids = orthanc.session.get(f"{orthanc.root}/instances", timeout=60).json()
    return [pydicom.dcmread(io.BytesIO(orthanc.session.get(f"{orthanc.root}/instances/{i}/file", timeout=60).content),
                            stop_before_pixels=True) for i in ids]


def _md5s(orthanc: Orthanc) -> dict[str, str]:
    ids = orthanc.session.get(f"{orthanc.root}/instances", timeout=60).json()
    return {i: orthanc.session.get(f"{orthanc.root}/instances/{i}/attachments/dicom/md5", timeout=60).text for i in ids}


def _exactly_once(headers: list, sources: set[str]) -> dict:
    """How the stored derived instances map onto ``sources``: each exactly once, nothing else."""
    derived = [h for h in headers if "DERIVED" in list(h.get("ImageType", []))]
    per_source = Counter(h.SourceImageSequence[0].ReferencedSOPInstanceUID for h in derived)
    return {"derived": len(derived), "sources_derived_once": sum(1 for uid in sources if per_source[uid] == 1),
            "sources_missed": sum(1 for uid in sources if per_source[uid] == 0),
            "sources_derived_twice_or_more": sum(1 for uid in sources if per_source[uid] > 1),
            "derived_of_no_source": sum(n for uid, n in per_source.items() if uid not in sources),
            "derived_series": len({h.SeriesInstanceUID for h in derived})}


def crash_dicomweb(orthanc: Orthanc, paths: list[Path], work: Path, model: list[str], rng: np.random.Generator) -> dict:
    import pydicom

    orthanc.clear()
    for path in paths:
        orthanc.upload(path.read_bytes())
    sources = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in paths}
    before = _md5s(orthanc)
    secret = work / "password"
    secret.write_text(PASSWORD + "\n")
    command = _node_command("--dicomweb", f"{orthanc.root}/dicom-web", "--user", USER, "--password-file", secret, "--state",
                            work / "dicomweb.sqlite", "--device", "cpu", *model)
    n = len(paths)
    kill_at = int(rng.integers(n // 4, 3 * n // 4 + 1))
    started = time.perf_counter()
    node = subprocess.Popen([*command, "--poll-seconds", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_until(lambda: orthanc.count() >= n + kill_at, 60 + 3 * n, f"{kill_at} derived instances")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    at_kill = orthanc.count() - n
    restarted = subprocess.run([*command, "--once"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60 + 3 * n)
    wall = time.perf_counter() - started
    if restarted.returncode != 0:
        raise SystemExit(f"the restarted node failed ({restarted.returncode}): {restarted.stderr.strip()}")
    after = _md5s(orthanc)
    return {"way": "DICOMweb", "instances": n, "killed_after_derived": at_kill, "restart_said": restarted.stdout.strip().splitlines()[-1],
            "originals_changed": sum(1 for i, md5 in before.items() if after.get(i) != md5), "stored": len(after),
            "wall_s": round(wall, 1), **_exactly_once(_headers(orthanc), sources)}


def crash_cstore(orthanc: Orthanc, paths: list[Path], work: Path, model: list[str], rng: np.random.Generator,
                 while_receiving: bool = False) -> dict:
    """``while_receiving``: killed once the modality was told "success" for the drawn number of instances (it then
    sends the rest again), instead of once Orthanc holds that many derived ones."""
    import pydicom
    from pynetdicom import AE as Entity

    orthanc.clear()
    port, n = _free_port(), len(paths)
    before = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}
    datasets = [pydicom.dcmread(path) for path in paths]
    sources = {ds.SOPInstanceUID for ds in datasets}
    command = _node_command("--listen", f"MEDDEBLUR@{port}", "--forward", f"ORTHANC@127.0.0.1:{orthanc.dicom}", "--state",
                            work / f"cstore-{int(while_receiving)}.sqlite", "--device", "cpu", *model)
    acknowledged: set[str] = set()

    def send(to_send: list) -> None:
        """As a modality: one association, each instance until one fails; "success" recorded per instance."""
        sender = Entity(ae_title="MODALITY")
        sender.add_requested_context(DERMOSCOPIC)
        deadline = time.monotonic() + 120
        while True:
            association = sender.associate("127.0.0.1", port, ae_title="MEDDEBLUR")
            if association.is_established:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the node did not start listening")
            time.sleep(0.1)
        for ds in to_send:
            if not association.is_established:
                return  # the node went away: the rest is sent again later
            status = association.send_c_store(ds)
            if status and status.Status == 0:
                acknowledged.add(ds.SOPInstanceUID)
        if association.is_established:
            association.release()

    kill_at = int(rng.integers(n // 4, 3 * n // 4 + 1))
    started = time.perf_counter()
    node = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    modality = threading.Thread(target=send, args=(datasets,))
    modality.start()
    try:
        if while_receiving:
            _wait_until(lambda: len(acknowledged) >= kill_at, 60 + 3 * n, f"{kill_at} instances received")
        else:
            _wait_until(lambda: orthanc.count() >= kill_at, 60 + 3 * n, f"{kill_at} derived instances")
    finally:
        node.send_signal(signal.SIGKILL)
        node.wait()
    modality.join()
    at_kill, sent_before_kill = orthanc.count(), len(acknowledged)
    node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        send([ds for ds in datasets if ds.SOPInstanceUID not in acknowledged])
        _wait_until(lambda: orthanc.count() >= n, 60 + 3 * n, f"{n} derived instances")
        time.sleep(2.0)  # anything forwarded twice would arrive now
    finally:
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=60)
    wall = time.perf_counter() - started
    return {"way": "C-STORE, killed while receiving" if while_receiving else "C-STORE", "instances": n, "killed_after_derived": at_kill, "acknowledged_before_kill": sent_before_kill,
            "resent": n - sent_before_kill, "restart_said": (out.strip().splitlines() or [""])[-1],
            "originals_changed": sum(1 for path, digest in before.items() if hashlib.sha256(path.read_bytes()).hexdigest() != digest),
            "stored": orthanc.count(), "wall_s": round(wall, 1), **_exactly_once(_headers(orthanc), sources)}


def markdown(result: dict) -> str:
    lines = [f"# meddeblur pacs killed midway ({result['instances']} instances, both ways in)", "",
             f"`{result['command']}` on {result['machine']}, Orthanc {result['orthanc']} on 127.0.0.1, model "
             f"{result['model'] or 'the shipped one'}.", "",
             "| way in | killed (SIGKILL) after | derived exactly once | missed | twice or more | of no source | derived series | "
             "originals changed | wall s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["rows"]:
        lines.append(f"| {row['way']} | {row['killed_after_derived']} derived | {row['sources_derived_once']} of {row['instances']} | "
                     f"{row['sources_missed']} | {row['sources_derived_twice_or_more']} | {row['derived_of_no_source']} | "
                     f"{row['derived_series']} | {row['originals_changed']} | {row['wall_s']} |")
    for row in result["rows"]:
        if row["way"].startswith("C-STORE"):
            lines += ["", f"{row['way']}: the modality had been told \"success\" for {row['acknowledged_before_kill']} instances "
                      f"when the node was killed and sent the other {row['resent']} again to the restarted node; what the node "
                      "had acknowledged but not yet forwarded waited in its spool."]
    lines += ["", "Restart lines: " + "; ".join(f"{row['way']}: \"{row['restart_said']}\"" for row in result["rows"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "pacs_crash")
    parser.add_argument("--seed", type=int, default=0, help="draws the moments of the kills (default 0)")
    args = parser.parse_args(argv)
    require_orthanc()
    model = ["--model", args.model] if args.model else []
    rng = np.random.default_rng(args.seed)
    with orthanc_with_instances("meddeblur-pacs-crash-", args.instances, args.max_side) as (work, paths, orthanc, version):
        rows = [crash_dicomweb(orthanc, paths, work, model, rng), crash_cstore(orthanc, paths, work, model, rng),
                crash_cstore(orthanc, paths, work, model, rng, while_receiving=True)]
    result = {"command": command("pacs_crash", argv),
              "machine": machine_line(), "instances": args.instances, "model": args.model, "orthanc": version, "rows": rows}
    write_result("pacs_crash", result, markdown(result), Path(args.out))
    print(markdown(result))
    failed = [row["way"] for row in rows if row["sources_derived_once"] != row["instances"] or row["derived_of_no_source"]
              or row["originals_changed"] or row["derived_series"] != 1]
    if failed:
        print(f"NOT exactly once: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
