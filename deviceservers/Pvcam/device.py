"""Tango device server ``Pvcam``: a Photometrics PVCAM camera (Prime BSI), real or simulated.

The camera is not a serial instrument, so the device builds on the serial-free
:class:`~deviceservers.common.device.ParameterDevice`: the component's Parameters become the
attributes; this class only chooses the backend, plugs the shared-memory ring in as the frame
sink, and adds the commands.
"""

from __future__ import annotations

from tango.server import command, device_property

from deviceservers.common.device import ParameterDevice, tango_errors

from .backend import CameraBackend
from .component import PvcamComponent
from .ring_sink import RingFrameSink

BACKENDS = ("sim", "pyvcam")


class Pvcam(ParameterDevice):
    """Photometrics PVCAM camera: every frame into the ring ``<device>.frames``, a preview in LastImage."""

    Backend = device_property(dtype=str, default_value="sim", doc="sim (simulated Prime BSI) or pyvcam (real camera)")
    CameraName = device_property(dtype=str, default_value="pvcamUSB_0",
                                 doc="PVCAM camera name (pvcamUSB_0 on Linux USB); empty: the first camera found")
    RingSizeMB = device_property(dtype=float, default_value=512.0, doc="Size of the shared-memory frame ring in MiB")
    PreviewMaxFps = device_property(
        dtype=float, default_value=15.0,
        doc="Most LastImage change events per second (the preview; the ring gets every frame). 15 full frames "
            "(8 MiB each) per second are sustained on a 2-core host; PreviewBinning cuts the bytes 4x per step")
    TriggerTimeoutS = device_property(dtype=float, default_value=10.0,
                                      doc="External trigger modes: stop and raise ALARM after this long without a frame; 0 = wait forever")
    PollPeriodMs = device_property(dtype=int, default_value=1000, doc="Temperature polling period in ms")
    SimFreeRun = device_property(dtype=bool, default_value=False,
                                 doc="sim only: produce frames as fast as the host allows (benchmarks)")
    BenchScene = device_property(dtype=str, default_value="",
                                 doc="sim backend only: HOST:PORT of the virtual bench's control port, "
                                     "whose scene (beam spot from the stage and optics) the camera images")
    SimCoolingTimeS = device_property(dtype=float, default_value=20.0,
                                      doc="sim only: time constant of the sensor temperature towards its setpoint")

    component: PvcamComponent

    def build_component(self) -> PvcamComponent:
        backend_name = self.Backend.strip().lower()
        if backend_name not in BACKENDS:
            raise ValueError(f"Backend {self.Backend!r} is not one of {', '.join(BACKENDS)}")
        if not self.RingSizeMB > 0:
            raise ValueError(f"RingSizeMB must be > 0, not {self.RingSizeMB}")
        self._sink = RingFrameSink(self.get_name(), self.RingSizeMB, self._log)
        return PvcamComponent(
            self._backend_factory(backend_name),
            self._sink.for_shape,
            preview_max_fps=self.PreviewMaxFps,
            poll_period_s=self.PollPeriodMs / 1000.0,
            trigger_timeout_s=self.TriggerTimeoutS,
            logger=self._log,
        )

    def _backend_factory(self, backend_name: str):  # noqa: ANN202 - returns a factory
        name, free_run, cooling, bench = self.CameraName, self.SimFreeRun, self.SimCoolingTimeS, self.BenchScene.strip()

        def make() -> CameraBackend:
            if backend_name == "pyvcam":
                from .pyvcam_backend import PyVcamBackend  # PyVCAM only when selected

                return PyVcamBackend(name)
            from .sim import SimulatedPrimeBsi

            camera = SimulatedPrimeBsi(name or "pvcamUSB_0", free_run=free_run, cooling_time_constant_s=cooling)
            if bench:
                from deviceservers.bench.scene import BenchScene

                if getattr(self, "_scene", None) is not None:
                    self._scene.close()
                self._scene = BenchScene(bench, camera.get_exposure)
                camera.scene = self._scene
            return camera

        return make

    def delete_device(self) -> None:
        super().delete_device()
        scene = getattr(self, "_scene", None)
        if scene is not None:
            scene.close()
            self._scene = None
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.close()

    @command
    @tango_errors
    def Snap(self) -> None:
        """Acquire one frame (into the ring and LastImage) whatever NbFrames says; returns at once."""
        self.component.snap()

    @command
    @tango_errors
    def PrepareAcquisition(self) -> None:
        """Reserve the frame ring for the current ROI and binning now (Sardana's camera channel
        calls it when a scan is prepared), so that the next acquisition's first frame does not
        wait for it; fails, with what to change, when the ring does not fit. Optional: an
        acquisition prepares its ring itself when the shape changed since."""
        self.component.prepare_acquisition()

    @command
    @tango_errors
    def StartAcquisition(self) -> None:
        """Acquire NbFrames frames (0 = live until StopAcquisition); RUNNING while acquiring."""
        self.component.start_acquisition()
        if self.component.nb_frames.value == 0:
            self.remember("Live", True)  # a restart resumes live acquisition

    @command
    @tango_errors
    def StopAcquisition(self) -> None:
        """Stop the acquisition (the frames already acquired stay in the ring)."""
        self.component.stop_acquisition()
        self.remember("Live", False)
        self.component.set_not_resumed("Live", None)

    @command
    @tango_errors
    def SoftwareTrigger(self) -> None:
        """One software trigger (TriggerMode Software-first or Software-edge, while acquiring)."""
        self.component.software_trigger()


def main(args: list[str] | None = None) -> None:
    Pvcam.run_server(args=args)


if __name__ == "__main__":
    main()
