"""Vision model: uint8 NHWC RGB images in, engine outputs out (shapes fixed by config.pbtxt)."""

from magicmind_build.triton_model import EngineModel


class TritonPythonModel(EngineModel):
    pass
