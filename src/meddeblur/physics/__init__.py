"""The physics of blur, the ground floor every restorer stands on (it imports nothing else of meddeblur).

* :mod:`~meddeblur.physics.boundary` — pad-taper: the one boundary rule for FFT deconvolution (numpy and torch twins);
* :mod:`~meddeblur.physics.operator` — the OTF, circular convolution and its adjoint, the exact data step;
* :mod:`~meddeblur.physics.convolution` — the forward blur in the image domain (:func:`blur`, mirror borders);
* :mod:`~meddeblur.physics.canvas` — a kernel as an image-sized plane, the form a kernel-conditioned network takes;
* :mod:`~meddeblur.physics.noise` — the noise level of an image.
"""

from meddeblur.physics.boundary import fft_shape, margin_for, pad_taper, pad_taper_np
from meddeblur.physics.canvas import canvas_otf, canvas_radius, kernel_canvas
from meddeblur.physics.convolution import blur
from meddeblur.physics.noise import noise_level, noise_level_np
from meddeblur.physics.operator import DataStep, check_kernel, convolve, convolve_np, correlate, correlate_np, otf, otf_np

__all__ = [
    "fft_shape",
    "margin_for",
    "pad_taper",
    "pad_taper_np",
    "noise_level",
    "noise_level_np",
    "DataStep",
    "check_kernel",
    "convolve",
    "convolve_np",
    "correlate",
    "correlate_np",
    "otf",
    "otf_np",
    "blur",
    "kernel_canvas",
    "canvas_radius",
    "canvas_otf",
]
