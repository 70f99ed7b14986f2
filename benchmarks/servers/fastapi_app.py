"""The endpoint most teams write first: FastAPI + pydantic + model.predict in a handler.

MODEL_PATH names the joblib file. Same V2-shaped request body as the other servers.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["MODEL_PATH"])
app = FastAPI()


class InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferRequest(BaseModel):
    inputs: list[InputTensor]


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest) -> dict[str, Any]:
    tensor = request.inputs[0]
    features = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
    predictions = model.predict(features)
    return {
        "model_name": name,
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [len(predictions)],
                     "data": predictions.tolist()}],
    }  # fmt: skip
