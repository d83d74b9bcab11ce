"""The image preprocessing that the model was trained with and that the service applies to every request.

It is the guide's ``tensorflow.keras.applications.resnet50.preprocess_input`` ("caffe" mode) written with
numpy, so the service needs no TensorFlow: RGB -> BGR, then the ImageNet channel means subtracted.
"""

from __future__ import annotations

import numpy as np

SIZE = 224
# ImageNet's per-channel means, in BGR order, as Keras' ResNet50 preprocess_input subtracts them.
BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_input(arr: np.ndarray) -> np.ndarray:
    """Return RGB pixel values in 0-255 (last axis: channels) as mean-centred BGR float32."""
    return np.asarray(arr, dtype=np.float32)[..., ::-1] - BGR_MEAN
