"""Point-spread functions: the :class:`PSF` object (:mod:`.kernel`), its MTF (:mod:`.mtf`) and device calibration.

>>> from meddeblur.psf import load_psf
>>> load_psf("defocus:radius=2.5").kernel.shape    # the disk covers 5×5 pixels
(5, 5)
"""

from meddeblur.psf.calibration import calibrate
from meddeblur.psf.edge import EdgeError, EdgeSFR, measure_edges
from meddeblur.psf.kernel import PSF, PSF_FORMAT, PsfLike, load_psf, psf_from_array, psf_from_spec
from meddeblur.psf.mtf import NYQUIST, directional_mtf, mtf50, radial_mtf
from meddeblur.psf.target import edge_chart, write_target

__all__ = [
    "PSF",
    "PSF_FORMAT",
    "PsfLike",
    "load_psf",
    "psf_from_array",
    "psf_from_spec",
    "NYQUIST",
    "directional_mtf",
    "mtf50",
    "radial_mtf",
    "calibrate",
    "EdgeError",
    "EdgeSFR",
    "measure_edges",
    "edge_chart",
    "write_target",
]
