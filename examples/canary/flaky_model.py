"""A candidate iris model that fails on every wide-petalled flower (about a third of them).

Register it as a new version of `iris` and roll it out: the error-rate gate rolls it back.
"""

import numpy as np


class Model:
    def load(self) -> None:
        pass

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        petal_length = np.asarray(inputs["petal_length"], dtype=float).reshape(-1)
        if (np.asarray(inputs["petal_width"], dtype=float) > 1.6).any():
            raise ValueError("this candidate cannot handle wide petals")
        return np.where(petal_length < 2.5, 0, np.where(petal_length < 4.9, 1, 2))
