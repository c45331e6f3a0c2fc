"""Vision model: uint8 NHWC RGB images in, engine outputs out (shapes fixed by config.pbtxt)."""

from engine_runtime.triton_model import EngineModel


class TritonPythonModel(EngineModel):
    pass
