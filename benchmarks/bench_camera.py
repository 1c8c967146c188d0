"""Camera end to end: Pvcam device (sim backend, free running) -> ring -> Recorder -> HDF5.

Measures frames per second recorded and frames lost at full frame (2048x2048) and at a 512x512
ROI, next to a raw producer (numpy frames written straight into a ring by their own process, as
in ``bench_frames.py``) feeding the same Recorder (the DataWriter's engine) and HDF5 sink, so
the printed ratio is the cost of the camera layer (frame generation, acquisition thread,
preview) over the data plane alone.

Then the live view people align with (``--view``, on by default): the GUI's camera view
(taurus_gui.camera_view, offscreen) on a camera acquiring full frames at ~36 fps while they are
recorded; printed: distinct frames drawn per second by the widget, against the target of 10
(the ratio), with the camera's and the recording's rates and losses. Nothing is asserted.

    python benchmarks/bench_camera.py            # 10 s per phase
    python benchmarks/bench_camera.py --quick    # 3 s per phase
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

# the script runs as `python benchmarks/bench_camera.py`: the repository root holds tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tango  # noqa: E402
from ring_folder import private_ring_folder  # noqa: E402

from datawriter.hdf5_sink import Hdf5Sink, StreamSpec  # noqa: E402
from datawriter.recorder import Recorder  # noqa: E402
from datawriter.ring import RingReader, create_frame_stream, remove_stream  # noqa: E402
from deviceservers.Pvcam.device import Pvcam  # noqa: E402
from tests.harness import served  # noqa: E402


def record(name: str, folder: str, run) -> dict:  # noqa: ANN001 - run() produces for a while
    reader = RingReader(name, start="latest")
    path = os.path.join(folder, f"bench_camera_{uuid.uuid4().hex[:6]}.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(name, reader.schema, reader.description)]), {name: reader})
    rec.start()
    t0 = time.monotonic()
    produced, camera_lost = run()
    elapsed = time.monotonic() - t0
    rec.stop()
    st = rec.stats()
    os.unlink(path)
    return {"produced": produced, "camera_lost": camera_lost, "written": st.records_written,
            "ring_lost": st.dropped_records, "fps": st.records_written / elapsed, "error": rec.error}


def camera_phase(folder: str, roi: list[int], seconds: float) -> dict:
    device = f"bench/camera/{uuid.uuid4().hex[:8]}"
    props = {"Backend": "sim", "SimFreeRun": True, "PreviewMaxFps": 2.0, "RingSizeMB": 1024.0}
    with served({Pvcam: {device: props}}, timeout_s=30) as server:
        cam = server.only
        cam.ExposureTime = 1e-6
        cam.Roi = roi
        cam.Snap()  # creates the ring for this shape
        while cam.State() == tango.DevState.RUNNING:
            time.sleep(0.05)
        name = device.replace("/", ".") + ".frames"

        def run() -> tuple[int, int]:
            cam.StartAcquisition()
            time.sleep(seconds)  # the benchmark's duration, not a condition
            cam.StopAcquisition()
            return cam.FramesAcquired, cam.FramesLost

        result = record(name, folder, run)
    remove_stream(name)
    return result


VIEW_TARGET_PER_S = 10.0


def view_phase(folder: str, seconds: float) -> dict:
    """The camera view drawing full frames while the camera acquires ~36 fps and they are recorded."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from taurus_gui.camera_view import CameraView
    from tests.system.qt_app import app_instance

    device = f"bench/view/{uuid.uuid4().hex[:8]}"
    props = {"Backend": "sim", "RingSizeMB": 256.0, "PollPeriodMs": 1000}  # PreviewMaxFps: the default
    with served({Pvcam: {device: props}}, timeout_s=30) as server:
        cam = server.only
        cam.ExposureTime = 0.005  # + 23 ms readout: ~36 full frames per second
        cam.NbFrames = 0
        cam.Snap()  # creates the ring
        while cam.State() == tango.DevState.RUNNING:
            time.sleep(0.05)
        app = app_instance()
        view = CameraView(device)
        view.resize(1000, 800)
        view.show()
        seen: dict[str, float] = {}

        def run() -> tuple[int, int]:
            cam.StartAcquisition()
            start = time.monotonic()
            while time.monotonic() - start < 1.0 or len(view.shown) < 2:  # the first previews arrive
                app.processEvents()
                time.sleep(0.005)
            n0, t0 = len(view.shown), time.monotonic()
            while time.monotonic() - t0 < seconds:  # the benchmark's duration, the event loop turning
                app.processEvents()
                time.sleep(0.005)
            seen["rate"] = (len(view.shown) - n0) / (time.monotonic() - t0)
            seen["camera_fps"] = cam.FrameRate
            cam.StopAcquisition()
            return cam.FramesAcquired, cam.FramesLost

        result = record(device.replace("/", ".") + ".frames", folder, run)
        view.close()
        app.processEvents()
    remove_stream(device.replace("/", ".") + ".frames")
    return result | seen


def raw_producer(device: str, shape: tuple[int, int], seconds: float, ready, go, total) -> None:  # noqa: ANN001
    w = create_frame_stream(device, height=shape[0], width=shape[1], ring_size_mb=1024)
    frames = [np.random.default_rng(i).integers(0, 4096, shape, dtype=np.uint16) for i in range(4)]
    ready.set()
    go.wait()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.time()
        w.write(frames[n % 4], n + 1, now, now, 1e-6)
        n += 1
    total.value = n
    w.close()


def raw_phase(folder: str, shape: tuple[int, int], seconds: float) -> dict:
    ctx = mp.get_context("fork")
    device = f"bench/raw/{uuid.uuid4().hex[:8]}"
    ready, go, total = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    p = ctx.Process(target=raw_producer, args=(device, shape, seconds, ready, go, total))
    p.start()
    ready.wait(30)
    name = device.replace("/", ".") + ".frames"

    def run() -> tuple[int, int]:
        go.set()
        p.join()
        return total.value, 0

    result = record(name, folder, run)
    remove_stream(name)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    ap.add_argument("--quick", action="store_true", help="3 s per phase")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder of the HDF5 files")
    ap.add_argument("--no-view", dest="view", action="store_false", help="leave out the live view phase")
    a = ap.parse_args()
    secs = 3.0 if a.quick else a.duration
    # its own ring folder (the camera server inherits it): nothing left in /dev/shm afterwards
    with private_ring_folder("bench-camera"):
        run_phases(a.dir, secs)
        if a.view:
            v = view_phase(a.dir, secs)
            print(f"{'live view':>15}: {v['rate']:.1f} distinct full frames drawn per second while the camera "
                  f"acquires {v['camera_fps']:.1f} fps and {v['fps']:.1f} fps are recorded (lost at camera "
                  f"{v['camera_lost']}, in ring {v['ring_lost']}); target {VIEW_TARGET_PER_S:.0f}/s: "
                  f"ratio {v['rate'] / VIEW_TARGET_PER_S:.2f} ({'met' if v['rate'] >= VIEW_TARGET_PER_S else 'NOT met'})")


def run_phases(folder: str, secs: float) -> None:
    print(f"camera (sim, free running) vs raw producer -> ring -> Recorder -> HDF5 in {folder}, {secs:.0f} s per phase")
    for label, roi in (("full 2048x2048", [0, 0, 2048, 2048]), ("ROI 512x512", [0, 0, 512, 512])):
        cam = camera_phase(folder, roi, secs)
        raw = raw_phase(folder, (roi[3], roi[2]), secs)
        for who, r in (("camera", cam), ("raw", raw)):
            print(f"{label:>15} {who:>6}: produced {r['produced']:6d}  written {r['written']:6d}  "
                  f"lost at camera {r['camera_lost']:4d}  lost in ring {r['ring_lost']:5d}  {r['fps']:7.1f} fps  "
                  f"error={r['error']}")
        print(f"{label:>15}  ratio camera/raw = {cam['fps'] / raw['fps']:.2f}")


if __name__ == "__main__":
    main()
