"""Point-spread functions: the :class:`PSF` object (:mod:`.kernel`), its MTF (:mod:`.mtf`) and device calibration.

>>> from meddeblur.psf import load_psf
>>> load_psf("defocus:radius=2.5").kernel.shape
(7, 7)
"""

from meddeblur.psf.kernel import PSF, PSF_FORMAT, PsfLike, load_psf, psf_from_array, psf_from_spec
from meddeblur.psf.mtf import NYQUIST, directional_mtf, mtf50, radial_mtf

__all__ = ["PSF", "PSF_FORMAT", "PsfLike", "load_psf", "psf_from_array", "psf_from_spec", "NYQUIST", "directional_mtf", "mtf50",
           "radial_mtf"]
