"""The super_resolution service (the guide's PyTorch flow): an image in, a 3x upscaled grayscale image out."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

import bundler
from bundler.io import Image

runner = bundler.onnx.get("onnx_super_resolution:latest").to_runner()

svc = bundler.Service("onnx_super_resolution", runners=[runner])


def preprocess(img: PILImage.Image) -> np.ndarray:
    """Return the model's input for ``img``: 224x224 grayscale in 0.0-1.0, shaped [1, 1, 224, 224]."""
    img = img.resize((224, 224))
    gray_img = ImageOps.grayscale(img)
    arr = np.array(gray_img) / 255.0  # convert from 0-255 range to 0.0-1.0 range
    return np.expand_dims(arr, (0, 1))  # add batch_size, color_channel dims


def postprocess(sr_arr: np.ndarray) -> PILImage.Image:
    """Return the model's output [1, 1, 672, 672] as an 8-bit grayscale image."""
    sr_arr = np.squeeze(sr_arr)  # remove batch_size, color_channel dims
    # The guide casts straight to uint8; clip first, since the last layer has no activation and values
    # outside 0.0-1.0 would wrap around (and differ between platforms) instead of saturating.
    return PILImage.fromarray(np.uint8(np.clip(sr_arr, 0.0, 1.0) * 255))  # 2-D uint8: mode "L"


# pilmode="RGB": a 16-bit grayscale upload (a scan, a microscope image) is scaled to 8 bits instead of
# clipped to white by the grayscale conversion below; other modes (palette, CMYK, RGBA) are converted so
# that the resize works on real colours. An RGB image, the guide's case, is passed as it came.
@svc.api(input=Image(pilmode="RGB"), output=Image())
def sr(img: PILImage.Image) -> PILImage.Image:
    """Upscale an image 3x: resized to 224x224 and made grayscale, it comes back 672x672."""
    # A sync API runs in the server's thread pool; runner.run.run still joins the adaptive batches.
    return postprocess(runner.run.run(preprocess(img)))
